"""A real vmagent (Debian's victoria-metrics 1.79) as an independent consul_sd oracle.

vmagent runs on 127.0.0.1 on a free port and reports every target's discovered labels
in ``/api/v1/targets`` (``-promscrape.dropOriginalLabels=false``). Its targets never
get scraped in practice: the scrape interval is a day, and relabeling points
``__address__`` at ``127.0.0.1:1`` (nothing listens there), keeping the discovered
address in ``instance`` so targets stay distinct. vmagent keeps the discovered labels
it saw first for as long as a target's relabeled labels stay the same, so the meta labels
are mapped into the target labels too. Remote write goes to a closed port.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from .common import ManagedProcess, free_port, http_ok, require_binary, wait_until

# Keeps targets distinct (instance) but makes a scrape, should one happen, go nowhere.
# vmagent keeps a target's first discovered labels while its relabeled labels stay the
# same, so every meta label is copied into the target's labels: any change is then seen.
NO_SCRAPE_RELABEL = [
    {"action": "labelmap", "regex": "__meta_(.+)", "replacement": "m_$1"},
    {"source_labels": ["__address__"], "target_label": "instance"},
    {"target_label": "__address__", "replacement": "127.0.0.1:1"},
]


_GO_ESCAPE = re.compile(r"\\(U[0-9a-fA-F]{8}|x[0-9a-fA-F]{2}|.)", re.DOTALL)
_GO_ONLY = {"a": "\\u0007", "v": "\\u000b", "'": "'"}


def go_quoted_to_json(text: str) -> str:
    """Make vmagent 1.79's label JSON valid: it writes labels with Go's ``%q``, whose
    ``\\UXXXXXXXX``, ``\\xXX``, ``\\a`` and ``\\v`` escapes are not JSON."""

    def fix(match: re.Match[str]) -> str:
        escape = match[1]
        if escape[0] == "U":
            return json.dumps(chr(int(escape[1:], 16)))[1:-1]
        if escape[0] == "x" and len(escape) == 3:
            return f"\\u00{escape[1:]}"
        return _GO_ONLY.get(escape, match[0])

    return _GO_ESCAPE.sub(fix, text)


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
            body = json.loads(go_quoted_to_json(response.read().decode("utf-8")))
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
