"""Parity with Prometheus: dockerswarm_sd (services, tasks, nodes) and docker_sd.

One scene of services, networks and containers is built on the real engine; for each
role, sdbridge's targets (address and every label) must equal what
``promtool check service-discovery`` shows for Prometheus's own SD with the same config
against the same engine. promtool never scrapes, and nothing here connects to a
container or overlay address: both sides only read the API socket.

Known, documented differences with Debian's Prometheus 2.42 (the oracle here):
newer Prometheus adds ``__meta_docker_container_image``/``_image_id``, follows
``--network container:<id>`` and has ``match_first_network`` (sdbridge does all three,
as Prometheus's main branch does; the comparison leaves them out), and sdbridge appends
the port to a bare ``host_networking_host``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sdbridge.config import parse_config
from sdbridge.discovery import mechanisms
from sdbridge.discovery._dockerbase import EngineWatcher
from sdbridge.discovery.base import DiscoveryContext
from tests.servers.common import free_port, wait_until
from tests.servers.dockerd import (
    DockerEngine,
    docker_engine,  # noqa: F401 - fixture
)
from tests.servers.prometheus import promtool_service_discovery

pytestmark = [pytest.mark.docker, pytest.mark.prometheus]

Target = frozenset[tuple[str, str]]
# What Prometheus adds to every target itself, not the SD.
_PROMETHEUS_ADDED = {
    "job",
    "__scheme__",
    "__metrics_path__",
    "__scrape_interval__",
    "__scrape_timeout__",
}
_NEWER_THAN_242 = {"__meta_docker_container_image", "__meta_docker_container_image_id"}


def normalize(labels: dict[str, str], drop: set[str] = _PROMETHEUS_ADDED) -> Target:
    """A target as a hashable label set; empty values are absent labels to Prometheus."""
    return frozenset((k, v) for k, v in labels.items() if v != "" and k not in drop)


def promtool_targets(key: str, config: dict[str, Any], workdir: Path) -> set[Target]:
    """The targets Prometheus's own SD finds for one ``<key>`` config."""
    scrape = {"job_name": "parity", "scrape_interval": "1h", "scrape_timeout": "10s", key: [config]}
    # promtool always runs for the whole timeout; the engine answers in milliseconds.
    results = promtool_service_discovery({"scrape_configs": [scrape]}, "parity", workdir, timeout=4)
    return {normalize(r["discoveredLabels"]) for r in results}


async def sdbridge_targets(mechanism: str, config: dict[str, Any]) -> set[Target]:
    """The targets one full sdbridge refresh finds for the same config."""
    parsed = parse_config({"jobs": [{"name": "parity", f"{mechanism}_sd_configs": [config]}]})
    entry = getattr(parsed.jobs[0], f"{mechanism}_sd_configs")[0]
    context = DiscoveryContext(job="parity", mechanism=mechanism)
    discoverer = mechanisms()[mechanism].factory(entry, context)
    assert isinstance(discoverer, EngineWatcher)
    try:
        groups = await discoverer.refresh()
    finally:
        await discoverer.client.close()
    return {normalize(t) for g in groups for t in g.merged_targets()}


async def assert_parity(
    mechanism: str,
    config: dict[str, Any],
    workdir: Path,
    *,
    adjust: Any = None,
    sdbridge_only: dict[str, Any] | None = None,
) -> set[Target]:
    """Assert sdbridge equals promtool (retrying a race with the engine); return the set.

    ``sdbridge_only`` holds options Prometheus 2.42 does not know; ``adjust`` maps both
    sets before comparing.
    """
    mine: set[Target] = set()
    theirs: set[Target] = set()
    for _ in range(3):
        theirs = await asyncio.to_thread(
            promtool_targets, f"{mechanism}_sd_configs", config, workdir
        )
        mine = await sdbridge_targets(mechanism, {**config, **(sdbridge_only or {})})
        if adjust is not None:
            mine, theirs = adjust(mine, theirs)
        if mine == theirs:
            return mine
        await asyncio.sleep(1)
    only_mine = sorted(sorted(t) for t in mine - theirs)
    only_theirs = sorted(sorted(t) for t in theirs - mine)
    raise AssertionError(
        f"{mechanism} differs from Prometheus:\nonly sdbridge: {json.dumps(only_mine, indent=1)}"
        f"\nonly Prometheus: {json.dumps(only_theirs, indent=1)}"
    )


def by_label(targets: set[Target], name: str, value: str) -> list[dict[str, str]]:
    """The targets whose label ``name`` equals ``value``, as dicts."""
    return [dict(t) for t in targets if dict(t).get(name) == value]


# --- the swarm scene --------------------------------------------------------------------


@dataclass
class SwarmScene:
    """Services covering every target rule, all labeled with this run's label."""

    run_label: str
    replicated: str = ""  # 3 replicas scaled to 2: running and shut-down tasks
    unpublished: str = ""  # no published port: the fallback `port`; updated once
    global_: str = ""  # global mode, host-mode published port
    stopped: str = ""  # its only task has completed
    published_port: int = 0
    host_port: int = 0
    networks: list[str] = field(default_factory=list)

    @property
    def services(self) -> list[str]:
        return [self.replicated, self.unpublished, self.global_, self.stopped]


@pytest.fixture(scope="module")
def swarm_scene(docker_engine: DockerEngine) -> Iterator[SwarmScene]:  # noqa: F811
    engine = docker_engine
    run_label = f"sdbridge.run={engine.run_id}"
    scene = SwarmScene(run_label=run_label, published_port=free_port(), host_port=free_port())
    labels = ("--label", run_label)
    with (
        engine.network("--label", "com.example.net-tier=front", "--attachable") as net_a,
        engine.network() as net_b,
    ):
        scene.networks = [net_a, net_b]
        with (
            engine.service(
                *labels,
                "--replicas=3",
                "--network", net_a,
                "--network", net_b,
                "--publish", f"published={scene.published_port},target=8080",
                "--publish", f"published={free_port()},target=8082,protocol=udp",
                "--label", "com.example.team=a",
                "--label", "weird-key.with/chars=yes",
                "--container-label", "com.example.container=c1",
            ) as replicated,
            engine.service(*labels, "--replicas=2", "--network", net_a, "--hostname", "h-unpub") as unpublished,
            engine.service(
                *labels,
                "--mode=global",
                "--network", net_b,
                "--publish", f"published={scene.host_port},target=8081,mode=host",
            ) as global_,
            engine.service(
                *labels,
                "--restart-condition=none",
                "--network", net_a,
                command=("/bin/busybox", "true"),
            ) as stopped,
        ):  # fmt: skip
            scene.replicated, scene.unpublished = replicated, unpublished
            scene.global_, scene.stopped = global_, stopped
            engine.wait_tasks_settled(replicated, running=3)
            engine.cli("service", "scale", "-d", f"{replicated}=2")
            engine.cli(
                "service", "update", "-d", "--update-monitor=100ms", "--env-add=UPDATED=1",
                unpublished,
            )  # fmt: skip
            for service in scene.services:
                engine.wait_tasks_settled(service)
            engine.wait_tasks_settled(replicated, running=2)
            engine.wait_tasks_settled(unpublished, running=2)
            wait_until(
                lambda: (
                    engine.api("GET", f"/services/{unpublished}")["UpdateStatus"]["State"]
                    == "completed"
                ),
                what="the service update to complete",
            )
            yield scene


def _swarm_config(engine: DockerEngine, role: str, **extra: Any) -> dict[str, Any]:
    return {"host": engine.host, "role": role, **extra}


async def test_services_role_matches_prometheus(
    docker_engine: DockerEngine,  # noqa: F811
    swarm_scene: SwarmScene,
    tmp_path: Path,
) -> None:
    config = _swarm_config(
        docker_engine, "services", filters=[{"name": "label", "values": [swarm_scene.run_label]}]
    )
    targets = await assert_parity("dockerswarm", config, tmp_path)
    # The scene really covers what it claims to.
    name = "__meta_dockerswarm_service_name"
    replicated = by_label(targets, name, swarm_scene.replicated)
    # One target per (virtual IP: ingress, net A, net B) x published TCP port; udp skipped.
    assert len(replicated) == 3
    assert {t["__address__"].rsplit(":", 1)[1] for t in replicated} == {
        str(swarm_scene.published_port)
    }
    assert {t.get("__meta_dockerswarm_network_name") for t in replicated} == {
        "ingress",
        *swarm_scene.networks,
    }
    assert all(
        t["__meta_dockerswarm_service_label_weird_key_with_chars"] == "yes" for t in replicated
    )
    unpublished = by_label(targets, name, swarm_scene.unpublished)
    assert [t["__address__"].rsplit(":", 1)[1] for t in unpublished] == ["80"]
    assert unpublished[0]["__meta_dockerswarm_service_task_container_hostname"] == "h-unpub"
    assert unpublished[0]["__meta_dockerswarm_service_updating_status"] == "completed"
    assert {
        t["__meta_dockerswarm_service_mode"] for t in by_label(targets, name, swarm_scene.global_)
    } == {"global"}


async def test_services_role_port_option(
    docker_engine: DockerEngine,  # noqa: F811
    swarm_scene: SwarmScene,
    tmp_path: Path,
) -> None:
    config = _swarm_config(
        docker_engine,
        "services",
        port=9100,
        filters=[{"name": "name", "values": [swarm_scene.unpublished]}],
    )
    targets = await assert_parity("dockerswarm", config, tmp_path)
    assert {t["__address__"].rsplit(":", 1)[1] for t in map(dict, targets)} == {"9100"}


async def test_tasks_role_matches_prometheus(
    docker_engine: DockerEngine,  # noqa: F811
    swarm_scene: SwarmScene,
    tmp_path: Path,
) -> None:
    config = _swarm_config(
        docker_engine, "tasks", filters=[{"name": "service", "values": swarm_scene.services}]
    )
    targets = await assert_parity("dockerswarm", config, tmp_path)
    states = {
        (
            t["__meta_dockerswarm_service_name"],
            t["__meta_dockerswarm_task_desired_state"],
            t["__meta_dockerswarm_task_state"],
        )
        for t in map(dict, targets)
    }
    # Updated: the replaced tasks are shut down; the stopped service's task completed.
    assert (swarm_scene.unpublished, "shutdown", "shutdown") in states
    assert (swarm_scene.replicated, "running", "running") in states
    assert any(s == swarm_scene.stopped and state == "complete" for s, _, state in states)
    # Host-mode published port: the node's address with the published port.
    host_mode = [
        t for t in map(dict, targets)
        if t["__meta_dockerswarm_service_name"] == swarm_scene.global_
        and t.get("__meta_dockerswarm_task_port_publish_mode") == "host"
        and t["__address__"].startswith("127.0.0.1:")
    ]  # fmt: skip
    assert host_mode
    assert {t["__address__"] for t in host_mode} == {f"127.0.0.1:{swarm_scene.host_port}"}
    assert all(
        "__meta_dockerswarm_container_label_com_example_container" in t
        for t in by_label(targets, "__meta_dockerswarm_service_name", swarm_scene.replicated)
    )


async def test_tasks_role_filter_on_desired_state(
    docker_engine: DockerEngine,  # noqa: F811
    swarm_scene: SwarmScene,
    tmp_path: Path,
) -> None:
    config = _swarm_config(
        docker_engine,
        "tasks",
        port=9999,
        filters=[
            {"name": "service", "values": [swarm_scene.replicated, swarm_scene.unpublished]},
            {"name": "desired-state", "values": ["running"]},
        ],
    )
    targets = await assert_parity("dockerswarm", config, tmp_path)
    assert {dict(t)["__meta_dockerswarm_task_desired_state"] for t in targets} == {"running"}
    unpublished = by_label(targets, "__meta_dockerswarm_service_name", swarm_scene.unpublished)
    assert {t["__address__"].rsplit(":", 1)[1] for t in unpublished} == {"9999"}


@pytest.fixture
def node_label(docker_engine: DockerEngine) -> Iterator[str]:  # noqa: F811
    """A label on this node, removed again after the test."""
    key = f"sdbridge.test-{docker_engine.run_id}"
    node = docker_engine.api("GET", "/info")["Swarm"]["NodeID"]
    docker_engine.cli("node", "update", "--label-add", f"{key}=yes", node)
    try:
        yield key
    finally:
        docker_engine.cli("node", "update", "--label-rm", key, node)


async def test_nodes_role_matches_prometheus(
    docker_engine: DockerEngine,  # noqa: F811
    node_label: str,
    tmp_path: Path,
) -> None:
    config = _swarm_config(docker_engine, "nodes", port=9100)
    targets = await assert_parity("dockerswarm", config, tmp_path)
    (node,) = map(dict, targets)
    assert node["__address__"] == "127.0.0.1:9100"
    assert node["__meta_dockerswarm_node_manager_leader"] == "true"
    sanitized = "__meta_dockerswarm_node_label_" + node_label.replace(".", "_").replace("-", "_")
    assert node[sanitized] == "yes"
    filtered = await assert_parity(
        "dockerswarm",
        _swarm_config(docker_engine, "nodes", filters=[{"name": "role", "values": ["worker"]}]),
        tmp_path,
    )
    assert filtered == set()


# --- docker_sd --------------------------------------------------------------------------


@dataclass
class ContainerScene:
    run_label: str
    networks: list[str]
    multi: str  # on two networks, an exposed and a published port
    plain: str  # one network, no port: the fallback `port`
    host: str  # host networking
    shared: str  # --network container:<multi>
    published_port: int


@pytest.fixture(scope="module")
def container_scene(docker_engine: DockerEngine) -> Iterator[ContainerScene]:  # noqa: F811
    engine = docker_engine
    run_label = f"sdbridge.run={engine.run_id}"
    labels = ("--label", run_label)
    published = free_port()
    with (
        engine.network("--label", "com.example.net=x", driver="bridge") as net_a,
        engine.network(driver="bridge") as net_b,
        engine.container(
            *labels,
            "--network", net_a,
            "--expose", "9000",
            "--expose", "9001/udp",
            "--publish", f"127.0.0.1:{published}:8080",
            "--label", "com.example.some-label=v",
        ) as multi,
        engine.container(*labels, "--network", net_b, "--expose", "9002/udp") as plain,
        engine.container(*labels, "--network", "host", command=("/bin/busybox", "sleep", "600")) as host,
        engine.container(*labels, "--network", f"container:{multi}", command=("/bin/busybox", "sleep", "600")) as shared,
        engine.container(*labels, "--network", net_a, command=("/bin/busybox", "true")),
    ):  # fmt: skip
        engine.cli("network", "connect", net_b, multi)
        yield ContainerScene(run_label, [net_a, net_b], multi, plain, host, shared, published)


def _docker_config(engine: DockerEngine, scene: ContainerScene, **extra: Any) -> dict[str, Any]:
    return {
        "host": engine.host,
        "filters": [{"name": "label", "values": [scene.run_label]}],
        **extra,
    }


def as_prometheus_242(shared: str) -> Any:
    """Compare on what Prometheus 2.42 knows (see the module docstring)."""

    def adjust(mine: set[Target], theirs: set[Target]) -> tuple[set[Target], set[Target]]:
        mine = {
            normalize(dict(t), _NEWER_THAN_242)
            for t in mine
            if dict(t)["__meta_docker_container_id"] != shared
        }
        fixed = set()
        for target in theirs:
            labels = dict(target)
            if ":" not in labels["__address__"]:
                labels["__address__"] += ":80"  # bare host_networking_host
            fixed.add(normalize(labels))
        return mine, fixed

    return adjust


async def test_docker_sd_matches_prometheus(
    docker_engine: DockerEngine,  # noqa: F811
    container_scene: ContainerScene,
    tmp_path: Path,
) -> None:
    scene = container_scene
    mine = await assert_parity(
        "docker",
        _docker_config(docker_engine, scene),
        tmp_path,
        adjust=as_prometheus_242(scene.shared),
        sdbridge_only={"match_first_network": False},  # 2.42 lists every network
    )
    multi = by_label(mine, "__meta_docker_container_id", scene.multi)
    # Two networks x two TCP ports (8080 published, 9000 exposed); the udp port is skipped.
    assert len(multi) == 4
    assert {t["__meta_docker_network_name"] for t in multi} == set(scene.networks)
    published = [t for t in multi if "__meta_docker_port_public" in t]
    assert {
        (t["__meta_docker_port_public"], t["__meta_docker_port_public_ip"]) for t in published
    } == {(str(scene.published_port), "127.0.0.1")}
    assert all(t["__meta_docker_container_label_com_example_some_label"] == "v" for t in multi)
    (plain,) = by_label(mine, "__meta_docker_container_id", scene.plain)
    assert plain["__address__"].endswith(":80")
    (host,) = by_label(mine, "__meta_docker_container_id", scene.host)
    assert host["__address__"] == "localhost:80"


async def test_docker_sd_newer_prometheus_behaviour(
    docker_engine: DockerEngine,  # noqa: F811
    container_scene: ContainerScene,
) -> None:
    """match_first_network, container:<id> networking and image labels (Prometheus main)."""
    scene = container_scene
    targets = await sdbridge_targets(
        "docker",
        _docker_config(docker_engine, scene, port=9100, host_networking_host="127.0.0.1:9999"),
    )
    multi = by_label(targets, "__meta_docker_container_id", scene.multi)
    assert {t["__meta_docker_network_name"] for t in multi} == {min(scene.networks)}
    assert {t["__meta_docker_container_image"] for t in multi} == {docker_engine.image}
    assert all(t["__meta_docker_container_image_id"].startswith("sha256:") for t in multi)
    shared = by_label(targets, "__meta_docker_container_id", scene.shared)
    assert len(shared) == 1
    assert shared[0]["__meta_docker_network_name"] == min(scene.networks)
    assert shared[0]["__address__"].endswith(":9100")
    (host,) = by_label(targets, "__meta_docker_container_id", scene.host)
    assert host["__address__"] == "127.0.0.1:9999"
