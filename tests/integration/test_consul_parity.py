"""Parity: sdbridge's consul_sd output equals vmagent's discovered labels, target for target.

One Consul double, one vmagent (Debian's victoria-metrics 1.79, an independent consul_sd
implementation) and one ``sdbridge run`` process serve the whole module. Each generated
dataset replaces the double's catalog; both sides follow it through their blocking
queries. Every service instance carries a ``gen`` service meta with the dataset's number,
so "both have caught up" is exact: every target shows the current ``gen``.

Compared: ``__address__`` and every ``__meta_consul_*`` label; empty values count as
absent. Known, documented differences (docs/mechanisms/consul.md): vmagent 1.79 has no
``__meta_consul_partition`` (Prometheus has), so that label is checked against the data
and left out of the comparison.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.doubles.consul_double import ConsulDouble, running
from tests.servers.common import ManagedProcess, free_port, http_ok, wait_until
from tests.servers.vmagent import VMAgent

pytestmark = [pytest.mark.vmagent, pytest.mark.slow]

JOBS: dict[str, dict[str, Any]] = {
    "all": {},
    "filtered": {
        "services": ["web", "consul", "db"],
        "tags": ["t0"],
        "node_meta": {"env": "prod"},
        "tag_separator": ";",
        "allow_stale": False,
    },
}
SERVICE_NAMES = ["web", "api", "db", "cache"]
# Distinct after sanitizing (a collision picks a random value in Go): some are unsafe.
META_KEYS = ["env", "rack-id", "k8s/zone", "version", "Team", "x.y.z", "ünï"]
TAGS = ["t0", "t1", "prod", "blue", "a=b"]
CHECK_STATES = ["passing", "warning", "critical"]


class SdbridgeProcess:
    """``sdbridge run`` with one job per entry of JOBS, each writing a JSON file."""

    def __init__(self, workdir: Path, server: str) -> None:
        self.port = free_port()
        self.files = {name: workdir / f"{name}.json" for name in JOBS}
        config = {
            "global": {
                "data_dir": str(workdir / "data"),
                "publish_delay": {"min": "0", "max": "0"},
            },
            "jobs": [
                {
                    "name": name,
                    "consul_sd_configs": [
                        {"server": server, "refresh_interval": "100ms", **options}
                    ],
                    "output": {"file": str(self.files[name])},
                    # Each dataset replaces the catalog: not a mass deletion to hold back.
                    "guard": {"enabled": False},
                }
                for name, options in JOBS.items()
            ],
        }
        config_path = workdir / "sdbridge.yml"
        config_path.write_text(yaml.safe_dump(config))
        sdbridge = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "sdbridge"
        self.process = ManagedProcess(
            [
                str(sdbridge),
                "run",
                f"--config.file={config_path}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            log_path=workdir / "sdbridge.log",
        )
        wait_until(
            lambda: self.process.alive() and http_ok(f"http://127.0.0.1:{self.port}/-/healthy"),
            timeout=60,
            what=f"sdbridge healthy (log: {self.process.log_path})",
        )

    def targets(self, job: str) -> list[dict[str, str]]:
        """The labels of every target in the job's file (one group per target)."""
        path = self.files[job]
        if not path.exists():
            return []
        groups = json.loads(path.read_text())
        return [{**g["labels"], "__address__": t} for g in groups for t in g["targets"]]


@pytest.fixture(scope="module")
def consul() -> Iterator[ConsulDouble]:
    with running() as double:
        yield double


@pytest.fixture(scope="module")
def vmagent(tmp_path_factory: pytest.TempPathFactory, consul: ConsulDouble) -> Iterator[VMAgent]:
    scrape_configs = [
        {"job_name": name, "consul_sd_configs": [{"server": consul.address, **options}]}
        for name, options in JOBS.items()
    ]
    agent = VMAgent(tmp_path_factory.mktemp("vmagent"), scrape_configs)
    yield agent
    agent.stop()


@pytest.fixture(scope="module")
def sdbridge(
    tmp_path_factory: pytest.TempPathFactory, consul: ConsulDouble
) -> Iterator[SdbridgeProcess]:
    process = SdbridgeProcess(tmp_path_factory.mktemp("sdbridge"), consul.address)
    yield process
    process.process.stop()


# --- datasets ----------------------------------------------------------------------------

_values = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=6
)
_meta = st.dictionaries(st.sampled_from(META_KEYS), _values, max_size=3)
_checks = st.lists(st.sampled_from(CHECK_STATES), max_size=2)


@st.composite
def datasets(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Nodes with meta, tagged addresses and node checks, running services with tags,
    meta, own addresses and checks; the same names on many nodes; sometimes ``consul``."""
    ports = itertools.count(20000 + draw(st.integers(0, 1000)) * 10)
    nodes = []
    for n in range(draw(st.integers(0, 4))):
        node_checks = [{"id": "serfHealth", "status": draw(st.sampled_from(CHECK_STATES))}]
        if draw(st.integers(0, 9)) == 0:
            node_checks.append({"id": "_node_maintenance", "status": "critical"})
        services = []
        for s, name in enumerate(draw(st.lists(st.sampled_from(SERVICE_NAMES), max_size=3))):
            service_id = f"{name}-{n}-{s}"
            checks = [
                {"id": f"{service_id}-c{i}", "status": status}
                for i, status in enumerate(draw(_checks))
            ]
            if draw(st.integers(0, 9)) == 0:
                checks.append({"id": f"_service_maintenance:{service_id}", "status": "critical"})
            service: dict[str, Any] = {
                "name": name,
                "id": service_id,
                "port": next(ports),
                "address": draw(st.sampled_from(["", "", f"127.0.1.{n + 1}"])),
                "tags": draw(st.lists(st.sampled_from(TAGS), max_size=3)),
                "meta": draw(_meta),
                "checks": checks,
            }
            if draw(st.booleans()):
                service["namespace"] = "default"
            if draw(st.integers(0, 4)) == 0:
                service["partition"] = "part-a"
            services.append(service)
        node_meta = draw(_meta)
        if draw(st.booleans()):
            node_meta["env"] = "prod"
        tagged = draw(
            st.dictionaries(
                st.sampled_from(["lan", "wan", "lan_ipv4", "wan-ipv4"]),
                st.sampled_from([f"127.0.0.{n + 1}", f"127.0.2.{n + 1}"]),
                max_size=3,
            )
        )
        nodes.append(
            {
                "node": f"node-{n}",
                "address": f"127.0.0.{n + 1}",
                "meta": node_meta,
                "tagged_addresses": tagged,
                "checks": node_checks,
                "services": services,
            }
        )
    if draw(st.booleans()):  # the consul service itself, as a real catalog always has it
        nodes.append(
            {
                "node": "consul-server",
                "address": "127.0.0.10",
                "meta": {"consul-network-segment": "", "env": "prod"},
                "tagged_addresses": {"lan": "127.0.0.10", "wan": "127.0.0.10"},
                "checks": [{"id": "serfHealth", "status": "passing"}],
                "services": [{"name": "consul", "id": "consul", "port": 8300, "tags": ["t0"]}],
            }
        )
    return nodes


def _expected_ids(dataset: list[dict[str, Any]], job: str) -> set[str]:
    options = JOBS[job]
    ids = set()
    for node in dataset:
        if options.get("node_meta") and any(
            node["meta"].get(k) != v for k, v in options["node_meta"].items()
        ):
            continue
        for svc in node["services"]:
            if options.get("services") and svc["name"] not in options["services"]:
                continue
            if not all(tag in svc.get("tags", []) for tag in options.get("tags", [])):
                continue
            ids.add(svc["id"])
    return ids


def _comparable(target: dict[str, str]) -> dict[str, str]:
    return {
        k: v
        for k, v in target.items()
        if v and (k == "__address__" or k.startswith("__meta_consul_"))
    }


_generation = itertools.count(1)


@settings(max_examples=25, suppress_health_check=list(HealthCheck), deadline=None)
@given(dataset=datasets())
def test_parity_with_vmagent(
    consul: ConsulDouble, vmagent: VMAgent, sdbridge: SdbridgeProcess, dataset: list[dict[str, Any]]
) -> None:
    gen = str(next(_generation))
    for node in dataset:
        for svc in node["services"]:
            svc["meta"] = {**svc.get("meta", {}), "gen": gen}
    consul.load(dataset)
    for job in JOBS:
        expected = _expected_ids(dataset, job)

        def caught_up(targets: list[dict[str, str]], expected: set[str] = expected) -> bool:
            ids = {t.get("__meta_consul_service_id") for t in targets}
            fresh = all(t.get("__meta_consul_service_metadata_gen") == gen for t in targets)
            return fresh and ids == expected

        wait_until(
            lambda job=job: caught_up(vmagent.targets(job)), timeout=30, what=f"vmagent {job}"
        )
        wait_until(
            lambda job=job: caught_up(sdbridge.targets(job)), timeout=30, what=f"sdbridge {job}"
        )
        ours = {t["__meta_consul_service_id"]: _comparable(t) for t in sdbridge.targets(job)}
        theirs = {t["__meta_consul_service_id"]: _comparable(t) for t in vmagent.targets(job)}
        partitions = {
            svc["id"]: svc.get("partition", "") for node in dataset for svc in node["services"]
        }
        for service_id, labels in ours.items():
            # Prometheus labels the partition; vmagent 1.79 does not (documented).
            assert labels.pop("__meta_consul_partition", "") == partitions[service_id]
        assert ours == theirs
