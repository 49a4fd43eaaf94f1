"""Publish a job of 100,000 targets x 15 labels, then change one target: cost vs the floor.

Run: ``.venv/bin/python bench/render_write.py [--targets 100000] [--repeat 3]``

Everything goes through the real path: a Job (with one in-process discoverer sending
TargetGroups), its relabel/guard/render/Snapshot, and its FileOutput's atomic writer
(temp file, fsync, rename, directory fsync) to a temporary directory. Measured:

- ``full``: from the discoverer's first send (the full set) until the file is on disk;
- ``one target``: from a send that changes one label of one target until the new file
  is on disk.

The floor is ``orjson.dumps`` of the same output data (the merged label sets, already
built) plus one write and fsync of those bytes: no validation, merging, sorting or
atomicity. Wall time is the best of ``--repeat`` runs; peak memory is measured in
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
from sdbridge.outputs.file import FileOutput
from sdbridge.render import Snapshot

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)  # the guard and output would log about the bench job

    groups = build_groups(args.targets)
    data = output_data(groups)
    with tempfile.TemporaryDirectory(prefix="sdbridge-bench-") as tmp:
        directory = Path(tmp)
        times: dict[str, list[float]] = {"full": [], "one target": [], "floor": []}
        for _ in range(args.repeat):
            times["floor"].append(measure_floor(directory, data, memory=False))
            for name, value in asyncio.run(measure_job(directory, groups, memory=False)).items():
                times[name].append(value)
            os.unlink(directory / "bench.json")
        memory_floor = measure_floor(directory, data, memory=True)
        tracemalloc.start()
        memory = asyncio.run(measure_job(directory, groups, memory=True))
        tracemalloc.stop()
        size = (directory / "bench.json").stat().st_size

    floor = min(times["floor"])
    print(f"{args.targets} targets x 15 labels, {size / 1e6:.1f} MB of JSON, best of {args.repeat}")
    print(f"{'step':<12} {'wall':>9} {'x floor':>8} {'peak mem':>10} {'x floor':>8}")
    print(f"{'floor':<12} {floor * 1000:>7.0f}ms {1:>8.2f} {memory_floor / 1e6:>8.1f}MB {1:>8.2f}")
    for name in ("full", "one target"):
        best = min(times[name])
        print(
            f"{name:<12} {best * 1000:>7.0f}ms {best / floor:>8.2f} "
            f"{memory[name] / 1e6:>8.1f}MB {memory[name] / memory_floor:>8.2f}"
        )
    print(f"python {sys.version.split()[0]}, orjson {orjson.__version__}")


if __name__ == "__main__":
    main()
