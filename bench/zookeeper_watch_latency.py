"""Latency from a znode change to the file_sd file change, with 10,000 instances registered.

Runs a real ZooKeeper 3.8 (Debian's package) on 127.0.0.1 and ``sdbridge run`` as a
separate process with one job: ``zookeeper_sd_configs`` in the ``curator`` layout over
100 services x 100 instances. Three modes, side by side:

* ``persistent``: the mechanism as shipped (one persistent recursive watch, ZooKeeper 3.6+);
* ``one-shot``: the same with ``persistent_watches: false`` (a watch per znode, re-armed);
* ``poll``: the baseline, the same mechanism with ``watch: false`` polling every 30 s.

Each sample updates one instance's znode (a new port) and times until the file holds the
new address; the clock starts just before the write is sent. Watch-mode samples are
spaced by a random 0.1-0.4 s so they do not batch. In poll mode, several changes are
made at random moments within each 30 s cycle, each timed on its own; this samples the
same distribution as one change per cycle (uniform over the cycle, plus the poll's own
cost) in a fraction of the time. Both modes keep the default ``publish_delay``
(min 250 ms, max 2 s), which is part of every latency.

Also reported: ZooKeeper requests sent and sdbridge CPU time per minute while following.

    .venv/bin/python bench/zookeeper_watch_latency.py [--instances 10000] [--samples 100]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from kazoo.client import KazooClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.servers.common import ManagedProcess, free_port
from tests.servers.zookeeper import zookeeper_server

BASE = "/bench/services"
SERVICES = 100
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def instance(service: str, index: int, port: int) -> bytes:
    """A Curator ServiceInstance as JsonInstanceSerializer writes it (see the tests)."""
    return json.dumps(
        {
            "name": service,
            "id": f"i{index}",
            "address": f"127.0.0.{1 + index % 200}",
            "port": port,
            "sslPort": None,
            "payload": {
                "@class": "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance",
                "id": f"i{index}",
                "name": service,
                "metadata": {"instance_status": "UP", "zone": f"z{index % 3}"},
            },
            "registrationTimeUTC": 1700000000000,
            "serviceType": "DYNAMIC",
            "uriSpec": None,
        },
        separators=(",", ":"),
    ).encode()


def address(index: int, port: int) -> bytes:
    return f"127.0.0.{1 + index % 200}:{port}".encode()


def populate(zk: KazooClient, count: int) -> list[str]:
    """Register ``count`` instances; return their paths (index = position)."""
    per_service = max(1, count // SERVICES)
    paths = []
    for s in range(SERVICES):
        zk.ensure_path(f"{BASE}/svc{s}")
    pending = []
    for i in range(count):
        service = f"svc{i // per_service % SERVICES}"
        path = f"{BASE}/{service}/i{i}"
        paths.append(path)
        pending.append(zk.create_async(path, instance(service, i, 10000)))
        if len(pending) >= 1000:
            for result in pending:
                result.get(timeout=60)
            pending = []
    for result in pending:
        result.get(timeout=60)
    return paths


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def backend_requests(web: str) -> float:
    with urllib.request.urlopen(f"http://{web}/metrics", timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("sdbridge_backend_requests_total{") and 'mechanism="zookeeper"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(file: Path, needle: bytes, timeout: float, since_mtime: int = 0) -> float:
    """Poll the file until it contains ``needle``; return the monotonic time it was seen."""
    deadline = time.monotonic() + timeout
    last = since_mtime
    while time.monotonic() < deadline:
        try:
            mtime = file.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = 0
        if mtime != last:
            last = mtime
            if needle in file.read_bytes():
                return time.monotonic()
        time.sleep(0.001)
    raise TimeoutError(f"{needle!r} not in {file} after {timeout}s")


def count_targets(file: Path) -> int:
    try:
        return sum(len(g["targets"]) for g in json.loads(file.read_bytes()))
    except (FileNotFoundError, ValueError):
        return -1


def start_sdbridge(
    workdir: Path, hosts: str, *, mode: str, interval: float
) -> tuple[ManagedProcess, Path, str]:
    web = f"127.0.0.1:{free_port()}"
    out = workdir / f"{mode}.json"
    config = workdir / f"{mode}.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"data_dir": str(workdir / f"data-{mode}")},
                "jobs": [
                    {
                        "name": "bench",
                        "output": {"file": str(out)},
                        "zookeeper_sd_configs": [
                            {
                                "servers": [hosts],
                                "paths": [BASE],
                                "layout": "curator",
                                "watch": mode != "poll",
                                "persistent_watches": mode == "persistent",
                                "refresh_interval": f"{round(interval * 1000)}ms",
                            }
                        ],
                    }
                ],
            }
        )
    )
    argv = [
        str(Path(sys.executable).with_name("sdbridge")),
        "run",
        "--config.file",
        str(config),
        "--web.listen-address",
        web,
        "--log.level",
        "warn",
    ]
    log = workdir / f"sdbridge-{mode}.log"
    return ManagedProcess(argv, log_path=log), out, web


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def run_mode(
    zk: KazooClient,
    paths: list[str],
    workdir: Path,
    hosts: str,
    *,
    mode: str,
    interval: float,
    samples: int,
    port_base: int,
) -> dict[str, Any]:
    watch = mode != "poll"
    process, out, web = start_sdbridge(workdir, hosts, mode=mode, interval=interval)
    try:
        started = time.monotonic()
        while count_targets(out) != len(paths):
            if not process.alive():
                raise RuntimeError(process.log_text()[-3000:])
            if time.monotonic() - started > 300:
                raise TimeoutError("initial sync did not finish")
            time.sleep(0.05)
        first_sync = time.monotonic() - started
        cpu0, req0, t0 = cpu_seconds(process.pid), backend_requests(web), time.monotonic()
        latencies: list[float] = []
        rng = random.Random(port_base)
        chosen = rng.sample(range(len(paths)), samples)
        if watch:
            for n, index in enumerate(chosen):
                port = port_base + n
                needle = address(index, port)
                before = out.stat().st_mtime_ns
                sent = time.monotonic()
                zk.set(paths[index], instance(paths[index].split("/")[-2], index, port))
                latencies.append(wait_for(out, needle, 30, before) - sent)
                time.sleep(rng.uniform(0.1, 0.4))
        else:
            # Changes at random moments of each cycle; each is timed on its own.
            per_cycle = 10
            for cycle in range(0, samples, per_cycle):
                batch = chosen[cycle : cycle + per_cycle]
                offsets = sorted(rng.uniform(0, interval) for _ in batch)
                cycle_start = time.monotonic()
                sent_at = {}
                for n, (index, offset) in enumerate(zip(batch, offsets, strict=True)):
                    time.sleep(max(0.0, cycle_start + offset - time.monotonic()))
                    port = port_base + cycle + n
                    sent_at[address(index, port)] = time.monotonic()
                    zk.set(paths[index], instance(paths[index].split("/")[-2], index, port))
                remaining = dict(sent_at)
                deadline = time.monotonic() + 3 * interval
                last = 0
                while remaining and time.monotonic() < deadline:
                    mtime = out.stat().st_mtime_ns
                    if mtime != last:
                        last = mtime
                        body, seen = out.read_bytes(), time.monotonic()
                        for needle in [k for k in remaining if k in body]:
                            latencies.append(seen - remaining.pop(needle))
                    time.sleep(0.001)
                if remaining:
                    raise TimeoutError(f"poll mode missed {len(remaining)} changes")
        elapsed = time.monotonic() - t0
        cpu = cpu_seconds(process.pid) - cpu0
        requests = backend_requests(web) - req0
    finally:
        process.stop()
    return {
        "mode": mode if watch else f"poll every {interval:g}s",
        "samples": len(latencies),
        "first_sync_s": first_sync,
        "p50": percentile(latencies, 50),
        "p90": percentile(latencies, 90),
        "p99": percentile(latencies, 99),
        "max": max(latencies),
        "mean": statistics.fmean(latencies),
        "requests_per_min": requests / elapsed * 60,
        "cpu_s_per_min": cpu / elapsed * 60,
    }


def main() -> None:
    logging.getLogger("kazoo").setLevel(logging.ERROR)  # its reconnection chatter
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=100, help="watch-mode samples")
    parser.add_argument("--poll-interval", type=float, default=30.0)
    parser.add_argument("--poll-samples", type=int, default=30)
    args = parser.parse_args()

    with zookeeper_server() as server, tempfile.TemporaryDirectory(prefix="zk-bench-") as tmp:
        zk = KazooClient(hosts=server.hosts, timeout=30)
        zk.start(timeout=30)
        try:
            began = time.monotonic()
            paths = populate(zk, args.instances)
            print(f"registered {len(paths)} instances in {time.monotonic() - began:.1f}s")
            plan = [
                ("persistent", args.samples, 20000),
                ("one-shot", args.samples, 30000),
                ("poll", args.poll_samples, 40000),
            ]
            results = [
                run_mode(
                    zk,
                    paths,
                    Path(tmp),
                    server.hosts,
                    mode=mode,
                    interval=args.poll_interval if mode == "poll" else 30.0,
                    samples=samples,
                    port_base=port_base,
                )
                for mode, samples, port_base in plan
            ]
        finally:
            zk.stop()
            zk.close()

    print()
    header = f"{'mode':<18}{'n':>5}{'sync s':>8}{'p50 s':>8}{'p90 s':>8}{'p99 s':>8}{'max s':>8}{'req/min':>10}{'cpu s/min':>10}"
    print(header)
    for r in results:
        print(
            f"{r['mode']:<18}{r['samples']:>5}{r['first_sync_s']:>8.2f}{r['p50']:>8.3f}"
            f"{r['p90']:>8.3f}{r['p99']:>8.3f}{r['max']:>8.3f}{r['requests_per_min']:>10.0f}"
            f"{r['cpu_s_per_min']:>10.2f}"
        )
    persistent, one_shot, poll = results
    print()
    for watch in (persistent, one_shot):
        print(
            f"poll/{watch['mode']} latency ratio: p50 {poll['p50'] / watch['p50']:.0f}x, "
            f"p99 {poll['p99'] / watch['p99']:.0f}x; p99 goal (< 1 s): "
            f"{'met' if watch['p99'] < 1.0 else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
