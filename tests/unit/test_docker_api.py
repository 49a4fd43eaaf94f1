"""The Docker mechanisms' config validation, pure helpers, and the Engine client against a
fake engine on a unix socket (no dockerd needed)."""

from __future__ import annotations

import contextlib
import json
import socket as stdlib_socket
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from sdbridge.config import parse_config
from sdbridge.discovery._dockerapi import EngineClient, EngineConfig, encode_filters
from sdbridge.discovery._dockerbase import _relevant, network_labels
from sdbridge.discovery.dockerswarm import _moving
from sdbridge.errors import BackendError, ConfigError


def _job(key: str, entry: dict[str, object]) -> dict[str, object]:
    return {"jobs": [{"name": "j", key: [entry]}]}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"role": "tasks"}, "host: required key is missing"),
        ({"host": "unix:///var/run/docker.sock"}, "role: required key is missing"),
        (
            {"host": "unix:///x", "role": "containers"},
            "role: expected one of 'services', 'tasks' or 'nodes'",
        ),
        ({"host": "/var/run/docker.sock", "role": "tasks"}, "must start with unix://, tcp://"),
        ({"host": "unix://", "role": "tasks"}, "names no socket path"),
        ({"host": "tcp://:2376", "role": "tasks"}, "names no host"),
        ({"host": "tcp://h:99999", "role": "tasks"}, "Port out of range"),
        (
            {"host": "unix:///x", "role": "tasks", "port": 0},
            "port: must be greater than or equal to 1",
        ),
        (
            {"host": "unix:///x", "role": "tasks", "tls_config": {"insecure_skip_verify": True}},
            "apply only to tcp://, http:// or https:// hosts",
        ),
        (
            {"host": "unix:///x", "role": "tasks", "filters": [{"name": "", "values": []}]},
            "filters[0].name",
        ),
        ({"host": "unix:///x", "role": "tasks", "colour": "red"}, "colour: unknown key"),
        ({"host": "unix:///x", "role": "tasks", "refresh_interval": "0s"}, "greater than 0"),
    ],
)
def test_dockerswarm_config_errors_name_the_option(entry: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_job("dockerswarm_sd_configs", entry))
    assert "jobs[0].dockerswarm_sd_configs[0]" in str(caught.value)
    assert message in str(caught.value)


def test_docker_config_defaults_match_prometheus() -> None:
    config = parse_config(_job("docker_sd_configs", {"host": "unix:///var/run/docker.sock"}))
    (entry,) = config.jobs[0].docker_sd_configs  # type: ignore[attr-defined]
    assert (entry.port, entry.host_networking_host, entry.refresh_interval) == (
        80,
        "localhost",
        60.0,
    )
    assert entry.match_first_network is True
    assert entry.filters == []


def test_secrets_are_masked_and_paths_resolved(tmp_path: object) -> None:
    entry = {
        "host": "tcp://docker.example:2376",
        "role": "nodes",
        "tls_config": {"ca_file": "ca.pem"},
        "basic_auth": {"username": "u", "password": "hunter2"},
    }
    config = parse_config(_job("dockerswarm_sd_configs", entry), base_dir=tmp_path)  # type: ignore[arg-type]
    (parsed,) = config.jobs[0].dockerswarm_sd_configs  # type: ignore[attr-defined]
    assert "hunter2" not in repr(parsed)
    assert str(parsed.tls_config.ca_file) == f"{tmp_path}/ca.pem"


def test_filters_are_encoded_as_the_engine_expects() -> None:
    assert encode_filters({}) is None
    assert encode_filters({"label": []}) is None
    encoded = encode_filters({"label": ["a=b", "c"], "service": ["web"]})
    assert encoded is not None
    assert json.loads(encoded) == {"label": {"a=b": True, "c": True}, "service": {"web": True}}


@given(st.dictionaries(st.text(min_size=1), st.lists(st.text(), min_size=1), min_size=1))
def test_filter_encoding_round_trips(filters: dict[str, list[str]]) -> None:
    encoded = encode_filters(filters)
    assert encoded is not None
    decoded = json.loads(encoded)
    assert {name: set(values) for name, values in decoded.items()} == {
        name: set(values) for name, values in filters.items()
    }
    assert all(all(v is True for v in values.values()) for values in decoded.values())


def test_network_labels_are_sanitized_and_spell_booleans_like_go() -> None:
    labels = network_labels(
        [
            {
                "Id": "n1",
                "Name": "front",
                "Scope": "swarm",
                "Internal": True,
                "Labels": {"a.b-c": "x"},
            }
        ],
        "__meta_docker_",
    )
    assert labels == {
        "n1": {
            "__meta_docker_network_id": "n1",
            "__meta_docker_network_name": "front",
            "__meta_docker_network_scope": "swarm",
            "__meta_docker_network_internal": "true",
            "__meta_docker_network_ingress": "false",
            "__meta_docker_network_label_a_b_c": "x",
        }
    }


@pytest.mark.parametrize(
    ("desired", "state", "moving"),
    [
        ("running", "new", True),
        ("running", "preparing", True),
        ("running", "running", False),
        ("running", "failed", False),
        ("running", "complete", False),
        ("shutdown", "running", True),
        ("remove", "running", True),
        ("shutdown", "shutdown", False),
    ],
)
def test_a_task_is_moving_until_it_reaches_its_desired_state(
    desired: str, state: str, moving: bool
) -> None:
    task = {"DesiredState": desired, "Status": {"State": state}}
    assert _moving(task) is moving


@pytest.mark.parametrize(
    ("event", "relevant"),
    [
        ({"Type": "container", "Action": "start"}, True),
        ({"Type": "container", "Action": "destroy"}, True),
        ({"Type": "container", "Action": "exec_start: sh"}, False),
        ({"Type": "container", "Action": "health_status: healthy"}, False),
        ({"Type": "service", "Action": "update"}, True),
        ({"Type": "network", "Action": "connect"}, True),
    ],
)
def test_only_events_that_can_change_targets_trigger_a_refresh(
    event: dict[str, str], relevant: bool
) -> None:
    assert _relevant(event) is relevant


# --- the Engine client against a fake engine on a unix socket ----------------------------------


@contextlib.asynccontextmanager
async def fake_engine(socket: Path) -> AsyncIterator[list[str]]:
    """A loopback stand-in for dockerd: /version, /v1.47/services (503), /v1.47/events."""
    paths: list[str] = []

    async def version(request: web.Request) -> web.Response:
        paths.append(request.path)
        return web.json_response({"ApiVersion": "1.51", "MinAPIVersion": "1.24", "Version": "28"})

    async def services(request: web.Request) -> web.Response:
        paths.append(request.path)
        return web.json_response({"message": "This node is not a swarm manager."}, status=503)

    async def events(request: web.Request) -> web.StreamResponse:
        paths.append(request.path)
        response = web.StreamResponse()
        await response.prepare(request)
        big = {"Type": "container", "Action": "start", "Actor": {"ID": "x" * 100_000}}
        await response.write(orjson.dumps(big) + b"\n{torn\n")
        await response.write(orjson.dumps({"Type": "network", "Action": "connect"}) + b"\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/version", version)
    app.router.add_get("/v1.47/services", services)
    app.router.add_get("/v1.47/events", events)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.UnixSite(runner, str(socket)).start()
    try:
        yield paths
    finally:
        await runner.cleanup()


def _client(socket: Path) -> EngineClient:
    config = EngineConfig.model_validate({"host": f"unix://{socket}"})
    return EngineClient(config, timeout=5.0)


async def test_engine_client_negotiates_reads_events_and_explains_failures(
    tmp_path: Path,
) -> None:
    socket = tmp_path / "docker.sock"
    async with fake_engine(socket) as paths:
        client = _client(socket)
        try:
            assert await client.negotiate() == "1.47"
            with pytest.raises(BackendError, match="needs a swarm manager") as caught:
                await client.get_list("/services")
            assert "This node is not a swarm manager." in str(caught.value)
            events = [event async for event in client.events(["container", "network"])]
        finally:
            await client.close()
    # A 100 kB event is read whole (no line-length limit); a torn line is skipped.
    assert [event["Type"] for event in events] == ["container", "network"]
    assert paths == ["/version", "/v1.47/services", "/v1.47/events"]
    # A dockerd that died leaves its socket file behind. Python 3.13's asyncio removes a
    # unix server's socket on close, so leave one the way a crash does: bound, not listening.
    socket.unlink(missing_ok=True)
    with stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM) as stale:
        stale.bind(str(socket))
    for path, hint in [
        (socket, "connection refused \\(is dockerd running\\?\\)"),  # the engine is gone
        (tmp_path / "absent.sock", "the socket does not exist"),
    ]:
        client = _client(path)
        try:
            with pytest.raises(BackendError, match=f"cannot reach Docker Engine at .*: {hint}"):
                await client.negotiate()
        finally:
            await client.close()
