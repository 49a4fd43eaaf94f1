"""Last-known-good persistence: each job's last published snapshot, kept in ``data_dir``.

At start a job loads its state and serves it (marked stale) until its first complete
sync, so a restart while a backend is down loses no targets. A state file is
``<data_dir>/state/<job>.state``: one JSON header line, then the snapshot's exact
file_sd JSON body::

    {"format": 1, "job": "web", "created": 1700000000.5, "targets": 3, "length": 412, "sha256": "..."}
    [{"labels":{...},"targets":["10.0.0.1:9100"]}, ...]

It is written with the same atomic replace as the file output. A file that is
truncated, has a wrong checksum, an unknown format, another job's name or targets
that do not validate is reported (log and ``sdbridge_state_load_failures_total``),
moved aside as ``<job>.state.corrupt`` and ignored: never trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import orjson

from . import metrics
from .errors import InvalidTargetError, OutputError
from .model import parse_file_sd
from .outputs import SnapshotWriter
from .outputs.file import atomic_write, remove_stale_temp_files
from .render import make_entry, sort_entries
from .snapshot import Snapshot
from .workers import run_publish_work

log = logging.getLogger("sdbridge.state")

FORMAT_VERSION = 1
STATE_SUFFIX = ".state"
CORRUPT_SUFFIX = ".corrupt"


class StateError(Exception):
    """A state file that must not be trusted; the message says why."""


def state_path(state_dir: Path, job: str) -> Path:
    """Where ``job``'s state lives (job names are safe file names: see config.JOB_NAME_RE)."""
    return state_dir / f"{job}{STATE_SUFFIX}"


def encode_state(snapshot: Snapshot) -> bytes:
    """The bytes of a state file holding ``snapshot``."""
    body = snapshot.body
    header = {
        "format": FORMAT_VERSION,
        "job": snapshot.job,
        "created": snapshot.created,
        "targets": snapshot.target_count,
        "groups": snapshot.groups,
        "length": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    return orjson.dumps(header) + b"\n" + body


def decode_state(data: bytes, *, job: str, origin: str) -> Snapshot:
    """Verify and parse a state file; raise StateError naming ``origin`` and the problem."""
    header_line, newline, body = data.partition(b"\n")
    if not newline:
        raise StateError(f"{origin}: no header line (truncated?)")
    try:
        header = orjson.loads(header_line)
    except orjson.JSONDecodeError as exc:
        raise StateError(f"{origin}: unreadable header: {exc}") from None
    if not isinstance(header, dict):
        raise StateError(f"{origin}: the header is not a JSON object")
    if header.get("format") != FORMAT_VERSION:
        raise StateError(
            f"{origin}: unknown format {header.get('format')!r} (this sdbridge reads {FORMAT_VERSION})"
        )
    if header.get("job") != job:
        raise StateError(f"{origin}: holds job {header.get('job')!r}, not {job!r}")
    if header.get("length") != len(body):
        raise StateError(
            f"{origin}: body is {len(body)} bytes, the header says {header.get('length')!r} "
            "(truncated?)"
        )
    if header.get("sha256") != hashlib.sha256(body).hexdigest():
        raise StateError(f"{origin}: checksum mismatch")
    created = header.get("created")
    if not isinstance(created, int | float) or isinstance(created, bool):
        raise StateError(f"{origin}: bad 'created' {created!r}")
    try:
        groups = parse_file_sd(orjson.loads(body), origin=origin)
    except orjson.JSONDecodeError as exc:
        raise StateError(f"{origin}: body is not JSON: {exc}") from None
    except InvalidTargetError as exc:
        raise StateError(str(exc)) from None
    entries = sort_entries(make_entry(labels) for g in groups for labels in g.merged_targets())
    group_count = header.get("groups")
    snapshot = Snapshot.build(
        job, entries, groups=group_count if isinstance(group_count, int) else 0, stale=True
    )
    if header.get("targets") != snapshot.target_count:
        raise StateError(
            f"{origin}: {snapshot.target_count} targets, the header says {header.get('targets')!r}"
        )
    return dataclasses.replace(snapshot, created=float(created))


class StateOutput(SnapshotWriter):
    """Keeps a job's last published snapshot on disk; loads it back at start.

    The newest snapshot is written atomically, only when its body changed (the retry
    loop is :class:`~sdbridge.outputs.SnapshotWriter`'s). A stale (restored) snapshot
    is never written back: it came from this file.
    """

    name = "state"
    log = log
    failed_message = "cannot store the last-known-good state (the previous one stays): %s"
    recovered_message = "state stored again: %s"

    def __init__(self, job: str, state_dir: Path) -> None:
        super().__init__(job, state_path(state_dir, job))
        self._load_failures = metrics.STATE_LOAD_FAILURES.labels(job=job)

    async def load(self) -> Snapshot | None:
        """The stored snapshot (stale), or None if there is none or it is not trustworthy."""
        return await asyncio.to_thread(self._load)

    def _load(self) -> Snapshot | None:
        for stale in remove_stale_temp_files(self.path):
            log.info("removed a temp file left by an earlier run: %s", stale)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._reject(f"{self.path}: cannot read: {exc.strerror or exc}", move=False)
            return None
        try:
            snapshot = decode_state(data, job=self.job, origin=str(self.path))
        except StateError as exc:
            self._reject(str(exc), move=True)
            return None
        self._written = snapshot.body
        log.info(
            "loaded last-known-good state: %d targets; serving it as stale until the first sync",
            snapshot.target_count,
            extra={"job": self.job},
        )
        return snapshot

    def _reject(self, reason: str, *, move: bool) -> None:
        self._load_failures.inc()
        log.error(
            "ignoring the last-known-good state, it cannot be trusted: %s",
            reason,
            extra={"job": self.job},
        )
        if move:
            # Keep it for a post-mortem, out of the way of the next load.
            with contextlib.suppress(OSError):
                os.replace(self.path, self.path.with_name(self.path.name + CORRUPT_SUFFIX))

    def publish(self, snapshot: Snapshot) -> None:
        """Queue ``snapshot`` to be stored; stale (restored) snapshots are not stored again."""
        if not snapshot.stale:
            super().publish(snapshot)

    async def _prepare(self) -> None:
        await asyncio.to_thread(self._prepare_dir)

    def _prepare_dir(self) -> None:
        with contextlib.suppress(OSError):  # a failure shows up, named, on the first write
            self.path.parent.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_temp_files(self.path):
            log.info("removed a temp file left by an earlier run: %s", stale)

    async def _write(self, snapshot: Snapshot) -> None:
        if snapshot.body == self._written:
            return
        # Shielded: a shutdown lets an in-flight write finish instead of abandoning it.
        await asyncio.shield(run_publish_work(self._store, snapshot))
        self._written = snapshot.body
        self._published.inc()

    def _store(self, snapshot: Snapshot) -> None:
        data = encode_state(snapshot)  # here, off the event loop: it copies and hashes the body
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create {self.path.parent}: {exc.strerror}") from exc
        atomic_write(self.path, data, 0o644)

    def status(self) -> dict[str, Any]:
        """What the API shows about this output."""
        return {"name": self.name, "path": str(self.path), "last_error": self.last_error}
