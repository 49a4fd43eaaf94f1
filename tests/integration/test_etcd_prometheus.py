"""The scrape config of docs/mechanisms/etcd.md, checked by Prometheus's own promtool.

A job follows Kratos instances in a real etcd; promtool reads the job's file through
file_sd_configs with the documented relabeling and says what Prometheus would scrape.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_etcd import running_job, unique
from tests.servers.etcd import EtcdServer, etcd, kratos_instance  # noqa: F401 - fixture
from tests.servers.prometheus import promtool_service_discovery

pytestmark = [pytest.mark.etcd, pytest.mark.prometheus]

# As in docs/mechanisms/etcd.md ("Prometheus scrape config").
RELABEL = [
    {"source_labels": ["__meta_etcd_endpoint_scheme"], "regex": "https?", "action": "keep"},
    {
        "source_labels": ["__meta_etcd_endpoint_scheme"],
        "regex": "(https?)",
        "target_label": "__scheme__",
    },
    {"source_labels": ["__meta_etcd_service"], "target_label": "service"},
    {"source_labels": ["__meta_etcd_version"], "target_label": "version"},
    {"action": "labelmap", "regex": "__meta_etcd_metadata_(.+)"},
]


async def test_documented_kratos_scrape_config(tmp_path: Path, etcd: EtcdServer) -> None:  # noqa: F811
    namespace = f"/{unique()}/microservices"
    etcd.put(
        *kratos_instance(
            "helloworld",
            "a",
            ["grpc://127.0.0.1:9000", "http://127.0.0.1:8000"],
            version="v1.2.0",
            metadata={"region": "eu"},
            namespace=namespace,
        )
    )
    etcd.put(
        *kratos_instance(
            "helloworld",
            "b",
            ["grpcs://127.0.0.2:9443", "https://127.0.0.2:8443"],
            namespace=namespace,
        )
    )
    async with running_job(
        tmp_path, etcd, prefix=f"{namespace}/helloworld/", layout="kratos"
    ) as job:
        await job.wait(lambda t: len(t) == 4, "four endpoints")
    config = {
        "scrape_configs": [
            {
                "job_name": "helloworld",
                "file_sd_configs": [{"files": [str(job.path)]}],
                "relabel_configs": RELABEL,
            }
        ]
    }
    results = promtool_service_discovery(config, "helloworld", tmp_path, timeout=3)
    kept = sorted(
        (r["labels"] for r in results if r["labels"]), key=lambda labels: labels["instance"]
    )
    assert [(k["instance"], k["__scheme__"]) for k in kept] == [
        ("127.0.0.1:8000", "http"),
        ("127.0.0.2:8443", "https"),
    ]
    assert kept[0]["service"] == "helloworld"
    assert kept[0]["version"] == "v1.2.0"
    assert kept[0]["region"] == "eu"
    assert "version" not in kept[1]  # an empty version is no label
