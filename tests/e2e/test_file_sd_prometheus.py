"""A real Prometheus reads sdbridge's file_sd outputs (JSON and YAML); promtool agrees.

sdbridge runs one exec job per format; its command prints ``targets.json``, which the
tests rewrite. Targets are 127.0.0.x addresses on ports nothing listens on, the scrape
interval is long, and the tests read only Prometheus's /api/v1/targets.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.servers.common import wait_until
from tests.servers.prometheus import Prometheus, promtool_service_discovery
from tests.servers.sdbridge import Sdbridge

pytestmark = pytest.mark.prometheus

# Group labels, per-target overrides (a group per target in the output), __meta_ labels,
# and label values YAML parsers could misread.
FIRST = [
    {
        "targets": ["127.0.0.1:19100", "127.0.0.2:19100"],
        "labels": {"env": "prod", "__meta_exec_zone": "a", "team": ""},
    },
    {
        "targets": ["127.0.0.3:19100"],
        "labels": {
            "env": "dev",
            "yes": "true",
            "tilde": "~",
            "null_value": "null",
            "colon": "a: b",
            "hash": "#not a comment",
            "quote": 'it\'s "quoted"',
            "unicode": "é✓ 東京",
            "spaces": "  padded  ",
            "octal": "0644",
            "newline": "two\nlines",
            "long": "x" * 300,
        },
    },
]
SECOND = [
    {"targets": ["127.0.0.2:19100"], "labels": {"env": "prod", "__meta_exec_zone": "b"}},
    {"targets": ["127.0.0.4:19100"], "labels": {"env": "staging"}},
]
PROMETHEUS_ADDED = {
    "__meta_filepath",
    "__scheme__",
    "__metrics_path__",
    "__scrape_interval__",
    "__scrape_timeout__",
    "job",
}


def expected(groups: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One label set per target, address included, empty values absent; plus the
    per-target ``host`` label sdbridge's relabeling adds (see RELABEL)."""
    found = [
        {"__address__": t, **{k: v for k, v in g["labels"].items() if v}, "host": t.split(":")[0]}
        for g in groups
        for t in g["targets"]
    ]
    return sorted(found, key=lambda labels: sorted(labels.items()))


def label_sets(entries: list[dict[str, Any]]) -> list[dict[str, str]]:
    """file_sd entries → one label set per target."""
    found = [{"__address__": t, **e["labels"]} for e in entries for t in e["targets"]]
    return sorted(found, key=lambda labels: sorted(labels.items()))


# A per-target label: targets of one group get different values, so the output must keep
# one group per target for Prometheus to see them.
RELABEL = [{"source_labels": ["__address__"], "regex": "(.*):.*", "target_label": "host"}]


@dataclass
class Setup:
    workdir: Path
    sdbridge: Sdbridge
    prometheus: Prometheus
    json_file: Path
    yaml_file: Path

    def set_targets(self, groups: list[dict[str, Any]]) -> None:
        tmp = self.workdir / "targets.json.new"
        tmp.write_text(json.dumps(groups))
        tmp.replace(self.workdir / "targets.json")


def scrape_config(job: str, file: Path) -> dict[str, Any]:
    return {
        "job_name": job,
        "scrape_interval": "1h",
        "scrape_timeout": "10s",
        "file_sd_configs": [{"files": [str(file)], "refresh_interval": "1h"}],
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("file-sd-e2e")
    (workdir / "targets.json").write_text(json.dumps(FIRST))
    out = workdir / "out"
    json_file, yaml_file = out / "web.json", out / "web.yml"
    exec_config = {"command": ["cat", "targets.json"], "refresh_interval": "1s"}
    config = {
        "global": {"publish_delay": {"min": "10ms", "max": "100ms"}},
        "jobs": [
            {
                "name": "json",
                "exec_sd_configs": [exec_config],
                "relabel_configs": RELABEL,
                "output": {"file": "out/web.json"},
            },
            {
                "name": "yaml",
                "exec_sd_configs": [exec_config],
                "relabel_configs": RELABEL,
                "output": {"file": "out/web.yml"},
            },
        ],
    }
    sdbridge = Sdbridge(workdir, config)
    try:
        wait_until(lambda: json_file.exists() and yaml_file.exists(), what="both output files")
        prom_dir = workdir / "prometheus"
        prom_dir.mkdir()
        prometheus = Prometheus(
            prom_dir,
            {
                "scrape_configs": [
                    scrape_config("json", json_file),
                    scrape_config("yaml", yaml_file),
                ]
            },
        )
        try:
            yield Setup(workdir, sdbridge, prometheus, json_file, yaml_file)
        finally:
            prometheus.stop()
    finally:
        sdbridge.stop()


def discovered(prometheus: Prometheus, job: str) -> list[dict[str, str]]:
    found = [
        {k: v for k, v in t["discoveredLabels"].items() if k not in PROMETHEUS_ADDED}
        for t in prometheus.active_targets(job)
    ]
    return sorted(found, key=lambda labels: sorted(labels.items()))


def test_the_outputs_hold_what_the_command_printed(setup: Setup) -> None:
    from_json = json.loads(setup.json_file.read_text())
    from_yaml = yaml.safe_load(setup.yaml_file.read_text())
    assert from_json == from_yaml
    assert label_sets(from_json) == expected(FIRST)
    # One group per target: the per-target label sets are kept apart.
    assert all(len(entry["targets"]) == 1 for entry in from_json)


@pytest.mark.parametrize("job", ["json", "yaml"])
def test_prometheus_discovers_exactly_the_targets_and_labels(setup: Setup, job: str) -> None:
    want = expected(FIRST)
    wait_until(
        lambda: discovered(setup.prometheus, job) == want,
        timeout=60,
        what=f"Prometheus's {job} targets to equal sdbridge's",
    )
    # And they say where they came from: the output file.
    paths = {t["discoveredLabels"]["__meta_filepath"] for t in setup.prometheus.active_targets(job)}
    assert paths == {str(setup.json_file if job == "json" else setup.yaml_file)}


@pytest.mark.parametrize("job", ["json", "yaml"])
def test_promtool_accepts_the_output_with_the_same_labels(setup: Setup, job: str) -> None:
    file = setup.json_file if job == "json" else setup.yaml_file
    current = label_sets(json.loads(setup.json_file.read_text()))
    results = promtool_service_discovery(
        {"scrape_configs": [scrape_config(job, file)]},
        job,
        setup.workdir,
        timeout=3,  # promtool waits this long whatever; file_sd reads the file at once
    )
    assert all(not r.get("error") for r in results), results
    found = sorted(
        (
            {k: v for k, v in r["discoveredLabels"].items() if k not in PROMETHEUS_ADDED}
            for r in results
        ),
        key=lambda labels: sorted(labels.items()),
    )
    assert found == current
    # Relabeling drops the __meta_ labels and keeps the rest, as in a scrape.
    for r in results:
        assert r["labels"]["instance"] == r["discoveredLabels"]["__address__"]
        assert not any(k.startswith("__meta_") for k in r["labels"])


def test_a_change_in_the_command_output_reaches_prometheus(setup: Setup) -> None:
    setup.set_targets(SECOND)
    want = expected(SECOND)
    for job in ("json", "yaml"):
        wait_until(
            lambda job=job: discovered(setup.prometheus, job) == want,  # type: ignore[misc]
            timeout=60,
            what=f"the change to reach Prometheus's {job} job",
        )
    assert label_sets(json.loads(setup.json_file.read_text())) == want
