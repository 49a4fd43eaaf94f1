"""Outputs: where a job's snapshots go (a file; the http_sd handler reads the job directly)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import ClassVar, Protocol

from .. import metrics
from ..asyncutil import Backoff, wait_event
from ..errors import OutputError
from ..snapshot import Snapshot


class Output(Protocol):
    """Receives each new snapshot of a job; never raises, retries on its own."""

    name: str

    def publish(self, snapshot: Snapshot) -> None:
        """Take the snapshot to write; returns at once."""
        ...

    async def run(self) -> None:
        """Write pending snapshots until cancelled."""
        ...


class SnapshotWriter:
    """An output that writes a job's newest snapshot to ``path`` in the background.

    ``publish`` queues (a newer snapshot replaces an unwritten older one); ``run`` writes
    it with :meth:`_write`. A failure is counted, logged once per distinct error, and
    retried with backoff, or sooner when a newer snapshot arrives; what is on disk stays.
    A write counts as done only once ``_write`` has returned, so nothing is lost.
    """

    name: str
    log: ClassVar[logging.Logger]
    retry_backoff: tuple[float, float] = (0.5, 30.0)  # seconds: first retry, longest wait
    failed_message: ClassVar[str]  # logged with the error, when a new error appears
    recovered_message: ClassVar[str]  # logged with the path, when writes work again

    def __init__(self, job: str, path: Path) -> None:
        self.job = job
        self.path = path
        self.last_error: str | None = None
        self._written: bytes | None = None  # what is on disk, to skip identical writes
        self._pending: Snapshot | None = None
        self._wakeup = asyncio.Event()
        self._published = metrics.PUBLISH_TOTAL.labels(job=job, output=self.name)
        self._failed = metrics.PUBLISH_FAILURES.labels(job=job, output=self.name)

    def publish(self, snapshot: Snapshot) -> None:
        """Queue ``snapshot`` for writing; a newer one replaces an unwritten older one."""
        self._pending = snapshot
        self._wakeup.set()

    async def run(self) -> None:
        """Write pending snapshots until cancelled."""
        await self._prepare()
        backoff = Backoff(*self.retry_backoff)
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            snapshot = self._pending
            if snapshot is None:
                continue
            try:
                await self._write(snapshot)
            except Exception as exc:  # an output never dies: it reports and retries
                self._failed.inc()
                if self.last_error != str(exc):
                    self.log.error(
                        self.failed_message,
                        exc,
                        exc_info=None if isinstance(exc, OutputError) else exc,
                        extra={"job": self.job},
                    )
                self.last_error = str(exc)
                # Retry later unless a newer snapshot arrives first (it wakes us too).
                await wait_event(self._wakeup, backoff.next_delay())
                self._wakeup.set()
                continue
            if self.last_error is not None:
                self.log.info(self.recovered_message, self.path, extra={"job": self.job})
                self.last_error = None
            backoff.reset()
            if self._pending is snapshot:
                self._pending = None

    async def _prepare(self) -> None:
        """Run once before the first write (e.g. clean up after a crashed writer)."""

    async def _write(self, snapshot: Snapshot) -> None:
        """Write ``snapshot`` (or nothing, if it is already on disk); raise on failure."""
        raise NotImplementedError
