"""examples/eureka: ``sdbridge check`` passes, and one pass against the Eureka double
turns Spring Cloud metadata into the scrape port and ``__metrics_path__``, which
Prometheus itself (promtool, with the example's prometheus.yml) then scrapes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.doubles.eureka_double import instance, running
from tests.servers.prometheus import promtool_service_discovery

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "eureka"
SDBRIDGE = str(Path(sys.executable).with_name("sdbridge"))


def sdbridge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SDBRIDGE, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_example_config_checks() -> None:
    result = sdbridge("check", str(EXAMPLE / "sdbridge.yml"))
    assert result.returncode == 0, result.stderr
    assert "OK (1 job(s), 1 mechanism(s))" in result.stdout


@pytest.mark.prometheus
def test_the_example_relabels_spring_cloud_metadata(tmp_path: Path) -> None:
    config = yaml.safe_load((EXAMPLE / "sdbridge.yml").read_text())
    config["global"]["data_dir"] = str(tmp_path / "data")
    [job] = config["jobs"]
    job["output"]["file"] = str(tmp_path / "spring.json")
    with running() as eureka:
        job["eureka_sd_configs"][0]["server"] = eureka.url
        spring = {"prometheus.path": "/actuator/prometheus", "zone": "z1"}
        eureka.register(
            instance("orders", "127.0.0.1", 8080, metadata={**spring, "management.port": "9081"})
        )
        eureka.register(instance("billing", "127.0.0.2", 8080, metadata=spring))
        eureka.register(instance("orders", "127.0.0.3", 8080, status="DOWN", metadata=spring))
        eureka.register(instance("legacy", "127.0.0.4", 8080))  # no prometheus.path
        (tmp_path / "sdbridge.yml").write_text(yaml.safe_dump(config))
        result = sdbridge("once", "--config.file", str(tmp_path / "sdbridge.yml"))
    assert result.returncode == 0, result.stderr
    groups = json.loads((tmp_path / "spring.json").read_text())
    for group in groups:  # the meta labels stay for Prometheus's own relabeling
        group["labels"] = {k: v for k, v in group["labels"].items() if not k.startswith("__meta_")}
    assert groups == [
        {
            "labels": {
                "__metrics_path__": "/actuator/prometheus",
                "application": "orders",
                "instance": "127.0.0.1:orders:8080",
                "zone": "z1",
            },
            "targets": ["127.0.0.1:9081"],
        },
        {
            "labels": {
                "__metrics_path__": "/actuator/prometheus",
                "application": "billing",
                "instance": "127.0.0.2:billing:8080",
                "zone": "z1",
            },
            "targets": ["127.0.0.2:8080"],
        },
    ]
    # The example's prometheus.yml, reading this file: what Prometheus would scrape.
    prometheus = yaml.safe_load((EXAMPLE / "prometheus.yml").read_text())
    prometheus["scrape_configs"][0]["file_sd_configs"][0]["files"] = [str(tmp_path / "spring.json")]
    results = promtool_service_discovery(prometheus, "spring", tmp_path, timeout=1)
    scraped = sorted(
        (r["labels"]["instance"], r["labels"]["__address__"], r["labels"]["__metrics_path__"])
        for r in results
    )
    assert scraped == [
        ("127.0.0.1:orders:8080", "127.0.0.1:9081", "/actuator/prometheus"),
        ("127.0.0.2:billing:8080", "127.0.0.2:8080", "/actuator/prometheus"),
    ]
