"""Outputs: where a job's snapshots go (a file; the http_sd handler reads the job directly)."""

from __future__ import annotations

from typing import Protocol

from ..render import Snapshot


class Output(Protocol):
    """Receives each new snapshot of a job; never raises, retries on its own."""

    name: str

    def publish(self, snapshot: Snapshot) -> None:
        """Take the snapshot to write; returns at once."""
        ...

    async def run(self) -> None:
        """Write pending snapshots until cancelled."""
        ...
