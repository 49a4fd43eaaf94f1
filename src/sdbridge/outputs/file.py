"""The file_sd output: an atomic replace, done only when the bytes change.

A missing output directory is created; an unwritable one is an error that is logged
and retried with backoff while the previous file (if any) stays in place.

The temp file lives in the target's directory (so the rename is atomic) under a name
no file_sd glob matches: it starts with a dot and ends in ``.sdbridge-tmp``, and file_sd
only reads names ending in ``.json``, ``.yml`` or ``.yaml``. It is fsynced, chmod-ed,
renamed over the target, and then the directory is fsynced so the rename is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from pathlib import Path

from ..errors import OutputError
from ..render import Snapshot, render_json, render_yaml
from ..workers import run_publish_work
from . import SnapshotWriter

log = logging.getLogger("sdbridge.outputs.file")

TEMP_SUFFIX = ".sdbridge-tmp"
YAML_SUFFIXES = (".yml", ".yaml")


def temp_prefix(path: Path) -> str:
    """The prefix of temp files written next to ``path``."""
    return f".{path.name}."


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old or the new file, never less.

    Raises :class:`OutputError` naming the path; the old file is then left untouched.
    """
    directory = path.parent
    try:
        try:
            fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=TEMP_SUFFIX, dir=directory)
        except FileNotFoundError:
            # A missing output directory is created, like `mkdir -p`.
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=TEMP_SUFFIX, dir=directory)
    except OSError as exc:
        raise OutputError(
            f"cannot write {path}: cannot create a temp file in {directory}: {exc.strerror}"
        ) from exc
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)  # explicit, so the umask does not decide what Prometheus can read
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise OutputError(f"cannot open {directory} to fsync it: {exc.strerror}") from exc
    try:
        os.fsync(dir_fd)
    except OSError as exc:
        raise OutputError(f"cannot fsync {directory}: {exc.strerror}") from exc
    finally:
        os.close(dir_fd)


def remove_stale_temp_files(path: Path) -> list[Path]:
    """Delete temp files a crashed writer left next to ``path``; return what was removed.

    Best effort: a directory that cannot be listed is the write's problem to report.
    """
    removed = []
    with contextlib.suppress(OSError):
        for candidate in path.parent.iterdir():
            name = candidate.name
            if name.startswith(temp_prefix(path)) and name.endswith(TEMP_SUFFIX):
                with contextlib.suppress(OSError):
                    candidate.unlink()
                    removed.append(candidate)
    return removed


def render_for(path: Path, snapshot: Snapshot, *, pretty: bool = False) -> bytes:
    """The bytes of ``snapshot`` in the format ``path``'s extension asks for."""
    if path.suffix.lower() in YAML_SUFFIXES:
        return render_yaml(snapshot.entries)
    if pretty:
        return render_json(snapshot.entries, pretty=True)
    return snapshot.body


class FileOutput(SnapshotWriter):
    """Writes a job's snapshots to one file; retries failed writes with backoff.

    A write is recorded as done only after the rename and directory fsync succeeded,
    so a failure is retried with the newest snapshot until it lands.
    """

    name = "file"
    log = log
    failed_message = "write failed, the previous file stays: %s"
    recovered_message = "write succeeded again: %s"

    def __init__(self, job: str, path: Path, *, mode: int = 0o644, pretty: bool = False) -> None:
        super().__init__(job, path)
        self.mode = mode
        self.pretty = pretty
        self._written_etag: str | None = None  # the ETag of _written when we wrote it

    async def _prepare(self) -> None:
        for stale in await asyncio.to_thread(remove_stale_temp_files, self.path):
            log.info("removed a temp file left by an earlier run: %s", stale)
        self._written = await asyncio.to_thread(self._read_current)
        self._written_etag = None

    async def write_now(self, snapshot: Snapshot) -> None:
        """Write ``snapshot`` at once (for ``sdbridge once``); raise OutputError on failure."""
        if self._written is None:
            self._written = await asyncio.to_thread(self._read_current)
        await self._write(snapshot)

    async def _write(self, snapshot: Snapshot) -> None:
        plain = not self.pretty and self.path.suffix.lower() not in YAML_SUFFIXES
        if plain:
            data = snapshot.body  # already rendered: no thread hand-off for nothing
        else:
            data = await run_publish_work(render_for, self.path, snapshot, pretty=self.pretty)
        # Equal bytes give equal ETags, so different ETags mean different bytes: a change
        # skips comparing the whole body (tens of MB) with what is on disk.
        known = plain and self._written_etag is not None and self._written_etag != snapshot.etag
        if not known and data == self._written:
            return
        # Shielded: a shutdown waits for an in-flight write instead of abandoning it.
        await asyncio.shield(run_publish_work(atomic_write, self.path, data, self.mode))
        self._written = data
        self._written_etag = snapshot.etag if plain else None
        self._published.inc()
        log.debug("wrote %d targets to %s", snapshot.target_count, self.path)

    def _read_current(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except OSError:
            return None
