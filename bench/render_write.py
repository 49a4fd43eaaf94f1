"""Publish a job of 100,000 targets x 15 labels, then change one target: cost vs the floor.

Run: ``.venv/bin/python bench/render_write.py [--targets 100000] [--repeat 3]``
Growth: ``.venv/bin/python bench/render_write.py --growth`` (10k, 100k, 1M targets, each in
a fresh process: wall time of the full publish, the store's own size by tracemalloc, and
the process's steady RSS after its first publish, with the input groups dropped).

Everything goes through the real path: a Job (with one in-process discoverer sending
TargetGroups), its relabel/guard/render/Snapshot, and its FileOutput's atomic writer
(temp file, fsync, rename, directory fsync) to a temporary directory. Measured:

- ``full``: from the discoverer's first send (the full set) until the file is on disk;
- ``one target``: from a send that changes one label of one target until the new file
  is on disk.

Two floors, in the same run: ``floor`` is ``orjson.dumps`` of the same output data (the
merged label sets, already built) plus one write and fsync of those bytes (no validation,
merging, sorting or atomicity); ``write floor`` is a bare write + fsync + rename of the
same bytes (sdbridge's own ``atomic_write``), the least any publish of a whole file can
cost. Wall time is the best of ``--repeat`` runs; peak memory is measured in
separate runs with tracemalloc (which slows Python down, so it never overlaps timing),
as the peak of traced allocations above what was allocated before the step started.
``publish_delay`` is 0 so quiescence does not count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import random
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

from sdbridge.config import GlobalConfig, PublishDelay, config_models
from sdbridge.discovery.base import Send
from sdbridge.job import Job
from sdbridge.model import TargetGroup
from sdbridge.outputs.file import FileOutput, atomic_write
from sdbridge.snapshot import Snapshot

GROUP_SIZE = 100  # targets per group (source); 5 group labels + 10 target labels = 15
logs_off = True


def build_groups(n: int) -> list[TargetGroup]:
    """``n`` targets in groups of 100: 5 group labels and 10 per-target labels each."""
    rnd = random.Random(0)
    groups = []
    for g in range(0, n, GROUP_SIZE):
        labels = {
            "__meta_bench_service": f"service-{g // GROUP_SIZE}",
            "__meta_bench_datacenter": f"dc{g % 3}",
            "__meta_bench_tags": ",web,prod,v2,",
            "env": "prod",
            "team": f"team-{g % 17}",
        }
        targets = []
        for i in range(g, min(g + GROUP_SIZE, n)):
            targets.append(
                {
                    "__address__": f"127.{i // 65536}.{i // 256 % 256}.{i % 256}:9100",
                    "__meta_bench_node": f"node-{i}",
                    "__meta_bench_node_address": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                    "__meta_bench_service_id": f"svc-{i}-abcdef",
                    "__meta_bench_port": "9100",
                    "__meta_bench_health": "passing",
                    "__meta_bench_rack": f"rack-{i % 40}",
                    "instance_name": f"instance-{i:06d}",
                    "zone": f"zone-{i % 4}",
                    "version": "1.2.3",
                }
            )
        rnd.shuffle(targets)
        groups.append(TargetGroup(source=f"group-{g}", targets=tuple(targets), labels=labels))
    # A registry lists services in its own order, not by address: no free pre-sorted input.
    rnd.shuffle(groups)
    return groups


def changed_group(group: TargetGroup) -> TargetGroup:
    """The same group with one label of one target changed."""
    targets = list(group.targets)
    targets[0] = {**targets[0], "__meta_bench_health": "critical"}
    return TargetGroup(source=group.source, targets=tuple(targets), labels=group.labels)


class Driver:
    """A discoverer the benchmark drives, and a FileOutput that reports each write."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[list[TargetGroup]] = asyncio.Queue()

    async def run(self, send: Send) -> None:
        while True:
            await send(await self.queue.get())


class ReportingFileOutput(FileOutput):
    """A FileOutput that sets ``written`` after each completed write."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.written = asyncio.Event()

    async def _write(self, snapshot: Snapshot) -> None:
        await super()._write(snapshot)
        self.written.set()


async def job_steps(
    directory: Path, groups: list[TargetGroup]
) -> dict[str, Callable[[], Awaitable[None]]]:
    """Set up a job; return its two steps as coroutine functions to measure in order."""
    _, job_model = config_models()
    config = job_model.model_validate(
        {
            "name": "bench",
            "exec_sd_configs": [{"command": ["true"]}],
            "output": {"file": str(directory / "bench.json")},
        }
    )
    delay = PublishDelay.model_validate({"min": "0s", "max": "0s"})
    job = Job(config, GlobalConfig(publish_delay=delay))
    driver = Driver()
    job.runners[0].discoverer = driver
    output = ReportingFileOutput("bench", directory / "bench.json")
    job.outputs = [output]
    job.file_output = output
    task = asyncio.create_task(job.run())
    await asyncio.sleep(0.05)

    async def step(update: list[TargetGroup]) -> None:
        output.written.clear()
        driver.queue.put_nowait(update)
        await output.written.wait()

    async def full() -> None:
        await step(groups)

    async def one() -> None:
        await step([changed_group(groups[len(groups) // 2])])

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return {"full": full, "one target": one, "stop": stop}


def floor_step(directory: Path, data: list[dict[str, object]]) -> None:
    """orjson.dumps of the output data and one write + fsync."""
    body = orjson.dumps(data)
    fd = os.open(directory / "floor.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_floor_step(directory: Path, body: bytes) -> float:
    """A bare atomic replace of ``body``: write, fsync, rename, directory fsync."""
    started = time.perf_counter()
    atomic_write(directory / "write-floor.json", body)
    return time.perf_counter() - started


def output_data(groups: list[TargetGroup]) -> list[dict[str, object]]:
    return [
        {
            "labels": {k: v for k, v in t.items() if k != "__address__"},
            "targets": [t["__address__"]],
        }
        for g in groups
        for t in g.merged_targets()
    ]


def measure_floor(directory: Path, data: list[dict[str, object]], *, memory: bool) -> float:
    gc.collect()
    if memory:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        floor_step(directory, data)
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        return float(peak)
    started = time.perf_counter()
    floor_step(directory, data)
    return time.perf_counter() - started


async def measure_job(
    directory: Path, groups: list[TargetGroup], *, memory: bool
) -> dict[str, float]:
    steps = await job_steps(directory, groups)
    results = {}
    try:
        for name in ("full", "one target"):
            gc.collect()
            if memory:
                base = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
                await steps[name]()
                results[name] = float(tracemalloc.get_traced_memory()[1] - base)
            else:
                started = time.perf_counter()
                await steps[name]()
                results[name] = time.perf_counter() - started
    finally:
        await steps["stop"]()
    return results


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def growth_child(targets: int, *, memory: bool) -> str:
    """One size, in this (fresh) process: full publish time, or traced store size and RSS."""
    groups = build_groups(targets)
    with tempfile.TemporaryDirectory(prefix="sdbridge-bench-") as tmp:
        if memory:
            gc.collect()
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
        steps = await job_steps(Path(tmp), groups)
        started = time.perf_counter()
        await steps["full"]()
        wall = time.perf_counter() - started
        del groups, steps["full"], steps["one target"]
        gc.collect()
        await asyncio.sleep(1)  # steady: output writes done, transient memory freed
        if memory:
            store = tracemalloc.get_traced_memory()[0] - base
            tracemalloc.stop()
            result = f"{store / 1e6:.1f}"
        else:
            result = f"{wall:.3f} {rss_mb():.0f}"
        await steps["stop"]()
    return result


def growth(sizes: list[int]) -> None:
    import subprocess

    print("growth: each size in a fresh process; store = tracemalloc of what the job keeps")
    print(f"{'targets':>9} {'full publish':>13} {'per target':>11} {'store':>9} {'steady RSS':>11}")
    for n in sizes:
        out = {}
        for mode in ("time", "memory"):
            argv = [sys.executable, __file__, "--child", str(n), "--child-mode", mode]
            out[mode] = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
        wall, rss = out["time"].split()
        store = float(out["memory"])
        print(
            f"{n:>9} {float(wall) * 1000:>11.0f}ms {float(wall) * 1e6 / n:>9.1f}us "
            f"{store:>7.1f}MB {float(rss):>9.0f}MB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--growth", action="store_true", help="run 10k, 100k, 1M in fresh processes"
    )
    parser.add_argument("--growth-sizes", default="10000,100000,1000000")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-mode", default="time", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)  # the guard and output would log about the bench job

    if args.child:
        memory = args.child_mode == "memory"
        print(asyncio.run(growth_child(args.child, memory=memory)))
        return
    if args.growth:
        growth([int(n) for n in args.growth_sizes.split(",")])
        return

    groups = build_groups(args.targets)
    data = output_data(groups)
    with tempfile.TemporaryDirectory(prefix="sdbridge-bench-") as tmp:
        directory = Path(tmp)
        times: dict[str, list[float]] = {
            "full": [],
            "one target": [],
            "floor": [],
            "write floor": [],
        }
        for _ in range(args.repeat):
            times["floor"].append(measure_floor(directory, data, memory=False))
            for name, value in asyncio.run(measure_job(directory, groups, memory=False)).items():
                times[name].append(value)
            body = (directory / "bench.json").read_bytes()
            times["write floor"].append(write_floor_step(directory, body))
            os.unlink(directory / "bench.json")
        memory_floor = measure_floor(directory, data, memory=True)
        tracemalloc.start()
        memory = asyncio.run(measure_job(directory, groups, memory=True))
        tracemalloc.stop()
        size = (directory / "bench.json").stat().st_size

    floor = min(times["floor"])
    write_floor = min(times["write floor"])
    print(f"{args.targets} targets x 15 labels, {size / 1e6:.1f} MB of JSON, best of {args.repeat}")
    print(f"{'step':<12} {'wall':>9} {'x floor':>8} {'x write':>8} {'peak mem':>10} {'x floor':>8}")
    print(
        f"{'floor':<12} {floor * 1000:>7.0f}ms {1:>8.2f} {floor / write_floor:>8.2f} "
        f"{memory_floor / 1e6:>8.1f}MB {1:>8.2f}"
    )
    print(
        f"{'write floor':<12} {write_floor * 1000:>7.0f}ms {write_floor / floor:>8.2f} "
        f"{1:>8.2f} {'':>10} {'':>8}"
    )
    for name in ("full", "one target"):
        best = min(times[name])
        print(
            f"{name:<12} {best * 1000:>7.0f}ms {best / floor:>8.2f} {best / write_floor:>8.2f} "
            f"{memory[name] / 1e6:>8.1f}MB {memory[name] / memory_floor:>8.2f}"
        )
    print(f"python {sys.version.split()[0]}, orjson {orjson.__version__}")


if __name__ == "__main__":
    main()
