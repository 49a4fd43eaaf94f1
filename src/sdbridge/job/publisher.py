"""When and where a job's state is published.

The publisher asks the store for a build (:class:`Buildable`), lets the mass-deletion
guard decide, and hands the snapshot to the outputs. When is the pacer's decision
(:class:`PublishPacer`): an isolated change after a quiet period is published at once
(leading edge); while changes keep coming, publishes are spaced at least
``publish_delay.min`` apart, and at least :data:`COST_FACTOR` times the last publish's
own cost (a 45 MB job is not rebuilt four times a second), but never later than
``publish_delay.max`` after the first change not yet published.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from .. import metrics
from ..config import PublishDelay
from ..guard import Guard
from ..outputs import Output
from ..snapshot import Entry, Snapshot
from ..workers import run_publish_work

log = logging.getLogger("sdbridge.job")

COST_FACTOR = 3.0
"""Publishes of a busy job are spaced at least this many times the last one's cost."""

# Builds of more entries than this run on the publishing pool, so the loop stays responsive.
BUILD_IN_THREAD_ABOVE = 2000


class Clock(Protocol):
    """Time as the publisher sees it; tests inject one they advance by hand."""

    def monotonic(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on this clock."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep(seconds)``."""
        await asyncio.sleep(seconds)


class Buildable(Protocol):
    """What the publisher needs of a store."""

    @property
    def version(self) -> int:
        """Moves on every change of the store's content."""
        ...

    @property
    def size(self) -> int:
        """About how many entries a build handles (decides where it runs)."""
        ...

    def prepare_build(self) -> Callable[[], tuple[list[Entry], Snapshot]]:
        """Take the current content; return the (thread-safe) build to run."""
        ...

    def finish_build(self, ordered: list[Entry]) -> None:
        """Called with the build's result on the event loop."""
        ...

    @property
    def removed_total(self) -> int:
        """Entries ever removed or replaced (only grows)."""
        ...


class PublishPacer:
    """Decides when the next publish may start; the clock is injectable for tests."""

    def __init__(
        self,
        delay: PublishDelay,
        *,
        clock: Callable[[], float] = time.monotonic,
        cost_factor: float = COST_FACTOR,
    ) -> None:
        self.delay = delay
        self.clock = clock
        self.cost_factor = cost_factor
        self.first_change: float | None = None  # the oldest change not yet published
        self.last_start: float | None = None
        self.last_cost = 0.0

    def changed(self) -> None:
        """Note a change of the job's state."""
        if self.first_change is None:
            self.first_change = self.clock()

    def due(self) -> float | None:
        """When the next publish may start (clock time), or None if nothing waits."""
        first = self.first_change
        if first is None:
            return None
        if self.last_start is None:
            return first
        spacing = max(self.delay.min, self.cost_factor * self.last_cost)
        return max(first, min(self.last_start + spacing, first + self.delay.max))

    def started(self) -> float:
        """A publish starts now and takes every change so far; returns the start time."""
        now = self.clock()
        self.first_change = None
        self.last_start = now
        return now

    def finished(self, started: float) -> None:
        """The publish that started at ``started`` is done: remember what it cost."""
        self.last_cost = max(0.0, self.clock() - started)


class Publisher:
    """Publishes one job's store: pacing, guard, snapshot, outputs and their metrics."""

    def __init__(
        self,
        job: str,
        store: Buildable,
        *,
        delay: PublishDelay,
        guard: Guard,
        outputs: Sequence[Output],
        ready: Callable[[], bool],
        clock: Clock | None = None,
    ) -> None:
        self.job = job
        self.store = store
        self.guard = guard
        self.outputs = list(outputs)  # the job may replace the list
        self._clock = clock if clock is not None else SystemClock()
        self.pacer = PublishPacer(delay, clock=self._clock.monotonic)
        self._ready = ready
        self._wake = asyncio.Event()
        self._dirty = False
        # The snapshot the guard holds back, with the store version it was built from:
        # syncs that change nothing re-ask the guard about it instead of rebuilding.
        self._held: tuple[int, Snapshot, int] | None = None
        # store.removed_total when the published snapshot was built (None: restored).
        self._published_mark: int | None = None
        self._release_timer: asyncio.TimerHandle | None = None
        self.published = asyncio.Event()  # set once a fresh snapshot is published
        self.snapshot: Snapshot | None = None
        self.last_publish: float | None = None
        self._targets_gauge = metrics.JOB_TARGETS.labels(job=job)
        self._groups_gauge = metrics.JOB_GROUPS.labels(job=job)
        self._stale_gauge = metrics.JOB_STALE.labels(job=job)
        self._duration = metrics.PUBLISH_DURATION.labels(job=job)
        self._http_published = metrics.PUBLISH_TOTAL.labels(job=job, output="http")

    # --- what the job tells the publisher ---------------------------------------------

    def changed(self) -> None:
        """The store's content changed."""
        self._dirty = True
        self.pacer.changed()
        self._wake.set()

    def synced(self) -> None:
        """A sync that changed nothing: a held update is re-decided."""
        self._wake.set()

    def restore(self, snapshot: Snapshot) -> None:
        """Serve a last-known-good snapshot until the first complete sync replaces it."""
        if self.snapshot is None:
            self._set_snapshot(snapshot)

    # --- running ---------------------------------------------------------------------

    async def run(self) -> None:
        """Publish whenever the store changed and the pacer allows, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._dirty or not self._ready():
                continue
            due = self.pacer.due()
            if due is not None:
                wait = due - self._clock.monotonic()
                if wait > 0:
                    await self._clock.sleep(wait)
            self._dirty = False
            started = self.pacer.started()
            try:
                await self._publish()
            finally:
                self.pacer.finished(started)

    async def _publish(self) -> None:
        started = time.perf_counter()
        version = self.store.version  # before the build: a change during it is not in it
        held, self._held = self._held, None
        if held is not None and held[0] == version:
            _, snapshot, mark = held
        else:
            mark = self.store.removed_total
            snapshot = await self._build()
        previous = self.snapshot
        if (
            previous is not None
            and not previous.stale
            and previous.etag == snapshot.etag
            and previous.body == snapshot.body
        ):
            self.guard.admit(previous, snapshot)  # back to what is published: a hold ends
            self.published.set()
            return
        bound = None if self._published_mark is None else mark - self._published_mark
        if not self.guard.admit(previous, snapshot, removed_at_most=bound):
            # Re-decided on every later sync, and when hold_for runs out.
            self._held = (version, snapshot, mark)
            self._dirty = True
            wait = self.guard.seconds_until_release()
            if self._release_timer is not None:
                self._release_timer.cancel()  # one pending wake-up per hold, not one per sync
            if wait is not None:
                loop = asyncio.get_running_loop()
                self._release_timer = loop.call_later(wait + 0.01, self._wake.set)
            return
        self._set_snapshot(snapshot)
        self._published_mark = mark
        self.published.set()
        self._duration.observe(time.perf_counter() - started)

    async def _build(self) -> Snapshot:
        build = self.store.prepare_build()
        if self.store.size > BUILD_IN_THREAD_ABOVE:
            ordered, snapshot = await run_publish_work(build)
        else:
            ordered, snapshot = build()
        self.store.finish_build(ordered)
        return snapshot

    def _set_snapshot(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.last_publish = time.time()
        self._targets_gauge.set(snapshot.target_count)
        self._groups_gauge.set(snapshot.groups)
        self._stale_gauge.set(1 if snapshot.stale else 0)
        self._http_published.inc()
        for output in self.outputs:
            output.publish(snapshot)
