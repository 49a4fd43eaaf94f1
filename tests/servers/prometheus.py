"""A real Prometheus (Debian's package) and promtool, as test oracles.

Prometheus runs on 127.0.0.1 on a free port with a temporary TSDB directory. Scrape
targets in tests must be 127.0.0.x addresses; most tests never let a scrape happen
(long scrape_interval) and only read ``/api/v1/targets``.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from .common import ManagedProcess, free_port, http_ok, require_binary, wait_until


class Prometheus:
    """A running Prometheus; write its config with :meth:`write_config` then :meth:`reload`."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "prometheus.yml"
        self.write_config(config)
        binary = require_binary("prometheus")
        self.process = ManagedProcess(
            [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--log.level=debug",
            ],
            log_path=workdir / "prometheus.log",
            cwd=workdir,
        )
        wait_until(lambda: http_ok(f"{self.url}/-/ready"), timeout=60, what="prometheus ready")

    def write_config(self, config: dict[str, Any]) -> None:
        """Write the Prometheus config file."""
        self.config_path.write_text(yaml.safe_dump(config))

    def reload(self) -> None:
        """Ask Prometheus to re-read its config."""
        request = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def api(self, path: str) -> Any:
        """GET an API path and return its ``data``."""
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def active_targets(self, job: str | None = None) -> list[dict[str, Any]]:
        """Active targets from ``/api/v1/targets``, optionally of one scrape job."""
        targets = self.api("/api/v1/targets?state=active")["activeTargets"]
        return [t for t in targets if job is None or t["scrapePool"] == job]

    def discovered_labels(self, job: str) -> list[dict[str, str]]:
        """Each active target's discovered labels, minus what Prometheus adds itself."""
        added = {
            "__meta_filepath",
            "__meta_url",
            "__scheme__",
            "__metrics_path__",
            "__scrape_interval__",
            "__scrape_timeout__",
            "job",
        }
        found = [
            {k: v for k, v in t["discoveredLabels"].items() if k not in added}
            for t in self.active_targets(job)
        ]
        return sorted(found, key=lambda labels: sorted(labels.items()))

    def stop(self) -> None:
        """Stop Prometheus and wait for it."""
        self.process.stop()


def promtool_service_discovery(
    config: dict[str, Any], job: str, workdir: Path, *, timeout: float = 30
) -> list[dict[str, Any]]:
    """Run ``promtool check service-discovery`` and return its results.

    Each result has ``discoveredLabels``, ``labels`` (after relabeling, empty when the
    target was dropped) and ``error``.
    """
    binary = require_binary("promtool")
    config_path = workdir / f"promtool-{job}.yml"
    config_path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [binary, "check", "service-discovery", str(config_path), job, f"--timeout={timeout}s"],
        capture_output=True,
        text=True,
        timeout=timeout + 30,
        cwd=workdir,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"promtool failed ({result.returncode}): {result.stderr}")
    return list(json.loads(result.stdout))
