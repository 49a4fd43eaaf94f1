"""The registry on etcd with three replicas, against the SQLite backend in the same run.

Run: ``.venv/bin/python bench/registry_etcd.py [--instances 2000] [--rate 50]
[--duration 20] [--probes 20] [--heartbeats 300] [--idle 5]``

In one run, on 127.0.0.1 and free ports: a three-member etcd cluster (Debian's etcd),
three ``sdbridge run`` replicas on ``registry.backend: etcd`` and one ``sdbridge run`` on
SQLite (the baseline). Phases:

1. ``preload``: ``--instances`` PUTs, 32 at a time, spread over the replicas (and the same
   PUTs against the SQLite process): write latency p50/p99, etcd / SQLite ratio.
2. ``steady``: ``--rate`` writes/s for ``--duration`` s spread over the replicas (each a
   PUT that changes a target's label), and the same against SQLite: latency p50/p99.
   During it, ``--probes`` probe writes, one at a time, each timed from its
   acknowledgement until all three replicas serve the probe's value in ``/sd/registry``:
   the convergence lag, p50/p99 (under continuous churn the three bodies are rarely equal
   at one instant, so identical ETags are checked once the load stops).
3. ``heartbeats``: ``--heartbeats`` heartbeats spread over the replicas; etcd requests per
   heartbeat from ``sdbridge_registry_etcd_requests_total`` on every replica.
4. ``idle``: ``--idle`` s without client requests; etcd requests per second.

The issue's full size is 100,000 instances and 200 writes/s; the defaults are scaled down
to run in about two minutes on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.servers.common import wait_until  # noqa: E402
from tests.servers.etcd import EtcdCluster  # noqa: E402
from tests.servers.sdbridge import Sdbridge  # noqa: E402

JOB = "registry"
_COUNTER = re.compile(rb"^sdbridge_registry_etcd_requests_total (\S+)$", re.M)


def config(workdir: Path, etcd: list[str] | None) -> dict[str, Any]:
    registry: dict[str, Any] = {"max_ttl": "1d"}
    if etcd is not None:
        registry.update(backend="etcd", etcd={"endpoints": etcd, "prefix": "/bench/registry/"})
    return {
        "global": {"data_dir": str(workdir / "data")},
        "registry": registry,
        "jobs": [
            {
                "name": JOB,
                "registry_sd_configs": [{}],
                "guard": {"enabled": False},
                "output": {"file": str(workdir / "out" / f"{JOB}.json")},
            }
        ],
    }


def quantiles(values: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    if len(values) < 2:
        return (values[0] * 1000, values[0] * 1000) if values else (0.0, 0.0)
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000


async def put(
    session: aiohttp.ClientSession, base: str, key: str, address: str, value: str
) -> float:
    body = {"address": address, "labels": {"v": value}, "ttl": "1h"}
    started = time.perf_counter()
    async with session.put(f"{base}/api/v1/registry/bench/{key}", json=body) as response:
        await response.read()
        if response.status not in (200, 201):
            raise RuntimeError(f"PUT {base} {key}: {response.status}")
    return time.perf_counter() - started


async def preload(session: aiohttp.ClientSession, bases: list[str], instances: int) -> list[float]:
    latencies: list[float] = []
    gate = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with gate:
            address = f"127.0.{i // 250}.{i % 250 + 1}:9100"
            latencies.append(await put(session, bases[i % len(bases)], f"i{i}", address, "0"))

    await asyncio.gather(*(one(i) for i in range(instances)))
    return latencies


async def steady(
    session: aiohttp.ClientSession, bases: list[str], instances: int, rate: float, duration: float
) -> list[float]:
    latencies: list[float] = []
    tasks = []
    rng = random.Random(1)
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < duration:
        i = rng.randrange(instances)
        address = f"127.0.{i // 250}.{i % 250 + 1}:9100"
        base = bases[n % len(bases)]

        async def one(base: str = base, i: int = i, address: str = address) -> None:
            latencies.append(await put(session, base, f"i{i}", address, str(rng.random())))

        tasks.append(asyncio.create_task(one()))
        n += 1
        await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
    await asyncio.gather(*tasks)
    return latencies


async def sd_state(session: aiohttp.ClientSession, base: str) -> tuple[str, bytes]:
    async with session.get(f"{base}/sd/{JOB}") as response:
        return response.headers.get("ETag", ""), await response.read()


async def probes(session: aiohttp.ClientSession, bases: list[str], count: int) -> list[float]:
    lags = []
    for n in range(count):
        marker = f"probe-{n}-{random.random()}"
        await put(session, bases[n % len(bases)], "probe", "127.0.200.1:9100", marker)
        acked = time.perf_counter()
        waiting = list(bases)
        while waiting:  # each replica's /sd/registry carries the write
            states = await asyncio.gather(*(sd_state(session, b) for b in waiting))
            pairs = zip(waiting, states, strict=True)
            waiting = [b for b, (_, body) in pairs if marker.encode() not in body]
            await asyncio.sleep(0.005)
        lags.append(time.perf_counter() - acked)
        await asyncio.sleep(0.2)
    return lags


async def etcd_requests(session: aiohttp.ClientSession, bases: list[str]) -> float:
    total = 0.0
    for base in bases:
        async with session.get(f"{base}/metrics") as response:
            match = _COUNTER.search(await response.read())
            total += float(match.group(1)) if match else 0.0
    return total


async def heartbeats(session: aiohttp.ClientSession, bases: list[str], count: int) -> float:
    before = await etcd_requests(session, bases)
    for n in range(count):
        url = f"{bases[n % len(bases)]}/api/v1/registry/bench/i{n}/heartbeat"
        async with session.post(url) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"heartbeat: {response.status}")
    return (await etcd_requests(session, bases) - before) / count


async def run(args: argparse.Namespace, replicas: list[str], sqlite: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with aiohttp.ClientSession() as session:
        results["preload etcd"] = quantiles(await preload(session, replicas, args.instances))
        results["preload sqlite"] = quantiles(await preload(session, [sqlite], args.instances))
        steady_etcd = asyncio.create_task(
            steady(session, replicas, args.instances, args.rate, args.duration)
        )
        lags = await probes(session, replicas, args.probes)
        results["steady etcd"] = quantiles(await steady_etcd)
        results["convergence"] = quantiles(lags)
        results["steady sqlite"] = quantiles(
            await steady(session, [sqlite], args.instances, args.rate, args.duration)
        )
        await asyncio.sleep(3.0)  # > publish_delay.max: every replica has published
        etags = {
            etag for etag, _ in await asyncio.gather(*(sd_state(session, b) for b in replicas))
        }
        results["same etag"] = len(etags) == 1
        results["per heartbeat"] = await heartbeats(session, replicas, args.heartbeats)
        before = await etcd_requests(session, replicas)
        await asyncio.sleep(args.idle)
        after = await etcd_requests(session, replicas)
        # The two /metrics reads themselves cause no etcd request.
        results["idle per s"] = (after - before) / args.idle
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--heartbeats", type=int, default=300)
    parser.add_argument("--idle", type=float, default=5.0)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sdbridge-bench-registry-etcd-"))
    cluster = EtcdCluster(workdir / "etcd", 3)
    processes: list[Sdbridge] = []
    try:
        for name in ("a", "b", "c"):
            (workdir / name).mkdir()
            processes.append(
                Sdbridge(
                    workdir / name, config(workdir / name, cluster.endpoints), wait_ready=False
                )
            )
        (workdir / "sqlite").mkdir()
        processes.append(
            Sdbridge(workdir / "sqlite", config(workdir / "sqlite", None), wait_ready=False)
        )
        for process in processes:
            wait_until(process.is_ready, timeout=120, what="sdbridge ready")
        started = time.monotonic()
        results = asyncio.run(run(args, [p.url for p in processes[:3]], processes[3].url))
        elapsed = time.monotonic() - started
    finally:
        for process in processes:
            process.stop()
        cluster.stop()
    etcd_pre, sqlite_pre = results["preload etcd"], results["preload sqlite"]
    etcd_st, sqlite_st = results["steady etcd"], results["steady sqlite"]
    print(
        f"instances {args.instances}, {args.rate:g} writes/s for {args.duration:g} s, {elapsed:.0f} s"
    )
    print("| phase | etcd p50 | etcd p99 | SQLite p50 | SQLite p99 | ratio p50 | ratio p99 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, e, s in (
        ("preload (32 at a time)", etcd_pre, sqlite_pre),
        ("steady", etcd_st, sqlite_st),
    ):
        print(
            f"| {name} | {e[0]:.1f} ms | {e[1]:.1f} ms | {s[0]:.1f} ms | {s[1]:.1f} ms "
            f"| {e[0] / s[0]:.2f} | {e[1] / s[1]:.2f} |"
        )
    lag = results["convergence"]
    print(
        f"convergence lag (ack -> on all 3 replicas' /sd): p50 {lag[0]:.1f} ms, p99 {lag[1]:.1f} ms"
    )
    print(f"same ETag on all 3 replicas once the load stopped: {results['same etag']}")
    print(f"etcd requests per heartbeat: {results['per heartbeat']:.2f}")
    print(f"etcd requests per second at idle (3 replicas): {results['idle per s']:.2f}")


if __name__ == "__main__":
    main()
