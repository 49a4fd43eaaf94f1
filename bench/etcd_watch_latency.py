"""Latency from an etcd key change to the file_sd file change, 10,000 instances registered.

Run: ``.venv/bin/python bench/etcd_watch_latency.py [--instances 10000] [--changes 60]``

One real etcd (Debian's etcd-server) on 127.0.0.1 is bulk-loaded with Kratos
ServiceInstances (one http endpoint each) through the v3 gateway's txn, then three
``sdbridge run`` processes follow the same prefix side by side in the same run:

- ``watch``: etcd_sd_configs with its watch (the default), default ``publish_delay``
  (min 250 ms, max 2 s: the quiescence that batches bursts), so its figure includes it;
- ``watch-nodelay``: the same with ``publish_delay`` 0, the floor of the watch path;
- ``poll``: the same mechanism with ``watch: false`` and ``refresh_interval: 30s``, the
  poll-based baseline (default ``publish_delay``).

Every ~1 s (jittered, so changes do not lock in phase with the poll) a new instance is
registered; a monitor thread stats the output files every 2 ms, reads a file when it
changed and notes when each new address first appears. After the last change the run waits
one more poll interval so every change reaches the baseline too.

The poll baseline's expected latency is also given analytically: a change lands uniformly
within a 30 s interval, so latency ≈ U(0, 30 s) + one list-and-publish, i.e. p50 ≈ 15 s,
p99 ≈ 29.7 s (plus the list time measured here).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.servers.common import free_port, http_ok  # noqa: E402
from tests.servers.etcd import EtcdServer, kratos_instance  # noqa: E402

NAMESPACE = "/microservices"
SERVICE = "bench"
PREFIX = f"{NAMESPACE}/{SERVICE}/"
POLL_INTERVAL = 30.0
# name, watch, default publish_delay
VARIANTS = (("watch", True, True), ("watch-nodelay", True, False), ("poll", False, True))
LABELS = {
    "watch": "watch",
    "watch-nodelay": "watch, publish_delay 0 (floor)",
    "poll": "poll every 30s (baseline)",
}


def address(n: int) -> str:
    """A loopback address for instance ``n`` (nothing ever scrapes it)."""
    return f"127.{1 + n // 62500}.{n // 250 % 250}.{1 + n % 250}:8000"


def instance(n: int) -> tuple[str, str]:
    return kratos_instance(
        SERVICE,
        f"instance-{n}",
        [f"http://{address(n)}"],
        version="v1.0.0",
        metadata={"zone": f"z{n % 3}"},
        namespace=NAMESPACE,
    )


def write_config(workdir: Path, name: str, etcd_url: str, watch: bool, delay: bool) -> Path:
    entry: dict[str, object] = {"endpoints": [etcd_url], "prefix": PREFIX, "layout": "kratos"}
    if not watch:
        entry.update(watch=False, refresh_interval=f"{int(POLL_INTERVAL)}s")
    config = {
        "global": {
            "data_dir": str(workdir / f"data-{name}"),
            **({} if delay else {"publish_delay": {"min": "0s", "max": "0s"}}),
        },
        "jobs": [
            {
                "name": name,
                "etcd_sd_configs": [entry],
                "output": {"file": str(workdir / f"{name}.json")},
            }
        ],
    }
    path = workdir / f"{name}.yml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


class Monitor(threading.Thread):
    """Notes when each awaited address first appears in each output file."""

    def __init__(self, files: dict[str, Path]) -> None:
        super().__init__(daemon=True)
        self.files = files
        self.pending: dict[str, dict[str, float]] = {name: {} for name in files}  # addr → t0
        self.latencies: dict[str, list[float]] = {name: [] for name in files}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()

    def expect(self, addr: str, t0: float) -> None:
        with self.lock:
            for pending in self.pending.values():
                pending[addr] = t0

    def outstanding(self) -> int:
        with self.lock:
            return sum(len(p) for p in self.pending.values())

    def run(self) -> None:
        stamps: dict[str, tuple[int, int]] = {}
        while not self.stop_event.is_set():
            for name, path in self.files.items():
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                stamp = (st.st_ino, st.st_mtime_ns)
                if stamps.get(name) == stamp:
                    continue
                stamps[name] = stamp
                seen = time.monotonic()
                try:
                    groups = json.loads(path.read_bytes())
                except (OSError, ValueError):
                    stamps.pop(name, None)
                    continue
                addresses = {g["targets"][0] for g in groups}
                with self.lock:
                    pending = self.pending[name]
                    for addr in [a for a in pending if a in addresses]:
                        self.latencies[name].append(seen - pending.pop(addr))
            time.sleep(0.002)


def targets_in(path: Path) -> int:
    try:
        return len(json.loads(path.read_bytes()))
    except (OSError, ValueError):
        return 0


def refresh_seconds(port: int) -> float:
    """Mean refresh duration reported by a sdbridge process's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("sdbridge_refresh_duration_seconds_sum{"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("sdbridge_refresh_duration_seconds_count{"):
            count += float(line.rsplit(" ", 1)[1])
    return total / count if count else 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=60)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="sdbridge-bench-etcd-"))
    etcd = EtcdServer(workdir, extra_args=["--max-txn-ops=1000"])
    processes: list[subprocess.Popen[bytes]] = []
    try:
        started = time.monotonic()
        etcd.put_many([instance(n) for n in range(args.instances)], batch=1000)
        print(f"loaded {args.instances} instances in {time.monotonic() - started:.1f}s")

        files = {}
        ports = {}
        for name, watch, delay in VARIANTS:
            config = write_config(workdir, name, etcd.url, watch, delay)
            port = ports[name] = free_port()
            log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the run
            processes.append(
                subprocess.Popen(
                    [
                        str(REPO / ".venv/bin/sdbridge"),
                        "run",
                        f"--config.file={config}",
                        f"--web.listen-address=127.0.0.1:{port}",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            files[name] = workdir / f"{name}.json"
            deadline = time.monotonic() + 120
            while not http_ok(f"http://127.0.0.1:{port}/-/ready") or (
                targets_in(files[name]) < args.instances
            ):
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name}: no first sync; see {workdir / name}.log")
                time.sleep(0.1)
            print(
                f"{name}: first sync of {args.instances} targets after "
                f"{time.monotonic() - started:.1f}s since load start"
            )
            started = time.monotonic()

        monitor = Monitor(files)
        monitor.start()
        rng = random.Random(7)
        for i in range(args.changes):
            n = args.instances + i
            key, value = instance(n)
            t0 = time.monotonic()
            monitor.expect(address(n), t0)
            etcd.put(key, value)
            time.sleep(rng.uniform(0.5, 1.5))
        deadline = time.monotonic() + POLL_INTERVAL + 10
        while monitor.outstanding() and time.monotonic() < deadline:
            time.sleep(0.1)
        monitor.stop_event.set()
        monitor.join()
        print(
            f"poll: mean list+parse of {args.instances} keys {refresh_seconds(ports['poll']) * 1000:.0f}ms"
        )

        print()
        print(f"{'mechanism':<32}{'samples':>8}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}")
        rows = {}
        for name, _, _ in VARIANTS:
            values = monitor.latencies[name]
            if not values:
                print(f"{name:<32}{0:>8}")
                continue
            row = [percentile(values, q) for q in (50, 90, 99)] + [max(values)]
            rows[name] = row
            label = LABELS[name]
            print(f"{label:<32}{len(values):>8}" + "".join(f"{v * 1000:>8.0f}ms" for v in row))
        # One poll's list + parse (measured by sdbridge) plus the default publish_delay.min.
        list_time = refresh_seconds(ports["poll"]) + 0.25
        analytic = [POLL_INTERVAL * q + list_time for q in (0.5, 0.9, 0.99, 1.0)]
        print(
            f"{'poll, analytic U(0,30s)+list':<32}{'':>8}"
            + "".join(f"{v * 1000:>8.0f}ms" for v in analytic)
        )
        if "watch" in rows and "poll" in rows:
            watch, poll = rows["watch"], rows["poll"]
            print()
            print(f"ratio poll/watch: p50 {poll[0] / watch[0]:.0f}x, p99 {poll[2] / watch[2]:.0f}x")
            if "watch-nodelay" in rows:
                floor = rows["watch-nodelay"]
                print(
                    f"ratio watch/floor: p50 {watch[0] / floor[0]:.1f}x, "
                    f"p99 {watch[2] / floor[2]:.1f}x (the publish_delay's share)"
                )
            print(
                f"goal p99 < 1s (watch): {'met' if watch[2] < 1.0 else 'NOT met'} "
                f"({watch[2] * 1000:.0f}ms); mean watch {statistics.mean(monitor.latencies['watch']) * 1000:.0f}ms"
            )
        lost = {name: len(p) for name, p in monitor.pending.items() if p}
        if lost:
            print(f"changes never seen: {lost}")
    finally:
        for process in processes:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        etcd.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
