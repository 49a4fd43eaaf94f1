"""Parity: sdbridge's eureka_sd labels equal Prometheus's and vmagent's, target for target.

One Eureka double serves generated registries. For each one, Prometheus's own eureka_sd
answers through ``promtool check service-discovery`` (Debian's Prometheus 2.42), vmagent
(Debian's victoria-metrics 1.79, an independent implementation) through
``/api/v1/targets`` discoveredLabels, and sdbridge's mechanism through a refresh (a full
fetch, then deltas: the registries follow each other, so most refreshes are deltas).

Compared: ``__address__``, ``instance`` and every ``__meta_eureka_*`` label; an empty
value counts as absent. Every instance carries a ``gen`` metadata with the dataset's
number, so "vmagent has caught up" is exact. Nothing is scraped: every address is
127.0.0.x, and vmagent's relabeling points scrapes at a closed port.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdbridge.discovery.base import DiscoveryContext
from sdbridge.discovery.eureka import EurekaDiscoverer, EurekaSDConfig
from tests.doubles.eureka_double import EurekaDouble, instance, running
from tests.servers.common import wait_until
from tests.servers.prometheus import promtool_service_discovery
from tests.servers.vmagent import VMAgent

pytestmark = [pytest.mark.vmagent, pytest.mark.prometheus, pytest.mark.slow]

JOB = "eureka"
APPS = ["web", "api", "billing-service"]
# Spring Cloud's keys, a key that collides with another after sanitizing (the later
# element wins in Go, in document order), upper case, non-ASCII.
META_KEYS = ["prometheus.path", "management.port", "rack-id", "rack_id", "Team", "zöne"]
VALUES = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=6
) | st.sampled_from(["a&b", "<x>", 'it\'s "q"', "/actuator/prometheus"])


@pytest.fixture(scope="module")
def eureka() -> Iterator[EurekaDouble]:
    with running() as double:
        yield double


@pytest.fixture(scope="module")
def vmagent(tmp_path_factory: pytest.TempPathFactory, eureka: EurekaDouble) -> Iterator[VMAgent]:
    agent = VMAgent(
        tmp_path_factory.mktemp("vmagent"),
        [{"job_name": JOB, "eureka_sd_configs": [{"server": eureka.url}]}],
        extra_flags=["-promscrape.eurekaSDCheckInterval=200ms"],
    )
    yield agent
    agent.stop()


@pytest.fixture(scope="module")
def ours(eureka: EurekaDouble) -> EurekaDiscoverer:
    """One discoverer for every dataset: after the first, its refreshes are deltas."""
    context = DiscoveryContext(job=JOB, mechanism="eureka")
    return EurekaDiscoverer(EurekaSDConfig(server=eureka.url), context)


@st.composite
def registries(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Instances of a few apps: with and without port, securePort and instanceId,
    Amazon datacenter metadata, every status, metadata with awkward keys and values."""
    records = []
    for n in range(draw(st.integers(0, 6))):
        host = f"127.0.0.{n + 1}"
        datacenter = draw(st.sampled_from(["MyOwn", "Amazon"]))
        records.append(
            instance(
                draw(st.sampled_from(APPS)),
                host,
                draw(st.one_of(st.none(), st.integers(1024, 65535))),
                instance_id=draw(st.sampled_from([None, "", f"{host}-{n}"])),
                status=draw(st.sampled_from(["UP", "DOWN", "STARTING", "OUT_OF_SERVICE"])),
                metadata=draw(st.dictionaries(st.sampled_from(META_KEYS), VALUES, max_size=4)),
                secure_port=draw(st.one_of(st.none(), st.just(8443))),
                secure_port_enabled=draw(st.booleans()),
                port_enabled=draw(st.booleans()),
                datacenter=datacenter,
                datacenter_metadata=(
                    {"instance-id": f"i-{n}", "availability-zone": draw(VALUES)}
                    if datacenter == "Amazon"
                    else None
                ),
                country_id=draw(st.integers(0, 3)),
            )
        )
    return records


def comparable(labels: dict[str, str]) -> dict[str, str]:
    return {
        k: v
        for k, v in labels.items()
        if v and (k in ("__address__", "instance") or k.startswith("__meta_eureka_"))
    }


def ordered(targets: list[dict[str, str]]) -> list[dict[str, str]]:
    return sorted((comparable(t) for t in targets), key=lambda t: sorted(t.items()))


_generation = itertools.count(1)


@settings(max_examples=8, suppress_health_check=list(HealthCheck), deadline=None)
@given(registry=registries())
async def test_parity_with_prometheus_and_vmagent(
    tmp_path: Path,
    eureka: EurekaDouble,
    vmagent: VMAgent,
    ours: EurekaDiscoverer,
    registry: list[dict[str, Any]],
) -> None:
    gen = str(next(_generation))
    for record in registry:
        record["metadata"]["gen"] = gen
    eureka.load(registry)
    count = len(eureka.instances())

    def caught_up(targets: list[dict[str, str]]) -> bool:
        fresh = all(t.get("__meta_eureka_app_instance_metadata_gen") == gen for t in targets)
        return fresh and len(targets) == count

    wait_until(lambda: caught_up(vmagent.targets(JOB)), timeout=30, what="vmagent")
    theirs = ordered(vmagent.targets(JOB))
    config = {"scrape_configs": [{"job_name": JOB, "eureka_sd_configs": [{"server": eureka.url}]}]}
    results = promtool_service_discovery(config, JOB, tmp_path, timeout=1.5)
    prometheus = ordered([r["discoveredLabels"] for r in results])
    try:
        mine = ordered([t for g in await ours.refresh() for t in g.merged_targets()])
    finally:
        await ours.http.close()  # the session belongs to this example's event loop
    assert mine == prometheus
    assert mine == theirs
    assert ours.fetches["full"] == 1  # every dataset after the first came as a delta
