"""Load on Nacos and change latency: nacos_sd_configs per mode vs a per-service poller.

Each side gets its own Nacos double (a separate process, tests/doubles/nacos_double.py,
version 2.x: HTTP plus the gRPC port at HTTP + 1000) holding ``--services`` services x
``--instances`` instances, so that its requests are its own. The sides, in one run:

- ``baseline``: a per-service poller, the way the third-party adapters work: every 30 s
  it pages ``/nacos/v1/ns/service/list`` and reads ``/nacos/v1/ns/instance/list`` for
  each service (written here, ~30 lines);
- ``bulk``: nacos_sd_configs with ``grpc: false`` (the v1 catalog, ``withInstances``);
- ``per-service``: nacos_sd_configs with ``grpc: false`` against a double whose catalog
  answers 404 (the fallback: names, then one instance list per service);
- ``gRPC (default)``: nacos_sd_configs as configured by default on 2.x (bulk listing plus
  the gRPC subscription);
- ``gRPC, per-service``: the subscription where the catalog is hidden (pages of names
  each interval, instances only pushed).

Every side polls at ``refresh_interval: 30s``. Idle: requests and gRPC messages (both
ways) per minute over ``--idle`` seconds; the doubles send each gRPC connection a
``ClientDetectionRequest`` every 20 s, as a Nacos server does to an idle connection.
Then change -> file: ``--changes`` new instances registered on the ``gRPC (default)``
side's double, 0.3-0.9 s apart, each timed until its address is in that side's
file_sd file (written with sdbridge's atomic_write on each send). The baseline's latency
is U(0, 30 s) plus one round of reads, given analytically.

Run: ``.venv/bin/python bench/nacos_load.py`` (about 2 1/2 minutes with the defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.doubles.nacos_double import free_port_pair  # noqa: E402

from sdbridge.discovery.base import DiscoveryContext  # noqa: E402
from sdbridge.discovery.nacos import NacosDiscoverer, NacosSDConfig  # noqa: E402
from sdbridge.model import TargetGroup  # noqa: E402
from sdbridge.outputs.file import atomic_write  # noqa: E402

INTERVAL = 30.0


class Double:
    """A Nacos double in its own process, driven through /_double/call."""

    def __init__(self) -> None:
        self.port = free_port_pair()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.doubles.nacos_double", "--port", str(self.port)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        self.process.stdout.readline()  # "listening on"
        self.address = f"127.0.0.1:{self.port}"

    async def call(self, session: aiohttp.ClientSession, method: str, **kwargs: Any) -> Any:
        url = f"http://{self.address}/_double/call"
        async with session.post(url, json={"method": method, "kwargs": kwargs}) as answer:
            answer.raise_for_status()
            return await answer.json()

    async def stats(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(f"http://{self.address}/_double/stats") as answer:
            return dict(await answer.json())

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, 9)
        self.process.wait()


class Side:
    """nacos_sd_configs writing a file_sd file on every send."""

    def __init__(self, name: str, double: Double, directory: Path, **options: Any) -> None:
        self.name = name
        self.double = double
        self.path = directory / f"{name.replace(' ', '_').replace(',', '')}.json"
        config = NacosSDConfig.model_validate(
            {"server": double.address, "refresh_interval": f"{INTERVAL:g}s", **options}
        )
        self.discoverer = NacosDiscoverer(config, DiscoveryContext(job=name, mechanism="nacos"))
        self.groups: dict[str, TargetGroup] = {}
        self.written: dict[str, float] = {}  # address -> when the file first had it
        self.synced = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def send(self, groups: list[TargetGroup]) -> None:
        for group in groups:
            if group.targets:
                self.groups[group.source] = group
            else:
                self.groups.pop(group.source, None)
        document = [
            {"targets": [t["__address__"] for t in g.targets], "labels": {}}
            for _, g in sorted(self.groups.items())
        ]
        atomic_write(self.path, orjson.dumps(document))
        now = time.monotonic()
        for group in groups:
            for target in group.targets:
                self.written.setdefault(target["__address__"], now)
        self.synced.set()

    def start(self) -> None:
        self.task = asyncio.create_task(self.discoverer.run(self.send))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


async def baseline_poller(address: str, stop: asyncio.Event) -> None:
    """What third-party Nacos -> Prometheus adapters do: every service, every 30 s."""
    base = f"http://{address}/nacos/v1/ns"
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            names: list[str] = []
            page = 1
            while True:
                params = {"pageNo": str(page), "pageSize": "100", "groupName": "DEFAULT_GROUP"}
                async with session.get(f"{base}/service/list", params=params) as answer:
                    data = await answer.json(content_type=None)
                names += data["doms"]
                if len(names) >= data["count"] or not data["doms"]:
                    break
                page += 1
            targets = []
            for name in names:
                params = {"serviceName": f"DEFAULT_GROUP@@{name}"}
                async with session.get(f"{base}/instance/list", params=params) as answer:
                    info = await answer.json(content_type=None)
                targets += [f"{h['ip']}:{h['port']}" for h in info["hosts"]]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), INTERVAL)


async def detect_clients(
    doubles: list[Double], session: aiohttp.ClientSession, stop: asyncio.Event
) -> None:
    """Nacos sends a ClientDetectionRequest to connections idle for 20 s."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 20)
        for double in doubles:
            await double.call(session, "detect_clients")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    names = ["baseline", "bulk", "per-service", "gRPC (default)", "gRPC, per-service"]
    doubles = {name: Double() for name in names}
    try:
        return await _measure(args, doubles)
    finally:
        for double in doubles.values():
            double.stop()


async def _measure(args: argparse.Namespace, doubles: dict[str, Double]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        for name, double in doubles.items():
            await double.call(session, "load", services=args.services, instances=args.instances)
            if "per-service" in name:
                await double.call(session, "add_fault", kind="status", path="/catalog/", status=404)
        with TemporaryDirectory() as tmp:
            directory = Path(tmp)
            sides = [
                Side("bulk", doubles["bulk"], directory, grpc=False),
                Side("per-service", doubles["per-service"], directory, grpc=False),
                Side("gRPC (default)", doubles["gRPC (default)"], directory),
                Side("gRPC, per-service", doubles["gRPC, per-service"], directory),
            ]
            stop = asyncio.Event()
            started = time.monotonic()
            baseline = asyncio.create_task(baseline_poller(doubles["baseline"].address, stop))
            for side in sides:
                side.start()
            await asyncio.gather(*(side.synced.wait() for side in sides))
            first_sync = time.monotonic() - started
            # Let the subscriptions finish subscribing before the idle window.
            for side in sides[2:]:
                while not side.discoverer.pushing():  # noqa: ASYNC110 - a state, not an event
                    await asyncio.sleep(0.05)
            detector = asyncio.create_task(
                detect_clients([doubles[s.name] for s in sides[2:]], session, stop)
            )
            # Start the window half an interval after the first listings, so that it
            # holds whole rounds of every poller (two in the default 60 s).
            await asyncio.sleep(max(0.0, INTERVAL / 2 - (time.monotonic() - started)))
            for double in doubles.values():
                await double.call(session, "reset_counters")
            await asyncio.sleep(args.idle)
            idle: dict[str, dict[str, float]] = {}
            for name, double in doubles.items():
                stats = await double.stats(session)
                idle[name] = {
                    "requests_per_min": stats["total_requests"] * 60 / args.idle,
                    "grpc_per_min": stats["total_grpc_messages"] * 60 / args.idle,
                }
            # change -> file, on the default side.
            side = sides[2]
            latencies = []
            for n in range(args.changes):
                ip = f"127.1.{n // 250}.{n % 250 + 1}"
                registered = time.monotonic()
                await double_call(doubles[side.name], session, ip)
                address = f"{ip}:7000"
                while address not in side.written:  # noqa: ASYNC110 - polled like a file
                    await asyncio.sleep(0.002)
                latencies.append(side.written[address] - registered)
                await asyncio.sleep(random.uniform(0.3, 0.9))
            stop.set()
            detector.cancel()
            baseline.cancel()
            for task in (detector, baseline):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for side in sides:
                await side.stop()
    return {"first_sync_s": first_sync, "idle": idle, "latencies": latencies}


async def double_call(double: Double, session: aiohttp.ClientSession, ip: str) -> None:
    await double.call(session, "register", service="svc-00001", ip=ip, port=7000)


def report(args: argparse.Namespace, result: dict[str, Any]) -> None:
    idle = result["idle"]
    base = idle["baseline"]["requests_per_min"] + idle["baseline"]["grpc_per_min"]
    print(
        f"\nNacos 2.x double, {args.services} services x {args.instances} instances,"
        f" refresh_interval 30s, idle window {args.idle:.0f}s"
    )
    print(f"first sync of the four sides: {result['first_sync_s']:.1f}s\n")
    print("| side | HTTP req/min | gRPC msg/min | total/min | vs baseline |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, figures in idle.items():
        total = figures["requests_per_min"] + figures["grpc_per_min"]
        ratio = f"1/{base / total:.0f}" if total and name != "baseline" else "1"
        print(
            f"| {name} | {figures['requests_per_min']:.1f} | {figures['grpc_per_min']:.1f}"
            f" | {total:.1f} | {ratio} |"
        )
    latencies = result["latencies"]
    if latencies:
        print(f"\nchange -> file with the gRPC subscription ({len(latencies)} changes):")
        print(
            f"p50 {percentile(latencies, 50) * 1000:.0f} ms, p90 {percentile(latencies, 90) * 1000:.0f} ms,"
            f" p99 {percentile(latencies, 99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
        )
        print("baseline (poll every 30 s): U(0, 30 s) + one round of reads: p50 ~15 s, p99 ~30 s")
    print(json.dumps(result | {"latencies": [round(x, 4) for x in latencies]}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=5)
    parser.add_argument("--idle", type=float, default=60.0, help="idle window, seconds")
    parser.add_argument("--changes", type=int, default=60)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    report(args, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
