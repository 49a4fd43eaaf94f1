"""A real Prometheus pulls sdbridge's targets with http_sd_configs, plain and over TLS + auth.

Targets are 127.0.0.x addresses on ports nothing listens on; the scrape interval is
long, and the tests read only Prometheus's /api/v1/targets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.servers.common import wait_until
from tests.servers.prometheus import Prometheus
from tests.servers.sdbridge import Sdbridge
from tests.servers.tls import self_signed, write_web_config

pytestmark = pytest.mark.prometheus

FIRST = [
    {"targets": ["127.0.0.1:19100"], "labels": {"env": "prod", "__meta_test_zone": "a"}},
    {"targets": ["127.0.0.2:19100", "127.0.0.3:19100"], "labels": {"env": "dev"}},
]
SECOND = [
    {"targets": ["127.0.0.2:19100"], "labels": {"env": "dev"}},
    {"targets": ["127.0.0.4:19100"], "labels": {"env": "prod", "team": "db"}},
]


def expected(groups: list[dict[str, Any]]) -> list[dict[str, str]]:
    """What Prometheus should discover: one label set per target, address included."""
    found = [
        {"__address__": target, **group["labels"]}
        for group in groups
        for target in group["targets"]
    ]
    return sorted(found, key=lambda labels: sorted(labels.items()))


def sdbridge_config(workdir: Path) -> dict[str, Any]:
    return {
        "global": {"publish_delay": {"min": "10ms", "max": "100ms"}},
        "jobs": [
            {
                "name": "web",
                "exec_sd_configs": [
                    {"command": ["cat", str(workdir / "targets.json")], "refresh_interval": "1s"}
                ],
            }
        ],
    }


def prom_dir(workdir: Path) -> Path:
    path = workdir / "prometheus"
    path.mkdir(exist_ok=True)
    return path


def http_sd(url: str, **extra: Any) -> dict[str, Any]:
    return {"url": url, "refresh_interval": "1s", **extra}


def prometheus_config(scrape_configs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1h", "evaluation_interval": "1h"},
        "scrape_configs": scrape_configs,
    }


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "targets.json").write_text(json.dumps(FIRST))
    return tmp_path


def test_prometheus_sees_exactly_sdbridges_targets_and_changes(workdir: Path) -> None:
    bridge = Sdbridge(workdir, sdbridge_config(workdir))
    prometheus = None
    try:
        prometheus = Prometheus(
            prom_dir(workdir),
            prometheus_config(
                [
                    {"job_name": "all", "http_sd_configs": [http_sd(f"{bridge.url}/sd/web")]},
                    {
                        "job_name": "shard0",
                        "http_sd_configs": [http_sd(f"{bridge.url}/sd/web?shard=0&shards=2")],
                    },
                    {
                        "job_name": "shard1",
                        "http_sd_configs": [http_sd(f"{bridge.url}/sd/web?shard=1&shards=2")],
                    },
                ]
            ),
        )
        wait_until(
            lambda: prometheus.discovered_labels("all") == expected(FIRST),
            timeout=60,
            what="Prometheus sees the first targets",
        )
        # What Prometheus sees is exactly what /sd/web serves.
        served = [{"__address__": g["targets"][0], **g["labels"]} for g in bridge.targets("web")]
        assert sorted(served, key=lambda labels: sorted(labels.items())) == expected(FIRST)
        wait_until(
            lambda: (
                sorted(
                    prometheus.discovered_labels("shard0") + prometheus.discovered_labels("shard1"),
                    key=lambda labels: sorted(labels.items()),
                )
                == expected(FIRST)
            ),
            timeout=60,
            what="the two shards add up to the whole job",
        )

        (workdir / "targets.json").write_text(json.dumps(SECOND))
        wait_until(
            lambda: prometheus.discovered_labels("all") == expected(SECOND),
            timeout=60,
            what="Prometheus sees the change",
        )
        # sdbridge knows who polls: Prometheus names itself and its refresh interval.
        status, body = bridge.request("/api/v1/jobs/web")
        assert status == 200
        clients = json.loads(body)["data"]["http_sd_clients"]
        polling = [c for c in clients if c["user_agent"].startswith("Prometheus/")]
        assert polling  # the test's own reads (Python-urllib) are listed too
        assert {c["address"] for c in polling} == {"127.0.0.1"}
        assert {c["refresh_interval_seconds"] for c in polling} == {1.0}
        assert {c["last_status"] for c in polling} == {200}
    finally:
        if prometheus is not None:
            prometheus.stop()
        bridge.stop()


def test_prometheus_through_tls_and_basic_auth(workdir: Path) -> None:
    tls = self_signed(workdir)
    web_config = write_web_config(
        workdir / "web.yml", tls=tls, users={"prometheus": "correct horse"}
    )
    bridge = Sdbridge(
        workdir,
        sdbridge_config(workdir),
        web_config=web_config,
        ca_file=tls.cert,
        auth=("prometheus", "correct horse"),
    )
    prometheus = None
    try:
        assert bridge.url.startswith("https://")
        tls_config = {"ca_file": str(tls.cert)}
        prometheus = Prometheus(
            prom_dir(workdir),
            prometheus_config(
                [
                    {
                        "job_name": "good",
                        "http_sd_configs": [
                            http_sd(
                                f"{bridge.url}/sd/web",
                                tls_config=tls_config,
                                basic_auth={"username": "prometheus", "password": "correct horse"},
                            )
                        ],
                    },
                    {
                        "job_name": "wrong-password",
                        "http_sd_configs": [
                            http_sd(
                                f"{bridge.url}/sd/web",
                                tls_config=tls_config,
                                basic_auth={"username": "prometheus", "password": "wrong"},
                            )
                        ],
                    },
                ]
            ),
        )
        wait_until(
            lambda: prometheus.discovered_labels("good") == expected(FIRST),
            timeout=60,
            what="Prometheus sees the targets through TLS and basic auth",
        )
        (workdir / "targets.json").write_text(json.dumps(SECOND))
        wait_until(
            lambda: prometheus.discovered_labels("good") == expected(SECOND),
            timeout=60,
            what="Prometheus sees the change through TLS and basic auth",
        )

        # The wrong password gets 401s: Prometheus discovers nothing for that job.
        def refused() -> bool:
            status, body = bridge.request("/metrics")
            assert status == 200
            for line in body.decode().splitlines():
                if line.startswith("sdbridge_web_auth_failures_total "):
                    return float(line.split()[1]) >= 2
            return False

        wait_until(refused, timeout=60, what="sdbridge refuses the wrong password")
        assert prometheus.discovered_labels("wrong-password") == []
        assert "401" in prometheus.process.log_text()
    finally:
        if prometheus is not None:
            prometheus.stop()
        bridge.stop()
