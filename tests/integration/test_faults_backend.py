"""Backend faults against a real ``sdbridge run``: no target is ever lost by mistake.

The backend is the exec mechanism running a script whose behaviour the test switches:
an outage (non-zero exit), a slow backend (beyond the timeout), malformed data of many
kinds, and a registry glitch that returns an almost empty list (the guard holds). Then
a restart while the backend is down: the last-known-good state is served at once, on
the file and on /sd/<job>, marked stale. The Consul double (tests/doubles) injects HTTP
errors, delays and malformed bodies against the consul mechanism.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..doubles.consul_double import ConsulDouble
from ..servers.common import wait_until
from ..servers.sdbridge import Sdbridge

pytestmark = pytest.mark.slow

JOB = "svc"
FULL = 20

BACKEND = """#!/bin/sh
dir=$(dirname "$0")
case "$(cat "$dir/mode")" in
  ok) cat "$dir/full.json" ;;
  few) cat "$dir/few.json" ;;
  fail) echo "registry unreachable: connection refused" >&2; exit 3 ;;
  slow) sleep 10; cat "$dir/full.json" ;;
  garbage) cat "$dir/garbage" ;;
esac
"""

GARBAGE: list[tuple[bytes, str]] = [
    (b"{not json", "neither JSON nor YAML"),
    (b'{"targets": []}', "expected a list"),
    (b"[null]", "group 0"),
    (b'[{"targets": ["no-port"]}]', "is not host:port"),
    (b'[{"targets": ["127.0.0.1:1"], "labels": {"1x": "v"}}]', "invalid label name"),
    (b'[{"targets": ["127.0.0.1:1"], "labels": {"a": 1}}]', "non-string value"),
    (b'[{"targets": ["127.0.0.1:1"], "extra": 1}]', "unknown field"),
    (b"\xff\xfe\x00garbage", "neither JSON nor YAML"),
]


class Backend:
    """The exec script and its switch."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        self.dir = directory
        self.script = directory / "backend.sh"
        self.script.write_text(BACKEND)
        full = [
            {"targets": [f"127.0.0.1:{9000 + i}"], "labels": {"i": str(i)}} for i in range(FULL)
        ]
        (directory / "full.json").write_text(json.dumps(full))
        (directory / "few.json").write_text(json.dumps(full[:1]))
        self.set("ok")

    def set(self, mode: str, garbage: bytes = b"") -> None:
        (self.dir / "garbage").write_bytes(garbage)
        (self.dir / "mode").write_text(mode)


def config(workdir: Path, backend: Backend) -> dict[str, Any]:
    return {
        "global": {
            "data_dir": str(workdir / "data"),
            "publish_delay": {"min": "10ms", "max": "50ms"},
        },
        "jobs": [
            {
                "name": JOB,
                "exec_sd_configs": [
                    {
                        "command": ["sh", str(backend.script)],
                        "refresh_interval": "100ms",
                        "timeout": "1s",
                    }
                ],
                "guard": {"confirmations": 1000, "hold_for": "1h"},
                "output": {"file": str(workdir / "out" / f"{JOB}.json")},
            }
        ],
    }


def metric(sd: Sdbridge, name: str, **labels: str) -> float | None:
    status, body = sd.request("/metrics")
    assert status == 200
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def failures(sd: Sdbridge, mechanism: str = "exec") -> float:
    return metric(sd, "sdbridge_refresh_failures_total", job=JOB, mechanism=mechanism) or 0.0


@pytest.fixture
def backend(tmp_path: Path) -> Backend:
    return Backend(tmp_path / "backend")


@pytest.fixture
def sdbridge(tmp_path: Path, backend: Backend) -> Iterator[Sdbridge]:
    (tmp_path / "out").mkdir()
    sd = Sdbridge(tmp_path, config(tmp_path, backend))
    try:
        yield sd
    finally:
        sd.stop()


def wait_published(sd: Sdbridge, count: int) -> None:
    wait_until(lambda: len(sd.targets(JOB)) == count, timeout=30, what=f"{count} targets on /sd")


def test_outage_slow_and_malformed_backend_lose_no_targets(
    tmp_path: Path, backend: Backend, sdbridge: Sdbridge
) -> None:
    out = tmp_path / "out" / f"{JOB}.json"
    wait_published(sdbridge, FULL)
    wait_until(out.exists, what="the file output")
    served, written = sdbridge.request(f"/sd/{JOB}")[1], out.read_bytes()

    scenarios: list[tuple[str, bytes, str]] = [
        ("fail", b"", "registry unreachable: connection refused"),
        ("slow", b"", "timed out after 1s"),
    ] + [("garbage", data, fragment) for data, fragment in GARBAGE]
    for mode, data, fragment in scenarios:
        before = failures(sdbridge)
        backend.set(mode, data)
        wait_until(
            lambda before=before: failures(sdbridge) >= before + 2,  # type: ignore[misc]
            timeout=30,
            what=f"{mode} refreshes to fail",
        )
        assert sdbridge.request(f"/sd/{JOB}")[1] == served, f"/sd changed during {mode}"
        assert out.read_bytes() == written, f"the file changed during {mode}"
        assert metric(sdbridge, "sdbridge_mechanism_up", job=JOB, mechanism="exec") == 0
        log = sdbridge.process.log_text()
        assert fragment in log, f"{mode}: {fragment!r} not in the log"
        if mode == "garbage":
            assert f"output of sh {backend.script}" in log, "the error names its input"
        backend.set("ok")
        wait_until(
            lambda: metric(sdbridge, "sdbridge_mechanism_up", job=JOB, mechanism="exec") == 1,
            timeout=30,
            what="recovery",
        )
    assert len(sdbridge.targets(JOB)) == FULL


def test_registry_glitch_almost_empty_list_is_held(
    tmp_path: Path, backend: Backend, sdbridge: Sdbridge
) -> None:
    out = tmp_path / "out" / f"{JOB}.json"
    wait_published(sdbridge, FULL)
    wait_until(out.exists)
    written = out.read_bytes()
    backend.set("few")  # 1 of 20: a glitch, not a decommissioning
    wait_until(
        lambda: metric(sdbridge, "sdbridge_guard_holding", job=JOB) == 1,
        timeout=30,
        what="the guard to hold",
    )
    assert (metric(sdbridge, "sdbridge_guard_holds_total", job=JOB) or 0) >= 1
    time.sleep(0.5)  # several more refreshes answer the same
    assert len(sdbridge.targets(JOB)) == FULL
    assert out.read_bytes() == written
    status, body = sdbridge.request(f"/api/v1/jobs/{JOB}")
    assert status == 200
    guard = json.loads(body)["data"].get("guard") or {}
    assert guard.get("holding", True) is True
    assert "holding the published targets" in sdbridge.process.log_text()
    backend.set("ok")
    wait_until(lambda: metric(sdbridge, "sdbridge_guard_holding", job=JOB) == 0, timeout=30)
    assert len(sdbridge.targets(JOB)) == FULL


def test_restart_with_backend_down_serves_last_known_good_at_once(
    tmp_path: Path, backend: Backend
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / f"{JOB}.json"
    state = tmp_path / "data" / "state" / f"{JOB}.state"
    first = Sdbridge(tmp_path, config(tmp_path, backend))
    try:
        wait_published(first, FULL)
        wait_until(lambda: out.exists() and state.exists(), what="file and state")
        served = first.request(f"/sd/{JOB}")[1]
    finally:
        first.stop()
    written, inode = out.read_bytes(), out.stat().st_ino

    backend.set("fail")
    second = Sdbridge(tmp_path, config(tmp_path, backend))  # waits for /-/ready
    try:
        status, body = second.request(f"/sd/{JOB}")
        assert status == 200
        assert body == served, "last-known-good is served at once"
        assert out.read_bytes() == written
        assert out.stat().st_ino == inode, "the same bytes are not rewritten"
        assert metric(second, "sdbridge_job_stale", job=JOB) == 1
        api = json.loads(second.request(f"/api/v1/jobs/{JOB}")[1])["data"]
        assert api["stale"] is True
        wait_until(lambda: failures(second) >= 2, timeout=30, what="refreshes to fail")
        assert second.request(f"/sd/{JOB}")[1] == served
        assert metric(second, "sdbridge_job_stale", job=JOB) == 1
        # The backend returns: fresh data replaces the stale state.
        backend.set("ok")
        wait_until(lambda: metric(second, "sdbridge_job_stale", job=JOB) == 0, timeout=30)
        assert second.request(f"/sd/{JOB}")[1] == served
    finally:
        second.stop()


def test_consul_outage_slow_and_malformed_answers_lose_no_targets(tmp_path: Path) -> None:
    with ConsulDouble() as consul:
        for i in range(5):
            consul.register_node(f"node{i}", f"127.0.0.{i + 1}")
            consul.register_service(f"node{i}", "web", 8080)
        consul.register_node("node9", "127.0.0.9")
        config = {
            "global": {
                "data_dir": str(tmp_path / "data"),
                "publish_delay": {"min": "10ms", "max": "50ms"},
            },
            "jobs": [
                {
                    "name": JOB,
                    "consul_sd_configs": [
                        {"server": consul.address, "services": ["web"], "refresh_interval": "100ms"}
                    ],
                }
            ],
        }
        sd = Sdbridge(tmp_path, config)
        try:
            wait_published(sd, 5)
            served = sd.request(f"/sd/{JOB}")[1]
            faults: list[tuple[str, dict[str, Any]]] = [
                ("status", {"status": 500}),
                ("status", {"status": 429}),
                ("reset", {}),
                ("malformed", {}),
                ("truncated", {}),
                ("delay", {"delay": 3.0}),
            ]
            for kind, options in faults:
                consul.add_fault(kind, "/v1/", **options)
                # Something changes in the registry, so the watch has to ask again.
                consul.register_service("node9", "web", 1)
                time.sleep(1.0)
                assert sd.request(f"/sd/{JOB}")[1] == served, f"/sd changed during {kind}"
                consul.clear_faults()
                consul.deregister_service("node9", "web")
                wait_until(
                    lambda: sd.request(f"/sd/{JOB}")[1] == served, timeout=30, what="recovery"
                )
            assert failures(sd, "consul") >= 1
        finally:
            sd.stop()
