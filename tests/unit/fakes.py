"""In-process fakes for driving a real Job: a controllable discoverer and a recording output."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Protocol

from sdbridge.config import GlobalConfig, JobConfigBase, PublishDelay, config_models
from sdbridge.discovery.base import GroupDiff, Send
from sdbridge.durations import format_duration
from sdbridge.job import Job
from sdbridge.job.publisher import Clock
from sdbridge.model import TargetGroup
from sdbridge.render import Snapshot


class FakeDiscoverer:
    """A discoverer whose sends the test drives: ``await fake.send(groups)``."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[list[TargetGroup]] = asyncio.Queue()
        self.runs = 0

    async def run(self, send: Send) -> None:
        """Forward what the test queues, in order."""
        self.runs += 1
        while True:
            groups = await self._queue.get()
            try:
                await send(groups)
            finally:
                self._queue.task_done()

    async def send(self, groups: list[TargetGroup]) -> None:
        """Have the job receive ``groups`` and wait until it has merged them."""
        self._queue.put_nowait(groups)
        await self._queue.join()


class DiffingFake(FakeDiscoverer):
    """A fake that takes full sets and sends what changed, like a RefreshDiscoverer."""

    def __init__(self) -> None:
        super().__init__()
        self.diff = GroupDiff()

    async def send_full(self, groups: list[TargetGroup]) -> list[TargetGroup]:
        """Send the changes from the previous full set to ``groups``; return them."""
        changes = self.diff.changes(groups)
        await self.send(changes)
        return changes


class RecordingOutput:
    """An output that records every snapshot it is given."""

    name = "recording"

    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []
        self.last_error: str | None = None

    def publish(self, snapshot: Snapshot) -> None:
        """Record ``snapshot``."""
        self.snapshots.append(snapshot)

    async def run(self) -> None:
        """Nothing to do in the background."""
        await asyncio.Event().wait()


class Runnable(Protocol):
    """Anything with an ``async run()`` that runs until cancelled (a Job, an output)."""

    async def run(self) -> None:
        """Run until cancelled."""


@contextlib.asynccontextmanager
async def background(work: Coroutine[Any, Any, object]) -> AsyncIterator[asyncio.Task[object]]:
    """Run ``work`` as a task for the ``async with`` block; cancel it after."""
    task = asyncio.create_task(work)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def running(runnable: Runnable) -> AsyncIterator[None]:
    """Run ``runnable.run()`` as a task for the ``async with`` block; cancel it after."""
    async with background(runnable.run()):
        yield


def job_config(name: str = "test", mechanisms: int = 1, **extra: Any) -> JobConfigBase:
    """A job config with ``mechanisms`` exec entries (tests replace their discoverers)."""
    _, job_model = config_models()
    data = {"name": name, "exec_sd_configs": [{"command": ["true"]}] * mechanisms, **extra}
    return job_model.model_validate(data)


def make_job(
    *,
    mechanisms: int = 1,
    delay: tuple[float, float] = (0.0, 0.0),
    fakes: list[FakeDiscoverer] | None = None,
    name: str = "test",
    clock: Clock | None = None,
    **extra: Any,
) -> tuple[Job, list[FakeDiscoverer], RecordingOutput]:
    """A real Job whose mechanisms are fakes, with a recording output."""
    publish_delay = PublishDelay.model_validate(
        {"min": format_duration(delay[0]), "max": format_duration(delay[1])}
    )
    global_config = GlobalConfig(publish_delay=publish_delay)
    output = RecordingOutput()
    job = Job(
        job_config(name, mechanisms, **extra), global_config, extra_outputs=[output], clock=clock
    )
    fakes = fakes if fakes is not None else [FakeDiscoverer() for _ in range(mechanisms)]
    for runner, fake in zip(job.runners, fakes, strict=True):
        runner.discoverer = fake
    return job, fakes, output


async def until(condition: Callable[[], bool], *, within: float = 10.0, what: str = "") -> None:
    """Wait until ``condition()`` is true; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what or condition}")
        await asyncio.sleep(0.01)


def group(source: str, *targets: dict[str, str] | str, **labels: str) -> TargetGroup:
    """A TargetGroup; a target given as a string is just its address."""
    sets = tuple({"__address__": t} if isinstance(t, str) else dict(t) for t in targets)
    return TargetGroup(source=source, targets=sets, labels=dict(labels))
