"""The file output and its atomic writer."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from sdbridge.errors import OutputError
from sdbridge.outputs import file as file_module
from sdbridge.outputs.file import (
    TEMP_SUFFIX,
    FileOutput,
    atomic_write,
    remove_stale_temp_files,
    temp_prefix,
)
from sdbridge.render import Snapshot, make_entry, sort_entries

from .fakes import running, until

# Prometheus's discovery/file: patFileSDName, matched case-insensitively on the base name.
FILE_SD_NAME = re.compile(r"^[^*]*(\*[^/]*)?\.(json|yml|yaml)$", re.IGNORECASE)


def snapshot(*addresses: str, **labels: str) -> Snapshot:
    entries = [make_entry({"__address__": a, **labels}) for a in addresses]
    return Snapshot.build("j", sort_entries(entries))


@pytest.fixture
def counted_writes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    writes: list[Path] = []
    real = file_module.atomic_write

    def counting(path: Path, data: bytes, mode: int = 0o644) -> None:
        real(path, data, mode)
        writes.append(path)

    monkeypatch.setattr(file_module, "atomic_write", counting)
    return writes


async def test_writes_only_when_the_bytes_change(
    tmp_path: Path, counted_writes: list[Path]
) -> None:
    path = tmp_path / "out" / "job.json"  # a missing directory is created
    output = FileOutput("j", path)
    async with running(output):
        output.publish(snapshot("127.0.0.1:1"))
        await until(lambda: len(counted_writes) == 1)
        inode = path.stat().st_ino
        output.publish(snapshot("127.0.0.1:1"))  # same bytes: no write
        output.publish(snapshot("127.0.0.1:1"))
        await asyncio.sleep(0.1)
        assert len(counted_writes) == 1
        assert path.stat().st_ino == inode
        output.publish(snapshot("127.0.0.2:1"))
        await until(lambda: len(counted_writes) == 2)
    assert path.read_bytes() == b'[{"labels":{},"targets":["127.0.0.2:1"]}]'


async def test_an_identical_file_from_an_earlier_run_is_not_rewritten(
    tmp_path: Path, counted_writes: list[Path]
) -> None:
    path = tmp_path / "job.json"
    path.write_bytes(snapshot("127.0.0.1:1").body)
    output = FileOutput("j", path)
    async with running(output):
        output.publish(snapshot("127.0.0.1:1"))
        await asyncio.sleep(0.1)
    assert counted_writes == []


async def test_yaml_by_extension(tmp_path: Path) -> None:
    path = tmp_path / "job.YAML"
    output = FileOutput("j", path)
    async with running(output):
        output.publish(snapshot("127.0.0.1:1", env="dev"))
        await until(path.exists)
    assert yaml.safe_load(path.read_text()) == [
        {"labels": {"env": "dev"}, "targets": ["127.0.0.1:1"]}
    ]


async def test_a_failed_write_is_retried_and_never_recorded_as_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "job.json"
    path.write_bytes(b"[]")
    attempts: list[bytes] = []
    real = file_module.atomic_write

    def flaky(target: Path, data: bytes, mode: int = 0o644) -> None:
        attempts.append(data)
        if len(attempts) <= 2:
            raise OutputError(f"cannot write {target}: No space left on device")
        real(target, data, mode)

    monkeypatch.setattr(file_module, "atomic_write", flaky)
    output = FileOutput("j", path)
    output.retry_backoff = (0.01, 0.05)
    async with running(output):
        output.publish(snapshot("127.0.0.1:1"))
        await until(lambda: output.last_error is not None)
        assert path.read_bytes() == b"[]"  # the previous file stays
        await until(lambda: len(attempts) == 3)
        await until(lambda: output.last_error is None)
    assert path.read_bytes() == snapshot("127.0.0.1:1").body
    assert attempts == [snapshot("127.0.0.1:1").body] * 3


async def test_a_newer_snapshot_replaces_one_that_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "job.json"
    attempts: list[bytes] = []
    real = file_module.atomic_write
    gate = threading.Event()

    def failing_until_gate(target: Path, data: bytes, mode: int = 0o644) -> None:
        attempts.append(data)
        if not gate.is_set():
            raise OutputError("disk full")
        real(target, data, mode)

    monkeypatch.setattr(file_module, "atomic_write", failing_until_gate)
    output = FileOutput("j", path)
    output.retry_backoff = (0.01, 0.02)
    async with running(output):
        output.publish(snapshot("127.0.0.1:1"))
        await until(lambda: len(attempts) >= 2)
        output.publish(snapshot("127.0.0.2:1"))
        gate.set()
        await until(lambda: path.exists() and output.last_error is None)
        await asyncio.sleep(0.05)
    assert path.read_bytes() == snapshot("127.0.0.2:1").body


async def test_write_now_raises_and_keeps_the_old_file(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the output directory should be")
    output = FileOutput("j", blocker / "job.json")
    with pytest.raises(OutputError, match=r"not-a-dir.*job\.json"):
        await output.write_now(snapshot("127.0.0.1:1"))


@pytest.fixture
def umask_077() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("umask_077")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o600])
def test_mode_is_set_explicitly(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "job.json"
    atomic_write(path, b"[]", mode)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    atomic_write(path, b"[ ]", mode)  # and again on replace
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_default_mode_is_0644(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    atomic_write(path, b"[]")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_atomic_write_leaves_no_temp_file_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "job.json"
    path.write_bytes(b"old")

    def fail(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OutputError, match="No space left on device"):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.json"]


def test_temp_files_are_written_next_to_the_target_with_an_unmatched_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    renames: list[tuple[str, str]] = []
    real = os.replace

    def recording(src: str, dst: str) -> None:
        renames.append((str(src), str(dst)))
        real(src, dst)

    monkeypatch.setattr(os, "replace", recording)
    for name in ("job.json", "job.yml", "x.YAML", "*.json"):
        atomic_write(tmp_path / name, b"[]")
    for src, dst in renames:
        assert Path(src).parent == Path(dst).parent
        assert FILE_SD_NAME.match(Path(src).name) is None, src
        assert FILE_SD_NAME.match(Path(dst).name) is not None


@given(
    st.text(alphabet=st.characters(blacklist_characters="/\x00"), min_size=1, max_size=20),
    st.sampled_from([".json", ".yml", ".yaml", ".JSON"]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=8, max_size=8),
)
def test_no_temp_name_matches_the_file_sd_pattern(stem: str, suffix: str, random_part: str) -> None:
    path = Path("/d") / (stem + suffix)
    temp_name = temp_prefix(path) + random_part + TEMP_SUFFIX
    assert FILE_SD_NAME.match(temp_name) is None


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    stale = tmp_path / f"{temp_prefix(path)}abc{TEMP_SUFFIX}"
    stale.write_text("partial")
    other = tmp_path / "other.json"
    other.write_text("[]")
    assert remove_stale_temp_files(path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json"]


# --- concurrent readers never see a missing or partial file ---------------------------

READER = r"""
import sys, pathlib
path, stop = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
valid = {pathlib.Path(p).read_bytes() for p in sys.argv[3:]}
reads = bad = 0
while not stop.exists():
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        bad += 1
        continue
    reads += 1
    if data not in valid:
        bad += 1
print(reads, bad)
"""

WRITES = 2000


def test_readers_never_see_a_missing_or_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    # Two contents of very different sizes, so a partial read cannot look valid.
    small = b'[{"labels":{},"targets":["127.0.0.1:1"]}]'
    large = b"[" + b",".join([small[1:-1]] * 3000) + b"]"
    (tmp_path / "small").write_bytes(small)
    (tmp_path / "large").write_bytes(large)
    atomic_write(path, small)
    stop = tmp_path / "stop"

    thread_result = {"reads": 0, "bad": 0}

    def thread_reader() -> None:
        while not stop.exists():
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                thread_result["bad"] += 1
                continue
            thread_result["reads"] += 1
            if data not in (small, large):
                thread_result["bad"] += 1
            time.sleep(0.0005)  # leave the GIL to the writer; the other reader is a process

    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            READER,
            str(path),
            str(stop),
            str(tmp_path / "small"),
            str(tmp_path / "large"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    thread = threading.Thread(target=thread_reader)
    thread.start()
    try:
        for n in range(WRITES):
            atomic_write(path, large if n % 2 == 0 else small)
    finally:
        stop.touch()
        thread.join()
        out, _ = process.communicate(timeout=30)
    reads, bad = map(int, out.split())
    assert bad == 0
    assert thread_result["bad"] == 0
    assert reads > 0
    assert thread_result["reads"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.json", "large", "small", "stop"]
