"""Last-known-good persistence: the format, corruption handling, and restore through a Job."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from sdbridge.config import GlobalConfig, parse_config
from sdbridge.daemon import Daemon
from sdbridge.job import Job
from sdbridge.outputs.file import TEMP_SUFFIX, temp_prefix
from sdbridge.render import Snapshot, make_entry, sort_entries
from sdbridge.state import (
    CORRUPT_SUFFIX,
    FORMAT_VERSION,
    StateError,
    StateOutput,
    decode_state,
    encode_state,
    state_path,
)

from .fakes import FakeDiscoverer, group, job_config, running, until


def snap(job: str, n: int, **labels: str) -> Snapshot:
    entries = sort_entries(
        make_entry({"__address__": f"127.0.0.1:{1000 + i}", "i": str(i), **labels})
        for i in range(n)
    )
    return Snapshot.build(job, entries, groups=n)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- format ------------------------------------------------------------------------------


def test_roundtrip_keeps_the_exact_bytes_and_marks_stale() -> None:
    original = snap("web", 5, env="prod", uni="héllo")
    restored = decode_state(encode_state(original), job="web", origin="t")
    assert restored.body == original.body
    assert restored.etag == original.etag
    assert restored.stale
    assert restored.created == original.created
    assert restored.target_count == 5


def test_empty_snapshot_roundtrips() -> None:
    restored = decode_state(encode_state(snap("e", 0)), job="e", origin="t")
    assert restored.body == b"[]"


def _with_header(body: bytes, **changes: object) -> bytes:
    header: dict[str, object] = {
        "format": FORMAT_VERSION,
        "job": "web",
        "created": 1.0,
        "targets": 1,
        "groups": 1,
        "length": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    header.update(changes)
    return orjson.dumps(header) + b"\n" + body


GOOD_BODY = b'[{"labels":{"a":"b"},"targets":["127.0.0.1:1"]}]'

CORRUPT = [
    ("empty file", b"", "no header line"),
    ("header only", b'{"format":1}', "no header line"),
    ("garbage header", b"\x00\xff\n[]", "unreadable header"),
    ("header not an object", b"[1]\n[]", "not a JSON object"),
    ("future format", _with_header(GOOD_BODY, format=2), "unknown format 2"),
    ("other job", _with_header(GOOD_BODY, job="db"), "holds job 'db'"),
    ("truncated body", _with_header(GOOD_BODY)[:-5], "truncated"),
    ("flipped byte", _with_header(GOOD_BODY).replace(b'"b"', b'"c"'), "checksum mismatch"),
    ("bad created", _with_header(GOOD_BODY, created="yesterday"), "bad 'created'"),
    ("count mismatch", _with_header(GOOD_BODY, targets=7), "says 7"),
    (
        "valid checksum, invalid target",
        _with_header(b'[{"labels":{},"targets":["no-port"]}]'),
        "is not host:port",
    ),
    (
        "valid checksum, invalid label",
        _with_header(b'[{"labels":{"1x":"v"},"targets":["127.0.0.1:1"]}]'),
        "invalid label name",
    ),
    ("valid checksum, not JSON", _with_header(b"[{oops"), "not JSON"),
]


@pytest.mark.parametrize(("title", "data", "fragment"), CORRUPT, ids=[c[0] for c in CORRUPT])
def test_corrupt_state_is_refused_with_a_reason(title: str, data: bytes, fragment: str) -> None:
    with pytest.raises(StateError) as info:
        decode_state(data, job="web", origin="/data/state/web.state")
    assert fragment in str(info.value)
    assert "/data/state/web.state" in str(info.value)


STATE_FUZZ_EXAMPLES = 500


@settings(max_examples=STATE_FUZZ_EXAMPLES)
@given(data=st.binary(max_size=300))
def test_fuzz_arbitrary_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(StateError):
        decode_state(data, job="web", origin="fuzz")


@settings(max_examples=STATE_FUZZ_EXAMPLES)
@given(position=st.integers(min_value=0), value=st.integers(0, 255), cut=st.booleans())
def test_fuzz_damaged_state_is_refused_or_unchanged(position: int, value: int, cut: bool) -> None:
    original = snap("web", 3, env="x")
    data = bytearray(encode_state(original))
    position %= len(data)
    if cut:
        del data[position:]
    else:
        data[position] = value
    try:
        restored = decode_state(bytes(data), job="web", origin="fuzz")
    except StateError:
        return
    # Only damage the checksum cannot see (e.g. a digit of "created") may pass.
    assert restored.body == original.body


# --- the StateOutput -----------------------------------------------------------------------


async def test_load_missing_is_none(tmp_path: Path) -> None:
    assert await StateOutput("none", tmp_path / "state").load() is None


async def test_corrupt_file_is_reported_moved_aside_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = state_path(tmp_path, "bad")
    path.write_bytes(_with_header(GOOD_BODY, job="bad")[:-3])
    before = metric("sdbridge_state_load_failures_total", job="bad")
    with caplog.at_level(logging.ERROR, logger="sdbridge.state"):
        assert await StateOutput("bad", tmp_path).load() is None
    assert metric("sdbridge_state_load_failures_total", job="bad") == before + 1
    assert "cannot be trusted" in caplog.text
    assert str(path) in caplog.text
    assert not path.exists()
    assert path.with_name(path.name + CORRUPT_SUFFIX).exists()


async def test_writes_atomically_only_fresh_and_changed_snapshots(tmp_path: Path) -> None:
    state_dir = tmp_path / "deep" / "state"
    output = StateOutput("w", state_dir)
    leftover = state_dir / f"{temp_prefix(output.path)}123{TEMP_SUFFIX}"
    state_dir.mkdir(parents=True)
    leftover.write_bytes(b"half")
    task = asyncio.create_task(output.run())
    try:
        first = snap("w", 2)
        output.publish(first)
        await until(lambda: output.path.exists())
        assert not leftover.exists(), "a temp file left by a crash is removed at start"
        assert decode_state(output.path.read_bytes(), job="w", origin="t").body == first.body
        inode = output.path.stat().st_ino
        output.publish(snap("w", 2))  # same body: not rewritten
        output.publish(Snapshot.build("w", list(snap("w", 9).entries), stale=True))  # stale: never
        await asyncio.sleep(0.1)
        assert output.path.stat().st_ino == inode
        output.publish(snap("w", 3))
        await until(lambda: output.path.stat().st_ino != inode)
        assert decode_state(output.path.read_bytes(), job="w", origin="t").target_count == 3
        assert [p.name for p in state_dir.iterdir()] == ["w.state"]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- restore through a Job -------------------------------------------------------------


def state_job(tmp_path: Path, name: str, **extra: object) -> tuple[Job, FakeDiscoverer]:
    job = Job(
        job_config(name, 1, **extra),
        GlobalConfig(data_dir=tmp_path),
        state_dir=tmp_path / "state",
    )
    fake = FakeDiscoverer()
    job.runners[0].discoverer = fake
    return job, fake


async def test_restart_serves_last_known_good_as_stale_until_first_sync(tmp_path: Path) -> None:
    name = "lkg"
    first, fake = state_job(tmp_path, name)
    async with running(first):
        await fake.send([group("g", "127.0.0.1:1", "127.0.0.1:2", env="p")])
        await until(lambda: state_path(tmp_path / "state", name).exists())
        published = first.snapshot
    assert published is not None

    second, fake = state_job(tmp_path, name)
    async with running(second):
        await until(lambda: second.snapshot is not None, what="the restored snapshot")
        restored = second.snapshot
        assert restored is not None
        assert restored.stale
        assert restored.body == published.body
        assert metric("sdbridge_job_stale", job=name) == 1
        status = second.status()
        assert status.stale is True
        assert status.stale_since == pytest.approx(published.created)
        assert not status.synced
        # The first complete sync replaces it, even with the same targets.
        await fake.send([group("g", "127.0.0.1:1", "127.0.0.1:2", env="p")])
        await until(lambda: second.snapshot is not None and not second.snapshot.stale)
        assert second.snapshot.body == published.body
        assert metric("sdbridge_job_stale", job=name) == 0
        assert second.status().stale is False


async def test_restored_snapshot_is_written_to_a_missing_file_and_not_rewritten(
    tmp_path: Path,
) -> None:
    name = "lkg-file"
    out = tmp_path / "out" / "targets.json"
    out.parent.mkdir()
    first, fake = state_job(tmp_path, name, output={"file": str(out)})
    async with running(first):
        await fake.send([group("g", "127.0.0.1:1")])
        await until(lambda: out.exists() and state_path(tmp_path / "state", name).exists())
    content = out.read_bytes()
    inode = out.stat().st_ino

    second, _ = state_job(tmp_path, name, output={"file": str(out)})
    async with running(second):
        await until(lambda: second.snapshot is not None)
        await asyncio.sleep(0.1)
        assert out.stat().st_ino == inode, "the same bytes are not written again"

    out.unlink()
    third, _ = state_job(tmp_path, name, output={"file": str(out)})
    async with running(third):
        await until(lambda: out.exists(), what="the restored snapshot to be written")
        assert out.read_bytes() == content


async def test_corrupt_state_is_not_served(tmp_path: Path) -> None:
    name = "lkg-corrupt"
    (tmp_path / "state").mkdir()
    state_path(tmp_path / "state", name).write_bytes(b"not a state file")
    job, fake = state_job(tmp_path, name)
    async with running(job):
        await asyncio.sleep(0.1)
        assert job.snapshot is None, "nothing is served until the first sync"
        await fake.send([group("g", "127.0.0.1:1")])
        await until(lambda: job.snapshot is not None)


async def test_daemon_jobs_keep_state_in_data_dir(tmp_path: Path) -> None:
    config = parse_config(
        {
            "global": {"data_dir": str(tmp_path / "data")},
            "jobs": [{"name": "d", "exec_sd_configs": [{"command": ["echo", "[]"]}]}],
        }
    )
    daemon = Daemon(config)
    daemon.start()
    try:
        job = daemon.jobs["d"]
        assert job.state_output is not None
        assert job.state_output.path == tmp_path / "data" / "state" / "d.state"
        await until(lambda: job.state_output is not None and job.state_output.path.exists())
    finally:
        await daemon.stop()
