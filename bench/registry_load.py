"""The built-in registry under a fleet's load: sdbridge vs an aiohttp no-op floor.

Run: ``.venv/bin/python bench/registry_load.py [--instances 1000] [--heartbeat 10]
[--churn 20] [--duration 60] [--wrk-duration 5] [--rounds 3] [--connections 32]``

In one run, on 127.0.0.1 and free ports:

- ``sdbridge run`` with no config (the zero-config default: registry job, file output,
  SQLite in a temporary ``data_dir``);
- the floor: one aiohttp process whose handlers read the body and answer a fixed JSON
  document, on any path and method (what any aiohttp API pays before doing any work).

Phases, each run against both servers with the same client:

1. ``register``: ``--instances`` PUTs, 32 at a time.
2. ``steady``: for ``--duration`` s, every instance heartbeats every ``--heartbeat`` s
   (random phase), plus ``--churn`` registration changes per second (a new instance
   registered, an old one deregistered, in turn). Reports the requests/s sustained, p50
   and p99 latency, and sdbridge's publishes (``sdbridge_publish_total``) per second
   against the target changes per second.
3. ``wrk heartbeat`` and ``wrk churn``: ``wrk`` (Debian) at saturation, ``--rounds``
   rounds of ``--wrk-duration`` s per server, alternating between the two servers (so
   that load from anything else on the machine falls on both alike): heartbeats cycling
   over the instances, then PUTs that change a target on every request (random instance
   out of 5,000, random port). Reports the median requests/s and p99 and, for sdbridge,
   the publishes during the churn.

The publish rate must follow the job's quiescence delay (``publish_delay``, default min
250 ms, max 2 s: at most 4 publishes/s, and about 0.5/s under continuous churn), not the
churn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.servers.common import ManagedProcess, free_port, http_ok, wait_until  # noqa: E402

API = "/api/v1/registry"
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}

FLOOR_APP = textwrap.dedent(
    """
    import sys
    from aiohttp import web

    BODY = b'{"status":"success","data":{}}'

    async def handle(request):
        await request.read()
        return web.Response(body=BODY, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
    """
)

WRK_HEARTBEAT = """
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", "{api}/load/i" .. (counter % {instances}) .. "/heartbeat")
end
"""

WRK_CHURN = """
local thread_id = 0
setup = function(thread)
  thread_id = thread_id + 1
  thread:set("seed", thread_id)
end
init = function(args)
  math.randomseed(os.time() * 100 + seed)
end
request = function()
  local i = math.random(0, 4999)
  local body = '{"address":"127.0.0.' .. (i % 250 + 1) .. ':' .. math.random(10000, 60000) .. '","ttl":"30s"}'
  return wrk.format("PUT", "{api}/churn/i" .. i, {["Content-Type"] = "application/json"}, body)
end
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    assert match, text
    return float(match.group(1)) * _UNITS[match.group(2)]


def publishes(url: str) -> dict[str, float]:
    """sdbridge_publish_total of the registry job, by output."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        match = re.match(
            r'sdbridge_publish_total\{job="registry",output="(\w+)"\} ([\d.e+]+)', line
        )
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


class Client:
    """Times every request; counts failures."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session
        self.latencies: list[float] = []
        self.errors = 0

    async def call(self, method: str, path: str, body: dict[str, object] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else None
        started = time.perf_counter()
        try:
            async with self.session.request(
                method, f"{self.url}{API}{path}", data=data
            ) as response:
                await response.read()
                if response.status >= 300:
                    self.errors += 1
        except aiohttp.ClientError:
            self.errors += 1
        self.latencies.append(time.perf_counter() - started)


async def reregister(url: str, instances: int) -> None:
    async with aiohttp.ClientSession() as session:
        await register_all(Client(url, session), instances)


async def register_all(client: Client, instances: int) -> float:
    started = time.perf_counter()
    queue = list(range(instances))

    async def worker() -> None:
        while queue:
            n = queue.pop()
            body = {
                "address": f"127.0.{n // 250 + 1}.{n % 250 + 1}:9100",
                "labels": {"n": str(n)},
                "ttl": "30s",
            }
            await client.call("PUT", f"/load/i{n}", body)

    await asyncio.gather(*(worker() for _ in range(32)))
    return instances / (time.perf_counter() - started)


async def steady(
    client: Client, instances: int, heartbeat: float, churn: float, duration: float
) -> int:
    """Heartbeats plus churn for ``duration`` seconds; returns the number of churn changes."""
    deadline = time.monotonic() + duration
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def heartbeats(n: int) -> None:
        await asyncio.sleep(random.uniform(0, min(heartbeat, duration)))
        while time.monotonic() < deadline:
            spawn(client.call("POST", f"/load/i{n}/heartbeat"))
            await asyncio.sleep(min(heartbeat, max(0.0, deadline - time.monotonic())))

    changes = 0

    async def churner() -> None:
        nonlocal changes
        live: list[int] = []
        k = 0
        while time.monotonic() < deadline:
            if len(live) < 50 or k % 2 == 0:
                k += 1
                live.append(k)
                spawn(
                    client.call(
                        "PUT",
                        f"/churn/c{k}",
                        {"address": f"127.0.0.{k % 250 + 1}:{20000 + k % 40000}", "ttl": "30s"},
                    )
                )
            else:
                k += 1
                spawn(client.call("DELETE", f"/churn/c{live.pop(0)}"))
            changes += 1
            await asyncio.sleep(1 / churn)

    await asyncio.gather(*(heartbeats(n) for n in range(instances)), churner())
    if tasks:
        await asyncio.gather(*tasks)
    return changes


def run_wrk(
    url: str, script: str, duration: float, connections: int, workdir: Path, name: str
) -> tuple[float, float, int]:
    path = workdir / f"{name}.lua"
    path.write_text(script)
    result = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration:g}s", "--latency", "-s", str(path), url],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 60,
    )
    out = result.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = seconds(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rps, p99, int(non2xx.group(1)) if non2xx else 0


async def client_phases(url: str, args: argparse.Namespace, is_sdbridge: bool) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = Client(url, session)
        reg_rate = await register_all(client, args.instances)
        await asyncio.sleep(3)  # let the registration burst's publishes finish
        before = publishes(url) if is_sdbridge else {}
        client.latencies.clear()
        started = time.monotonic()
        changes = await steady(client, args.instances, args.heartbeat, args.churn, args.duration)
        elapsed = time.monotonic() - started
        after = publishes(url) if is_sdbridge else {}
        return {
            "register_rps": reg_rate,
            "rps": len(client.latencies) / elapsed,
            "p50": percentile(client.latencies, 0.50),
            "p99": percentile(client.latencies, 0.99),
            "errors": client.errors,
            "changes_per_s": changes / elapsed,
            "publish_http_per_s": (after.get("http", 0) - before.get("http", 0)) / elapsed,
            "publish_file_per_s": (after.get("file", 0) - before.get("file", 0)) / elapsed,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--heartbeat", type=float, default=10.0)
    parser.add_argument("--churn", type=float, default=20.0, help="registration changes per second")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--wrk-duration", type=float, default=5.0, help="seconds per wrk round")
    parser.add_argument("--rounds", type=int, default=3, help="wrk rounds per server, alternating")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sdbridge-bench-registry-") as tmp:
        workdir = Path(tmp)
        bridge_port, floor_port = free_port(), free_port()
        bridge_url, floor_url = f"http://127.0.0.1:{bridge_port}", f"http://127.0.0.1:{floor_port}"
        (workdir / "floor.py").write_text(FLOOR_APP)
        bridge = ManagedProcess(
            [
                sys.executable,
                "-c",
                "import sys; from sdbridge.cli import main; sys.exit(main())",
                "run",
                f"--web.listen-address=127.0.0.1:{bridge_port}",
                "--log.level=warn",
            ],
            log_path=workdir / "sdbridge.log",
            cwd=workdir,
        )
        floor = ManagedProcess(
            [sys.executable, str(workdir / "floor.py"), str(floor_port)],
            log_path=workdir / "floor.log",
        )
        try:
            wait_until(lambda: http_ok(f"{bridge_url}/-/ready"), timeout=60, what="sdbridge ready")
            wait_until(lambda: http_ok(f"{floor_url}/x"), timeout=60, what="floor ready")
            results = {}
            wrk = {}
            for name, url in (("sdbridge", bridge_url), ("floor", floor_url)):
                print(
                    f"[{name}] register {args.instances} + steady {args.duration:g}s ...",
                    flush=True,
                )
                results[name] = asyncio.run(client_phases(url, args, name == "sdbridge"))
            # The instances' ttls ran out during the floor's turn: register them again.
            asyncio.run(reregister(bridge_url, args.instances))
            # wrk rounds alternate between the two servers, so that load from anything
            # else on the machine falls on both alike; medians are reported.
            for scenario, script in (("heartbeat", WRK_HEARTBEAT), ("churn", WRK_CHURN)):
                lua = script.replace("{api}", API).replace("{instances}", str(args.instances))
                samples: dict[str, list[tuple[float, float, int]]] = {"sdbridge": [], "floor": []}
                published_total = 0.0
                elapsed_total = 0.0
                for round_ in range(args.rounds):
                    order = [("sdbridge", bridge_url), ("floor", floor_url)]
                    for name, url in order if round_ % 2 == 0 else order[::-1]:
                        print(
                            f"[{name}] wrk {scenario} round {round_ + 1}/{args.rounds} ...",
                            flush=True,
                        )
                        before = publishes(bridge_url)
                        started = time.monotonic()
                        samples[name].append(
                            run_wrk(
                                url,
                                lua,
                                args.wrk_duration,
                                args.connections,
                                workdir,
                                f"{scenario}-{name}",
                            )
                        )
                        if name == "sdbridge":
                            elapsed_total += time.monotonic() - started
                            after = publishes(bridge_url)
                            published_total += after.get("http", 0) - before.get("http", 0)
                for name, runs in samples.items():
                    wrk[(scenario, name)] = (
                        statistics.median(r[0] for r in runs),
                        statistics.median(r[1] for r in runs),
                        sum(r[2] for r in runs),
                        published_total / elapsed_total,
                    )
            db = workdir / "data" / "registry.db"
            db_size = sum(p.stat().st_size for p in db.parent.glob("registry.db*"))
        finally:
            bridge.stop()
            floor.stop()

    s, f = results["sdbridge"], results["floor"]
    print()
    print(
        f"registry load: {args.instances} instances heartbeating every {args.heartbeat:g}s, "
        f"{args.churn:g} registration changes/s, {args.duration:g}s steady; wrk -c{args.connections} "
        f"{args.rounds} x {args.wrk_duration:g}s alternating, medians"
    )
    print(f"{'phase':<28}{'sdbridge':>14}{'floor':>14}{'ratio':>10}")

    def row(label: str, a: float, b: float, fmt: str) -> None:
        ratio = a / b if b else float("nan")
        print(f"{label:<28}{format(a, fmt):>14}{format(b, fmt):>14}{ratio:>9.2f}x")

    row("register PUTs/s (32 conc.)", s["register_rps"], f["register_rps"], ".0f")
    row("steady requests/s", s["rps"], f["rps"], ".1f")
    row("steady p50 (ms)", s["p50"] * 1e3, f["p50"] * 1e3, ".2f")
    row("steady p99 (ms)", s["p99"] * 1e3, f["p99"] * 1e3, ".2f")
    for scenario in ("heartbeat", "churn"):
        a, b = wrk[(scenario, "sdbridge")], wrk[(scenario, "floor")]
        row(f"wrk {scenario} requests/s", a[0], b[0], ".0f")
        row(f"wrk {scenario} p99 (ms)", a[1] * 1e3, b[1] * 1e3, ".2f")
    print(
        f"steady errors: sdbridge {s['errors']}, floor {f['errors']}; wrk non-2xx: "
        + ", ".join(f"{k[0]}/{k[1]} {v[2]}" for k, v in wrk.items())
    )
    print()
    print("publish rate (sdbridge_publish_total{job=registry}) vs target changes:")
    print(
        f"  steady: {s['changes_per_s']:.1f} changes/s -> {s['publish_http_per_s']:.2f} publishes/s "
        f"(file writes {s['publish_file_per_s']:.2f}/s)"
    )
    churn = wrk[("churn", "sdbridge")]
    print(f"  wrk churn: {churn[0]:.0f} changes/s -> {churn[3]:.2f} publishes/s")
    print("  bound from publish_delay (min 250ms, max 2s): <= 4/s; ~0.5/s under continuous churn")
    print(f"registry database after the run: {db_size / 1e6:.1f} MB (WAL included)")


if __name__ == "__main__":
    main()
