"""A real Prometheus reads the built-in registry through both file_sd and http_sd.

sdbridge runs its zero-config default. Two loopback instances register over the API;
Prometheus discovers both (plus sdbridge itself) in two scrape pools, one per SD;
one instance is left to expire, and Prometheus sees it go from both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_registry_cli import DefaultBridge
from tests.servers.common import wait_until
from tests.servers.prometheus import Prometheus

pytestmark = pytest.mark.prometheus


def registry_labels(address: str, service: str, instance: str, **labels: str) -> dict[str, str]:
    """The discovered labels Prometheus should show for one registered instance."""
    return {
        "__address__": address,
        "__meta_registry_service": service,
        "__meta_registry_instance": instance,
        **labels,
    }


def ordered(found: list[dict[str, str]]) -> list[dict[str, str]]:
    return sorted(found, key=lambda labels: sorted(labels.items()))


def test_prometheus_sees_registrations_and_expiry_via_file_sd_and_http_sd(tmp_path: Path) -> None:
    bridge = DefaultBridge(tmp_path)
    prometheus = None
    try:
        target_file = tmp_path / "targets" / "registry.json"
        # Prometheus watches the file's directory only if it exists when it starts.
        wait_until(lambda: bridge.file_targets() == [bridge.address], what="the targets file")
        prom_dir = tmp_path / "prometheus"
        prom_dir.mkdir()
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1h", "evaluation_interval": "1h"},
            "scrape_configs": [
                {"job_name": "file", "file_sd_configs": [{"files": [str(target_file)]}]},
                {
                    "job_name": "http",
                    "http_sd_configs": [
                        {"url": f"{bridge.url}/sd/registry", "refresh_interval": "1s"}
                    ],
                },
            ],
        }
        prometheus = Prometheus(prom_dir, config)

        status, _ = bridge.api(
            "PUT", "/node/a", {"address": "127.0.0.2:19100", "labels": {"env": "prod"}, "ttl": "1h"}
        )
        assert status == 201
        status, _ = bridge.api("PUT", "/node/b", {"address": "127.0.0.3:19100", "ttl": "15s"})
        assert status == 201

        own = registry_labels(bridge.address, "sdbridge", bridge.address)
        both = ordered(
            [
                own,
                registry_labels("127.0.0.2:19100", "node", "a", env="prod"),
                registry_labels("127.0.0.3:19100", "node", "b"),
            ]
        )
        for job in ("file", "http"):
            wait_until(
                lambda job=job: prometheus.discovered_labels(job) == both,  # type: ignore[misc]
                timeout=60,
                what=f"Prometheus ({job}_sd) sees both registered instances",
            )

        # node/b gets no heartbeat: its ttl runs out and it disappears everywhere. (The ttl
        # leaves room for Prometheus's discovery manager, which passes updates on every 5s.)
        remaining = ordered([own, registry_labels("127.0.0.2:19100", "node", "a", env="prod")])
        for job in ("file", "http"):
            wait_until(
                lambda job=job: prometheus.discovered_labels(job) == remaining,  # type: ignore[misc]
                timeout=60,
                what=f"Prometheus ({job}_sd) sees the expired instance go",
            )
        status, _ = bridge.api("GET", "/node/b")
        assert status == 404
    finally:
        if prometheus is not None:
            prometheus.stop()
        bridge.stop()
