"""Parity with Prometheus's own serverset_sd_configs, on the same real ZooKeeper.

``promtool check service-discovery`` runs Prometheus's serverset discovery against the
znodes; sdbridge's ``serverset`` layout must produce the same targets with the same
``__meta_serverset_*`` labels.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from sdbridge.config import parse_config
from sdbridge.job import Job
from tests.servers import zookeeper as zookeeper_servers
from tests.servers.prometheus import promtool_service_discovery
from tests.servers.zookeeper import ZooKeeperServer

pytestmark = [pytest.mark.zookeeper, pytest.mark.prometheus]

zookeeper = zookeeper_servers.zookeeper  # the session-scoped server fixture


def member(host: str, port: int, **fields: object) -> bytes:
    """A serverset member (see test_zookeeper.serverset_member for the format's source)."""
    return json.dumps({"serviceEndpoint": {"host": host, "port": port}, **fields}).encode()


async def test_serverset_labels_match_prometheus(
    tmp_path: Path, zookeeper: ZooKeeperServer
) -> None:
    base = f"/parity-{uuid.uuid4().hex[:8]}"
    path = f"{base}/prod/web"
    zk = KazooClient(hosts=zookeeper.hosts)
    zk.start(timeout=30)
    try:
        zk.ensure_path(path)
        zk.create(
            f"{path}/member_0000000001",
            member(
                "127.0.0.1",
                8080,
                additionalEndpoints={
                    "admin-http": {"host": "127.0.0.1", "port": 9990},
                    "grpc": {"host": "127.0.0.2", "port": 50051},
                },
                status="ALIVE",
                shard=7,
            ),
        )
        zk.create(f"{path}/member_0000000002", member("127.0.0.3", 80))  # no status, shard
        zk.create(f"{path}/member_0000000003", member("::1", 81, status="STARTING"))
        zk.create(f"{path}/nested/member_0000000004", member("127.0.0.4", 82), makepath=True)
        zk.create(f"{path}/broken", b"{not json")  # Prometheus drops it; so does sdbridge

        prometheus = promtool_service_discovery(
            {
                "scrape_configs": [
                    {
                        "job_name": "serverset",
                        "serverset_sd_configs": [
                            {"servers": [zookeeper.hosts], "paths": [path], "timeout": "10s"}
                        ],
                    }
                ]
            },
            "serverset",
            tmp_path,
            timeout=4,
        )
        expected = sorted(
            (
                {
                    k: v
                    for k, v in result["discoveredLabels"].items()
                    if k.startswith("__meta_serverset_") or k == "__address__"
                }
                for result in prometheus
            ),
            key=lambda labels: labels["__address__"],
        )
        assert len(expected) == 4

        config = parse_config(
            {
                "global": {"data_dir": str(tmp_path / "data")},
                "jobs": [
                    {
                        "name": "serverset",
                        "zookeeper_sd_configs": [
                            {"servers": [zookeeper.hosts], "paths": [path], "layout": "serverset"}
                        ],
                    }
                ],
            }
        )
        snapshot = await Job(config.jobs[0], config.global_).sync_once()
        ours = sorted(
            (
                {**group["labels"], "__address__": target}
                for group in json.loads(snapshot.body)
                for target in group["targets"]
            ),
            key=lambda labels: labels["__address__"],
        )
        # sdbridge leaves out empty label values; Prometheus treats them as absent too.
        expected = [{k: v for k, v in labels.items() if v != ""} for labels in expected]
        assert ours == expected
    finally:
        zk.delete(base, recursive=True)
        zk.stop()
        zk.close()
