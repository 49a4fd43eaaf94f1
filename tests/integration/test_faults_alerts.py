"""The example alerting rules in docs/operations.md: valid, on real metrics, and firing."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import sdbridge.metrics  # noqa: F401  (declares every sdbridge_* metric)

from ..servers.common import require_binary

pytestmark = pytest.mark.prometheus

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def rules_text() -> str:
    text = DOC.read_text()
    section = text.split("### Example alerting rules", 1)[1]
    match = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert match is not None, "no yaml block after '### Example alerting rules'"
    return match.group(1)


def known_metric_names() -> set[str]:
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


def test_rules_pass_promtool_check_rules(tmp_path: Path) -> None:
    path = tmp_path / "sdbridge-rules.yml"
    path.write_text(rules_text())
    result = subprocess.run(
        [require_binary("promtool"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_use_only_metrics_sdbridge_exports() -> None:
    used = set(re.findall(r"\bsdbridge_[a-z_]+", rules_text()))
    assert used
    assert used <= known_metric_names(), used - known_metric_names()


def test_rules_fire_as_documented(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(rules_text())
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": 'sdbridge_guard_holding{job="web"}', "values": "0 1x10"},
                    {"series": 'sdbridge_job_stale{job="db"}', "values": "1x15"},
                    {"series": 'sdbridge_job_synced{job="db"}', "values": "0x15"},
                    {
                        "series": 'sdbridge_publish_failures_total{job="web",output="file"}',
                        "values": "0+1x30",
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "8m",
                        "alertname": "SdbridgeGuardHolding",
                        "exp_alerts": [
                            {
                                "exp_labels": {"job": "web", "severity": "warning"},
                                "exp_annotations": {
                                    "summary": "sdbridge holds back a mass deletion in job web: "
                                    "check the registry; the drop is published once confirmed"
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "12m",
                        "alertname": "SdbridgeJobStale",
                        "exp_alerts": [
                            {
                                "exp_labels": {"job": "db", "severity": "warning"},
                                "exp_annotations": {
                                    "summary": "sdbridge job db has served last-known-good state "
                                    "for 10m: its backends have not completed a sync since the "
                                    "restart"
                                },
                            }
                        ],
                    },
                    # Stale state is being served: "not synced" is not the problem then.
                    {"eval_time": "12m", "alertname": "SdbridgeJobNotSynced", "exp_alerts": []},
                    {
                        "eval_time": "25m",
                        "alertname": "SdbridgePublishFailing",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "job": "web",
                                    "output": "file",
                                    "severity": "critical",
                                },
                                "exp_annotations": {
                                    "summary": "sdbridge cannot write the file output of job "
                                    "web (disk full or read-only?); the old file stays"
                                },
                            }
                        ],
                    },
                ],
            }
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        [require_binary("promtool"), "test", "rules", "tests.yml"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
