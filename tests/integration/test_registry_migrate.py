"""``sdbridge registry export`` / ``import`` between SQLite and etcd, expiry kept."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from sdbridge.cli import main
from sdbridge.registry.store import Store, db_path
from tests.servers.etcd import EtcdServer, etcd  # noqa: F401 - fixture

pytestmark = pytest.mark.etcd


@dataclass
class Ran:
    returncode: int
    stdout: bytes
    stderr: bytes


def sdbridge(*args: str, stdin: bytes | None = None) -> Ran:
    """``sdbridge registry ...`` in this process (no interpreter start), files for stdio."""
    workdir = Path(tempfile.mkdtemp(prefix="sdbridge-migrate-"))
    argv = list(args)
    if stdin is not None:
        (workdir / "in.jsonl").write_bytes(stdin)
        argv.append(f"--input={workdir / 'in.jsonl'}")
    if "export" in argv:
        argv.append(f"--output={workdir / 'out.jsonl'}")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    out = workdir / "out.jsonl"
    return Ran(code, out.read_bytes() if out.exists() else b"", err.getvalue().encode())


def write_config(path: Path, registry: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {"global": {"data_dir": str(path.parent / "data")}, "registry": registry, "jobs": []}
    path.write_text(yaml.safe_dump(config))
    return path


def export(config: Path) -> list[dict[str, Any]]:
    done = sdbridge("registry", "export", f"--config.file={config}")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def same_but_expiry(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in line.items() if k != "expires_at"} for line in lines]


def test_export_import_sqlite_to_etcd_and_back(
    tmp_path: Path,
    etcd: EtcdServer,  # noqa: F811
) -> None:
    sqlite_a = write_config(tmp_path / "a" / "sdbridge.yml", {})
    prefix = f"/sdbridge-migrate/{uuid.uuid4().hex}/"
    on_etcd = write_config(
        tmp_path / "b" / "sdbridge.yml",
        {"backend": "etcd", "etcd": {"endpoints": [etcd.url], "prefix": prefix}},
    )
    sqlite_c = write_config(tmp_path / "c" / "sdbridge.yml", {})

    async def fill() -> None:
        store = await Store.open(db_path(tmp_path / "a" / "data"))
        await store.put("api", "a1", "127.0.0.2:9100", {"zone": "z1"}, 600)
        await store.put("api", "a2", "127.0.0.3:9100", {}, 90)
        await store.put("db", "d1", "127.0.0.4:5432", {}, 3600)
        await store.close()

    asyncio.run(fill())

    first = export(sqlite_a)
    assert [(i["service"], i["instance"]) for i in first] == [
        ("api", "a1"),
        ("api", "a2"),
        ("db", "d1"),
    ]
    expired = {**first[0], "instance": "gone", "expires_at": time.time() - 5}
    dump = b"".join(json.dumps(i).encode() + b"\n" for i in [*first, expired])
    done = sdbridge("registry", "import", f"--config.file={on_etcd}", stdin=dump)
    assert done.returncode == 0, done.stderr
    assert b"imported 3 instance(s) into etcd, skipped 1 already expired" in done.stderr

    second = export(on_etcd)
    assert same_but_expiry(second) == same_but_expiry(first)
    for before, after in zip(first, second, strict=True):
        # The rest of the ttl is kept: etcd counts whole seconds (rounded up on import,
        # down when asked), so at most a couple of seconds apart.
        assert abs(after["expires_at"] - before["expires_at"]) <= 2.5, (before, after)

    done = sdbridge(
        "registry",
        "import",
        f"--config.file={sqlite_c}",
        stdin=b"".join(json.dumps(i).encode() + b"\n" for i in second),
    )
    assert done.returncode == 0, done.stderr
    third = export(sqlite_c)
    assert third == second


def test_a_bad_line_imports_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path / "sdbridge.yml", {})
    good = {
        "service": "api",
        "instance": "a1",
        "address": "127.0.0.2:9100",
        "labels": {},
        "ttl": 30,
        "expires_at": time.time() + 30,
        "registered_at": time.time(),
    }
    bad = {**good, "instance": "a2", "address": "no port"}
    dump = (json.dumps(good) + "\n" + json.dumps(bad) + "\n").encode()
    done = sdbridge("registry", "import", f"--config.file={config}", stdin=dump)
    assert done.returncode == 1
    assert b"nothing imported: " in done.stderr
    assert b"in.jsonl line 2: invalid address" in done.stderr
    assert export(config) == []
