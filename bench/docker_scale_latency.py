"""Latency from ``docker service scale`` to the target list, sdbridge vs Prometheus.

Run: ``.venv/bin/python bench/docker_scale_latency.py [--rounds 6]``

One real Docker Engine (Debian's docker.io, single-node swarm; started like the test
fixture if none runs) gets one service on an overlay network. Side by side, in the same
run, on the same engine:

- ``sdbridge``: ``sdbridge run`` with ``dockerswarm_sd_configs`` (role tasks, default
  refresh_interval 60s, default publish_delay), writing a file_sd file; a thread reads the
  file every 20 ms.
- ``prometheus``: a real Prometheus with Prometheus's own ``dockerswarm_sd_configs`` (same
  role and filter, default refresh_interval 60s); a thread polls ``/api/v1/targets`` every
  100 ms.
- ``engine`` (the floor): the Engine API itself, polled every 50 ms: when the tasks have
  actually reached (or left) the running state.

Both sides keep only tasks with desired state and state ``running`` (the relabel rule the
docs recommend). Each round scales the service between 2 and 4 replicas with
``docker service scale -d`` and measures, from just before that command, when each side
first shows the new count. Rounds start at a random point (1-61 s after the previous
one ended), so they fall uniformly within Prometheus's refresh interval. (2 of 4 is a 50% drop, which sdbridge's mass-deletion guard
lets through at its default ``max_drop_ratio: 0.5``; a larger drop, e.g. ``--low 1
--high 3``, is held until 3 further syncs confirm it, which adds about 1.5 s here.) A random pause between rounds keeps the rounds out of phase
with Prometheus's refresh.

Network rule: nothing connects to the tasks. Prometheus's relabeling rewrites every
``__address__`` to ``127.0.0.1:<a free port nothing listens on>`` (with the task ID as a
label so the targets stay distinct), and its scrape_interval is 1h, so its only possible
scrape goes to loopback and is refused.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.servers.common import ManagedProcess, free_port, http_ok  # noqa: E402
from tests.servers.dockerd import DockerEngine, _session  # noqa: E402

KEEP_RUNNING = {
    "source_labels": ["__meta_dockerswarm_task_desired_state", "__meta_dockerswarm_task_state"],
    "regex": "running;running",
    "action": "keep",
}


class Observer:
    """Polls one view of the target count in a thread; notes when it changes."""

    def __init__(self, name: str, read: Callable[[], int], every: float) -> None:
        self.name = name
        self._read = read
        self._every = every
        self.count = -1
        self.changes: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                count = self._read()
            except Exception:
                count = self.count
            if count != self.count:
                self.count = count
                self.changes.append((time.monotonic(), count))
            self._stop.wait(self._every)

    def first_at(self, count: int, since: float) -> float | None:
        """When the count first became ``count`` after ``since``."""
        for when, value in self.changes:
            if when >= since and value == count:
                return when
        return None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--round-timeout", type=float, default=150.0)
    parser.add_argument("--low", type=int, default=2, help="replicas after scaling down")
    parser.add_argument("--high", type=int, default=4, help="replicas after scaling up")
    args = parser.parse_args()

    engine = _session.acquire()
    workdir = Path(tempfile.mkdtemp(prefix="sdbridge-bench-docker-"))
    processes: list[ManagedProcess] = []
    observers: list[Observer] = []
    try:
        with (
            engine.network() as network,
            engine.service(f"--replicas={args.low}", "--network", network) as service,
        ):
            sdbridge_file = workdir / "swarm.json"
            start_sdbridge(engine, service, workdir, sdbridge_file, processes)
            prometheus_url = start_prometheus(engine, service, workdir, processes)

            def sdbridge_count() -> int:
                return len(json.loads(sdbridge_file.read_bytes())) if sdbridge_file.exists() else -1

            def prometheus_count() -> int:
                with urllib.request.urlopen(
                    f"{prometheus_url}/api/v1/targets?state=active", timeout=5
                ) as r:
                    data = json.load(r)["data"]["activeTargets"]
                return sum(1 for t in data if t["scrapePool"] == "swarm")

            def engine_count() -> int:
                return sum(
                    1
                    for t in engine.tasks(service)
                    if t["DesiredState"] == "running" and t["Status"]["State"] == "running"
                )

            observers = [
                Observer("engine (floor)", engine_count, 0.05),
                Observer("sdbridge", sdbridge_count, 0.02),
                Observer("prometheus", prometheus_count, 0.1),
            ]
            wait_all(observers, args.low, time.monotonic() - 1000, args.round_timeout)
            latencies = run_rounds(
                engine, service, observers, args.rounds, args.round_timeout, (args.low, args.high)
            )
            report(latencies, args.rounds)
    finally:
        for observer in observers:
            observer.stop()
        for process in processes:
            process.stop()
        _session.release()
        shutil.rmtree(workdir, ignore_errors=True)


def start_sdbridge(
    engine: DockerEngine, service: str, workdir: Path, output: Path, processes: list[ManagedProcess]
) -> None:
    config = {
        "global": {"data_dir": str(workdir / "data")},
        "jobs": [
            {
                "name": "swarm",
                "dockerswarm_sd_configs": [
                    {
                        "host": engine.host,
                        "role": "tasks",
                        "filters": [{"name": "service", "values": [service]}],
                    }
                ],
                "relabel_configs": [KEEP_RUNNING],
                "output": {"file": str(output)},
            }
        ],
    }
    path = workdir / "sdbridge.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    processes.append(
        ManagedProcess(
            [
                str(REPO / ".venv/bin/sdbridge"),
                "run",
                f"--config={path}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            log_path=workdir / "sdbridge.log",
        )
    )
    deadline = time.monotonic() + 30
    while not http_ok(f"http://127.0.0.1:{port}/-/healthy"):
        if time.monotonic() > deadline:
            raise SystemExit(f"sdbridge did not start: {processes[-1].log_text()[-2000:]}")
        time.sleep(0.1)


def start_prometheus(
    engine: DockerEngine, service: str, workdir: Path, processes: list[ManagedProcess]
) -> str:
    unused = free_port()  # nothing listens here: a scrape, if one happens, is refused
    config = {
        "global": {"scrape_interval": "1h", "scrape_timeout": "10s"},
        "scrape_configs": [
            {
                "job_name": "swarm",
                "dockerswarm_sd_configs": [
                    {
                        "host": engine.host,
                        "role": "tasks",
                        "filters": [{"name": "service", "values": [service]}],
                    }
                ],
                "relabel_configs": [
                    KEEP_RUNNING,
                    {"source_labels": ["__meta_dockerswarm_task_id"], "target_label": "task_id"},
                    {"target_label": "__address__", "replacement": f"127.0.0.1:{unused}"},
                ],
            }
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    processes.append(
        ManagedProcess(
            [
                shutil.which("prometheus") or "/usr/bin/prometheus",
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            log_path=workdir / "prometheus.log",
        )
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not http_ok(f"{url}/-/ready"):
        if time.monotonic() > deadline:
            raise SystemExit(f"prometheus did not start: {processes[-1].log_text()[-2000:]}")
        time.sleep(0.1)
    return url


def wait_all(observers: list[Observer], count: int, since: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(o.first_at(count, since) is None for o in observers):
        if time.monotonic() > deadline:
            late = [o.name for o in observers if o.first_at(count, since) is None]
            raise SystemExit(f"timed out waiting for {late} to show {count} target(s)")
        time.sleep(0.05)


def run_rounds(
    engine: DockerEngine,
    service: str,
    observers: list[Observer],
    rounds: int,
    timeout: float,
    sizes: tuple[int, int],
) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {o.name: [] for o in observers}
    low, high = sizes
    replicas = low
    for n in range(rounds):
        replicas = high if replicas == low else low
        # Uniform over Prometheus's 60 s refresh interval: waiting for Prometheus at the
        # end of each round would otherwise lock every round to the same phase of it.
        time.sleep(random.uniform(1.0, 61.0))
        started = time.monotonic()
        engine.cli("service", "scale", "-d", f"{service}={replicas}")
        wait_all(observers, replicas, started, timeout)
        line = [f"round {n + 1}: scale to {replicas}:"]
        for observer in observers:
            at = observer.first_at(replicas, started)
            assert at is not None
            latencies[observer.name].append(at - started)
            line.append(f"{observer.name} {at - started:.2f}s")
        print("  ".join(line), flush=True)
    return latencies


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s | {max(values):.2f} s"


def report(latencies: dict[str, list[float]], rounds: int) -> None:
    floor = latencies["engine (floor)"]
    sdb = latencies["sdbridge"]
    prom = latencies["prometheus"]
    print()
    print("| view | rounds | p50 | max | p50 up | p50 down |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, values in latencies.items():
        up, down = values[0::2], values[1::2]
        print(
            f"| {name} | {rounds} | {_fmt(values)} | {statistics.median(up):.2f} s | "
            f"{statistics.median(down) if down else float('nan'):.2f} s |"
        )
    print()
    print(
        f"ratio prometheus/sdbridge: {statistics.median(prom) / statistics.median(sdb):.1f}x at "
        f"p50, {max(prom) / max(sdb):.1f}x at max"
    )
    overhead = [s - f for s, f in zip(sdb, floor, strict=True)]
    print(
        f"sdbridge after the engine itself (overhead over the floor): p50 "
        f"{statistics.median(overhead):.2f} s, max {max(overhead):.2f} s"
    )


if __name__ == "__main__":
    main()
