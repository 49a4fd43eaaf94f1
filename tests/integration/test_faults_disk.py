"""A full or read-only output directory: a tiny tmpfs (``mount -t tmpfs -o size=64k``).

The file output and the last-known-good state live on it. When a write fails, the old
file stays intact, no temp file is left, the error is reported (log, the output's
``last_error`` and ``sdbridge_publish_failures_total``), /sd keeps serving the new set,
and the write succeeds once space (or write access) returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client import REGISTRY

from sdbridge.config import GlobalConfig, PublishDelay
from sdbridge.job import Job
from sdbridge.outputs.file import TEMP_SUFFIX
from sdbridge.state import decode_state

from ..unit.fakes import FakeDiscoverer, group, job_config, until


class Mount:
    """A tmpfs we can fill, shrink, grow and make read-only."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def remount(self, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True)


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Mount]:
    path = tmp_path / "tmpfs"
    path.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (these tests run as root): {result.stderr}")
    try:
        yield Mount(path)
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def failures(job: str, output: str) -> float:
    labels = {"job": job, "output": output}
    return REGISTRY.get_sample_value("sdbridge_publish_failures_total", labels) or 0.0


def targets(n: int) -> list[str]:
    return [f"127.0.0.{1 + i % 200}:{10000 + i}" for i in range(n)]


@contextlib.asynccontextmanager
async def running_job(name: str, mount: Mount) -> AsyncIterator[tuple[Job, FakeDiscoverer]]:
    config = job_config(name, 1, output={"file": str(mount.path / f"{name}.json")})
    job = Job(
        config,
        GlobalConfig(
            publish_delay=PublishDelay.model_validate({"min": "0s", "max": "0s"}),
            data_dir=mount.path,
        ),
        state_dir=mount.path / "state",
    )
    fake = FakeDiscoverer()
    job.runners[0].discoverer = fake
    task = asyncio.create_task(job.run())
    try:
        yield job, fake
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def temp_files(directory: Path) -> list[str]:
    return [p.name for p in directory.rglob("*") if p.name.endswith(TEMP_SUFFIX)]


def file_targets(path: Path) -> int:
    return len(orjson.loads(path.read_bytes()))


async def test_full_disk_keeps_the_old_file_reports_and_recovers(
    tiny_tmpfs: Mount, caplog: pytest.LogCaptureFixture
) -> None:
    name = "fault-full"
    out = tiny_tmpfs.path / f"{name}.json"
    state = tiny_tmpfs.path / "state" / f"{name}.state"
    async with running_job(name, tiny_tmpfs) as (job, fake):
        await fake.send([group("g", *targets(10))])
        await until(lambda: out.exists() and state.exists())
        old_file, old_state = out.read_bytes(), state.read_bytes()
        before = failures(name, "file"), failures(name, "state")

        # Fill the disk, then publish a set far too big for what is left.
        filler = tiny_tmpfs.path / "filler"
        with contextlib.suppress(OSError):
            filler.write_bytes(b"x" * 64 * 1024)
        with caplog.at_level(logging.ERROR):
            await fake.send([group("g", *targets(1500))])
            await until(
                lambda: failures(name, "file") > before[0] and failures(name, "state") > before[1],
                what="both writes to fail",
            )
        assert out.read_bytes() == old_file, "the old file stays intact"
        assert state.read_bytes() == old_state
        assert temp_files(tiny_tmpfs.path) == []
        assert job.file_output is not None
        assert job.file_output.last_error is not None
        assert "No space left" in job.file_output.last_error
        assert "No space left" in caplog.text
        assert str(out) in caplog.text
        assert job.snapshot is not None
        assert job.snapshot.target_count == 1500, "/sd serves the new set meanwhile"
        outputs = {o.name: o for o in job.status().outputs}
        assert outputs["file"].last_error is not None
        assert outputs["state"].last_error is not None

        # Space returns: the retry lands.
        filler.unlink()
        tiny_tmpfs.remount("size=1m")
        await until(lambda: file_targets(out) == 1500, within=60, what="the retried write")
        await until(
            lambda: decode_state(state.read_bytes(), job=name, origin="t").target_count == 1500,
            within=60,
        )
        assert job.file_output.last_error is None
        assert temp_files(tiny_tmpfs.path) == []


async def test_read_only_directory_keeps_the_old_file_reports_and_recovers(
    tiny_tmpfs: Mount, caplog: pytest.LogCaptureFixture
) -> None:
    name = "fault-ro"
    out = tiny_tmpfs.path / f"{name}.json"
    async with running_job(name, tiny_tmpfs) as (job, fake):
        await fake.send([group("g", *targets(5))])
        await until(lambda: out.exists())
        old = out.read_bytes()
        before = failures(name, "file")
        tiny_tmpfs.remount("ro")
        try:
            with caplog.at_level(logging.ERROR):
                await fake.send([group("g", *targets(6))])
                await until(lambda: failures(name, "file") > before, what="the write to fail")
            assert out.read_bytes() == old
            assert job.file_output is not None
            assert "Read-only file system" in (job.file_output.last_error or "")
            assert "Read-only file system" in caplog.text
        finally:
            tiny_tmpfs.remount("rw")
        await until(lambda: file_targets(out) == 6, within=60, what="the retried write")
        assert temp_files(tiny_tmpfs.path) == []
        assert os.access(out, os.R_OK)
