"""Publishing latency under a wrong-password flood, as a ratio to the same latency without it.

Run: ``.venv/bin/python bench/auth_flood.py [--clients 300] [--duration 20] [--changes 20]``

In one run, on 127.0.0.x and a free port: ``sdbridge run`` with basic auth on (one
user, bcrypt cost 10 as ``htpasswd -B`` makes), a registry write token, and one job
publishing the built-in registry to a file and ``/sd/registry``.

1. ``quiet``: ``--changes`` registrations, one every 0.5 s; for each, the time from the
   PUT's answer until the new address is in ``/sd/registry`` (polled every 5 ms by a
   client with the right password, from 127.0.0.1) and in the file (polled every 5 ms).
2. ``flood``: the same, while ``--clients`` concurrent clients, bound to 127.0.0.2 and
   up (so per-address limits apply to them, not to the measuring client), send requests
   with a wrong password for ``--duration`` s from a separate process.

It prints p50, p90 and max of both latencies in both phases, the ratio flood / quiet
(goal: at most 2x), and what the flood got back (401 checked, 429 refused unchecked).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import orjson
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.servers.sdbridge import Sdbridge  # noqa: E402

TOKEN = "bench-write-token"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _client_address(n: int) -> str:
    """127.0.0.2 and up (the last byte runs 2-254)."""
    return f"127.0.{n // 253}.{2 + n % 253}"


async def _flood(url: str, clients: int, duration: float) -> dict[int, int]:
    statuses: collections.Counter[int] = collections.Counter()
    headers = {"Authorization": _basic("alice", "wrong")}
    deadline = time.monotonic() + duration

    async def one(n: int) -> None:
        connector = aiohttp.TCPConnector(local_addr=(_client_address(n), 0), limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            while time.monotonic() < deadline:
                try:
                    async with session.get(f"{url}/sd/registry", headers=headers) as r:
                        await r.read()
                        statuses[r.status] += 1
                except aiohttp.ClientError:
                    statuses[0] += 1

    await asyncio.gather(*(one(n) for n in range(clients)))
    return dict(statuses)


def _flood_process(url: str, clients: int, duration: float, out: Any) -> None:
    out.put(asyncio.run(_flood(url, clients, duration)))


async def _measure(
    url: str,
    file: Path,
    changes: int,
    first: int,
    session: aiohttp.ClientSession,
    until: float = float("inf"),
) -> tuple[list[float], list[float]]:
    good = {"Authorization": _basic("alice", "right")}
    write = {"Authorization": f"Bearer {TOKEN}"}
    to_sd: list[float] = []
    to_file: list[float] = []
    for n in range(first, first + changes):
        if time.monotonic() >= until:
            break  # the flood is over: what follows would not be under it
        address = f"127.0.{100 + n // 250}.{1 + n % 250}:9100"
        body = orjson.dumps({"address": address})

        async with session.put(
            f"{url}/api/v1/registry/bench/i{n}", data=body, headers=write
        ) as response:
            assert response.status == 201, await response.text()
        answered = time.monotonic()
        sd_at, file_at = await asyncio.gather(
            _seen_in_sd(session, url, address, good), _seen_in_file(file, address)
        )
        to_sd.append(sd_at - answered)
        to_file.append(file_at - answered)
        await asyncio.sleep(0.5)
    return to_sd, to_file


async def _seen_in_sd(
    session: aiohttp.ClientSession, url: str, address: str, headers: dict[str, str]
) -> float:
    while True:
        async with session.get(f"{url}/sd/registry", headers=headers) as r:
            if r.status == 200 and address.encode() in await r.read():
                return time.monotonic()
        await asyncio.sleep(0.005)


async def _seen_in_file(file: Path, address: str) -> float:
    while True:
        try:
            # A small local file; reading it on the loop keeps the poll at 5 ms.
            if address.encode() in file.read_bytes():  # noqa: ASYNC240
                return time.monotonic()
        except FileNotFoundError:
            pass
        await asyncio.sleep(0.005)


def _quantiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return statistics.median(ordered), p90, ordered[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sdbridge-auth-flood-") as tmp:
        workdir = Path(tmp)
        (workdir / "token").write_text(TOKEN)
        hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=10)).decode()
        web_config = workdir / "web.yml"
        web_config.write_text(yaml.safe_dump({"basic_auth_users": {"alice": hashed}}))
        file = workdir / "registry.json"
        config = {
            "global": {"data_dir": str(workdir / "data")},
            "registry": {"write_token_file": "token"},
            "jobs": [
                {
                    "name": "registry",
                    "registry_sd_configs": [{}],
                    "output": {"file": str(file)},
                    "guard": {"enabled": False},
                }
            ],
        }
        bridge = Sdbridge(workdir, config, web_config=web_config, auth=("alice", "right"))
        try:
            results = asyncio.run(_run(bridge.url, file, args))
        finally:
            bridge.stop()
    _report(args, *results)


async def _run(
    url: str, file: Path, args: argparse.Namespace
) -> tuple[list[float], list[float], list[float], list[float], dict[int, int]]:
    async with aiohttp.ClientSession() as session:
        quiet_sd, quiet_file = await _measure(url, file, args.changes, 0, session)
        queue: Any = multiprocessing.get_context("spawn").Queue()
        flood = multiprocessing.get_context("spawn").Process(
            target=_flood_process, args=(url, args.clients, args.duration, queue)
        )
        flood.start()
        await asyncio.sleep(2.0)  # let the flood reach full strength
        until = time.monotonic() + args.duration - 3.0
        flood_sd, flood_file = await _measure(url, file, args.changes, args.changes, session, until)
        statuses = await asyncio.to_thread(queue.get)
        await asyncio.to_thread(flood.join)
    return quiet_sd, quiet_file, flood_sd, flood_file, statuses


def _report(
    args: argparse.Namespace,
    quiet_sd: list[float],
    quiet_file: list[float],
    flood_sd: list[float],
    flood_file: list[float],
    statuses: dict[int, int],
) -> None:
    print(
        f"auth flood: {args.clients} wrong-password clients for {args.duration:g} s, "
        f"{args.changes} registry changes per phase"
    )
    print(f"{'path':<12}{'phase':<8}{'p50':>9}{'p90':>9}{'max':>9}")
    for name, quiet, flooded in (
        ("-> /sd", quiet_sd, flood_sd),
        ("-> file", quiet_file, flood_file),
    ):
        q = _quantiles(quiet)
        f = _quantiles(flooded)
        print(f"{name:<12}{'quiet':<8}" + "".join(f"{v * 1000:>7.0f}ms" for v in q))
        print(f"{name:<12}{'flood':<8}" + "".join(f"{v * 1000:>7.0f}ms" for v in f))
        print(
            f"{name:<12}{'ratio':<8}"
            + "".join(f"{b / a:>8.2f}x" for a, b in zip(q, f, strict=True))
        )
    total = sum(statuses.values())
    spread = ", ".join(f"{code or 'error'}: {count}" for code, count in sorted(statuses.items()))
    print(f"flood requests: {total} ({total / args.duration:.0f}/s); {spread}")


if __name__ == "__main__":
    main()
