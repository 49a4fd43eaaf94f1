"""``sdbridge run`` reloads on SIGHUP; a broken YAML is refused and the old config keeps serving."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from tests.servers.common import wait_until
from tests.servers.sdbridge import Sdbridge


def config(workdir: Path, jobs: list[str]) -> dict[str, Any]:
    return {
        "global": {"publish_delay": {"min": "10ms", "max": "100ms"}},
        "jobs": [
            {
                "name": job,
                "exec_sd_configs": [
                    {"command": ["cat", str(workdir / f"{job}.json")], "refresh_interval": "1s"}
                ],
            }
            for job in jobs
        ],
    }


def metric(bridge: Sdbridge, name: str) -> float | None:
    status, body = bridge.request("/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


def test_sighup_reload_and_broken_yaml(tmp_path: Path) -> None:
    for job, port in (("a", 9100), ("b", 9200)):
        (tmp_path / f"{job}.json").write_text(
            json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": {"job_file": job}}])
        )
    bridge = Sdbridge(tmp_path, config(tmp_path, ["a"]))
    try:
        served = bridge.request("/sd/a")
        assert served[0] == 200
        assert bridge.request("/sd/b")[0] == 404

        bridge.config_path.write_text("jobs:\n  - name: a\n    exec_sd_configs: [\n")
        bridge.process.signal(signal.SIGHUP)
        wait_until(
            lambda: metric(bridge, "sdbridge_config_last_reload_successful") == 0,
            what="the failed reload in the metrics",
        )
        assert "config reload failed" in bridge.process.log_text()
        assert "invalid YAML" in bridge.process.log_text()
        assert bridge.request("/sd/a") == served
        assert b"invalid YAML" in bridge.request("/")[1]
        assert bridge.process.alive()

        bridge.write_config(config(tmp_path, ["a", "b"]))
        bridge.process.signal(signal.SIGHUP)
        wait_until(lambda: bridge.request("/sd/b")[0] == 200, what="job b after SIGHUP")
        assert metric(bridge, "sdbridge_config_last_reload_successful") == 1
        assert bridge.request("/sd/a") == served
    finally:
        bridge.stop()
