"""A real vmagent (Debian's victoria-metrics 1.79) as an independent consul_sd oracle.

vmagent runs on 127.0.0.1 on a free port and reports every target's discovered labels
in ``/api/v1/targets`` (``-promscrape.dropOriginalLabels=false``). Its targets never
get scraped in practice: the scrape interval is a day, and relabeling points
``__address__`` at ``127.0.0.1:1`` (nothing listens there), keeping the discovered
address in ``instance`` so targets stay distinct. Remote write goes to a closed port.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from .common import ManagedProcess, free_port, http_ok, require_binary, wait_until

# Keeps targets distinct (instance) but makes a scrape, should one happen, go nowhere.
NO_SCRAPE_RELABEL = [
    {"source_labels": ["__address__"], "target_label": "instance"},
    {"target_label": "__address__", "replacement": "127.0.0.1:1"},
]


class VMAgent:
    """A running vmagent; change its scrape config with :meth:`write_config` + :meth:`reload`."""

    def __init__(
        self,
        workdir: Path,
        scrape_configs: list[dict[str, Any]],
        *,
        extra_flags: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "vmagent.yml"
        self.write_config(scrape_configs)
        binary = require_binary("vmagent")
        self.process = ManagedProcess(
            [
                binary,
                f"-promscrape.config={self.config_path}",
                f"-httpListenAddr=127.0.0.1:{self.port}",
                f"-remoteWrite.url=http://127.0.0.1:{free_port()}/api/v1/write",
                f"-remoteWrite.tmpDataPath={workdir / 'remote-write'}",
                "-promscrape.dropOriginalLabels=false",
                "-promscrape.consulSDCheckInterval=1s",
                "-loggerLevel=WARN",
                *(extra_flags or []),
            ],
            log_path=workdir / "vmagent.log",
            cwd=workdir,
        )
        wait_until(
            lambda: self.process.alive() and http_ok(f"{self.url}/health"),
            timeout=60,
            what=f"vmagent ready (log: {self.process.log_path})",
        )

    def write_config(self, scrape_configs: list[dict[str, Any]]) -> None:
        """Write the scrape config; every job gets a day-long interval and the no-scrape relabel."""
        jobs = []
        for job in scrape_configs:
            job = dict(job)
            job.setdefault("scrape_interval", "24h")
            job.setdefault("scrape_timeout", "10s")
            job["relabel_configs"] = [*job.get("relabel_configs", []), *NO_SCRAPE_RELABEL]
            jobs.append(job)
        self.config_path.write_text(yaml.safe_dump({"scrape_configs": jobs}))

    def reload(self) -> None:
        """Ask vmagent to re-read its config."""
        with urllib.request.urlopen(f"{self.url}/-/reload", timeout=10):
            pass

    def targets(self, job: str | None = None) -> list[dict[str, str]]:
        """The discovered labels of every active target (of ``job`` if given)."""
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=30) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        result = []
        for target in body["data"]["activeTargets"]:
            if job is not None and target.get("scrapePool") != job:
                continue
            result.append(dict(target["discoveredLabels"]))
        return result

    def metrics_text(self) -> str:
        """vmagent's own /metrics."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=30) as response:
            return response.read().decode()

    def stop(self) -> None:
        """Stop vmagent and its process group."""
        self.process.stop()
