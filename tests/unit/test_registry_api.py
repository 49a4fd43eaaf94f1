"""/api/v1/registry: registration, heartbeat, listing, and every bad input refused with a 4xx."""

from __future__ import annotations

import base64
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from sdbridge.config import parse_config
from sdbridge.daemon import Daemon
from sdbridge.errors import ConfigError
from sdbridge.model import TargetGroup
from sdbridge.registry.config import RegistryConfig
from sdbridge.registry.instance import RegistrationError
from sdbridge.registry.store import db_path
from sdbridge.web.app import create_app
from sdbridge.web.registry_api import (
    MAX_BODY_BYTES,
    parse_registration,
    registry_routes,
    server_listening,
)
from sdbridge.web.server import start_server
from tests.servers.tls import write_web_config
from tests.unit.test_registry_store import eventually

TOKEN = "s3cret-token"
BASIC = {"Authorization": "Basic " + base64.b64encode(b"alice:pw").decode()}
URL = "/api/v1/registry"


def make_daemon(tmp_path: Path, registry: dict[str, Any] | None = None) -> Daemon:
    config = parse_config(
        {
            "global": {
                "data_dir": str(tmp_path / "data"),
                "publish_delay": {"min": "0s", "max": "0s"},
            },
            "registry": registry or {},
            "jobs": [
                {"name": "registry", "registry_sd_configs": [{}], "guard": {"enabled": False}}
            ],
        },
        base_dir=tmp_path,
    )
    return Daemon(config)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    daemon = make_daemon(tmp_path)
    app = create_app(daemon, route_hooks=[registry_routes(daemon)])
    async with TestClient(TestServer(app)) as test_client:
        yield test_client
    await daemon.stop()  # the daemon owns the registry store


@pytest.fixture
async def token_client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    (tmp_path / "token").write_text(TOKEN + "\n")
    daemon = make_daemon(tmp_path, {"write_token_file": "token"})
    app = create_app(daemon, route_hooks=[registry_routes(daemon)])
    async with TestClient(TestServer(app)) as test_client:
        yield test_client
    await daemon.stop()  # the daemon owns the registry store


async def put(
    client: TestClient[Any, Any], path: str, body: Any, **kwargs: Any
) -> aiohttp.ClientResponse:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return await client.put(f"{URL}/{path}", data=data, **kwargs)


async def listing(client: TestClient[Any, Any]) -> list[dict[str, Any]]:
    response = await client.get(URL)
    assert response.status == 200
    instances: list[dict[str, Any]] = (await response.json())["data"]["instances"]
    return [{k: v for k, v in i.items() if k not in ("expires_in",)} for i in instances]


def requests_counted(operation: str, code: int) -> float:
    value = REGISTRY.get_sample_value(
        "sdbridge_registry_requests_total", {"operation": operation, "code": str(code)}
    )
    return value or 0.0


async def test_register_heartbeat_list_delete(client: TestClient[Any, Any]) -> None:
    created_before = requests_counted("put", 201)
    response = await put(
        client, "web/a", {"address": "127.0.0.1:80", "labels": {"env": "dev"}, "ttl": "1m"}
    )
    assert response.status == 201
    body = await response.json()
    assert body["status"] == "success"
    assert body["data"]["address"] == "127.0.0.1:80"
    assert body["data"]["ttl"] == "1m"
    assert (await put(client, "web/a", {"address": "127.0.0.1:80", "ttl": 60})).status == 200
    assert (await put(client, "db/x", {"address": "127.0.0.2:5432"})).status == 201

    beat = await client.post(f"{URL}/web/a/heartbeat")
    assert beat.status == 200
    assert (await beat.json())["data"]["expires_in"] > 59

    assert [(i["service"], i["instance"]) for i in await listing(client)] == [
        ("db", "x"),
        ("web", "a"),
    ]
    one = await client.get(f"{URL}/db")
    assert [i["instance"] for i in (await one.json())["data"]["instances"]] == ["x"]
    got = await client.get(f"{URL}/db/x")
    assert (await got.json())["data"]["ttl"] == "30s"  # the default ttl
    assert (await client.get(f"{URL}/none")).status == 200

    assert (await client.delete(f"{URL}/web/a")).status == 200
    assert (await client.delete(f"{URL}/web/a")).status == 404
    assert (await client.post(f"{URL}/web/a/heartbeat")).status == 404
    assert (await client.get(f"{URL}/web/a")).status == 404
    assert requests_counted("put", 201) == created_before + 2
    assert REGISTRY.get_sample_value("sdbridge_registry_instances") == 1


BAD_REQUESTS = [
    # (what, path, body, expected status, field)
    ("malformed JSON", "web/a", b'{"address": "127.0.0.1:80",', 400, "body"),
    ("not JSON at all", "web/a", b"address=127.0.0.1:80", 400, "body"),
    ("JSON that is not an object", "web/a", b'["127.0.0.1:80"]', 400, "body"),
    ("empty body", "web/a", b"", 400, "body"),
    ("unknown field", "web/a", {"address": "127.0.0.1:80", "tags": []}, 400, "tags"),
    ("missing address", "web/a", {"labels": {}}, 400, "address"),
    ("address without port", "web/a", {"address": "127.0.0.1"}, 400, "address"),
    ("address with port 0", "web/a", {"address": "127.0.0.1:0"}, 400, "address"),
    ("address that is a URL", "web/a", {"address": "http://127.0.0.1:80/metrics"}, 400, "address"),
    ("address not a string", "web/a", {"address": 80}, 400, "address"),
    (
        "label name with a dash",
        "web/a",
        {"address": "127.0.0.1:80", "labels": {"a-b": "x"}},
        400,
        "labels.a-b",
    ),
    (
        "label name with a digit first",
        "web/a",
        {"address": "127.0.0.1:80", "labels": {"1a": "x"}},
        400,
        "labels.1a",
    ),
    (
        "reserved label name",
        "web/a",
        {"address": "127.0.0.1:80", "labels": {"__meta_x": "x"}},
        400,
        "labels.__meta_x",
    ),
    (
        "label value not a string",
        "web/a",
        {"address": "127.0.0.1:80", "labels": {"a": 1}},
        400,
        "labels.a",
    ),
    ("labels not an object", "web/a", {"address": "127.0.0.1:80", "labels": ["a"]}, 400, "labels"),
    ("ttl of zero", "web/a", {"address": "127.0.0.1:80", "ttl": "0s"}, 400, "ttl"),
    ("negative ttl", "web/a", {"address": "127.0.0.1:80", "ttl": -1}, 400, "ttl"),
    ("ttl of ten years", "web/a", {"address": "127.0.0.1:80", "ttl": "10y"}, 400, "ttl"),
    ("ttl of 1e308 seconds", "web/a", {"address": "127.0.0.1:80", "ttl": 1e308}, 400, "ttl"),
    ("ttl not a duration", "web/a", {"address": "127.0.0.1:80", "ttl": "forever"}, 400, "ttl"),
    ("service name with a space", "web%20x/a", {"address": "127.0.0.1:80"}, 400, "service"),
    ("instance id starting with a dash", "web/-a", {"address": "127.0.0.1:80"}, 400, "instance"),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
async def test_bad_input_is_refused_and_nothing_stored_is_lost(
    client: TestClient[Any, Any], path: str, body: Any, status: int, field: str
) -> None:
    original = {"address": "127.0.0.1:80", "labels": {"env": "dev"}, "ttl": "1h"}
    assert (await put(client, "web/a", original)).status == 201
    before = await listing(client)

    response = await put(client, path, body)
    assert response.status == status
    error = await response.json()
    assert error["status"] == "error"
    assert error["field"] == field
    assert error["error"]  # a message that says what is wrong

    assert await listing(client) == before


async def test_oversized_body_is_refused(client: TestClient[Any, Any]) -> None:
    assert (await put(client, "web/a", {"address": "127.0.0.1:80"})).status == 201
    before = await listing(client)
    big = {"address": "127.0.0.1:81", "labels": {"pad": "x" * MAX_BODY_BYTES}}
    response = await put(client, "web/a", big)
    assert response.status == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        for _ in range(MAX_BODY_BYTES // 1024 + 2):
            yield b" " * 1024

    response = await client.put(f"{URL}/web/a", data=chunks())
    assert response.status == 413
    assert await listing(client) == before


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer"}, 401),
        ({"Authorization": f"Basic {TOKEN}"}, 401),
        ({"Authorization": "Bearer wrong"}, 403),
        ({"Authorization": f"Bearer {TOKEN}x"}, 403),
    ],
)
async def test_missing_or_wrong_token_is_refused(
    token_client: TestClient[Any, Any], headers: dict[str, str], status: int
) -> None:
    good = {"Authorization": f"Bearer {TOKEN}"}
    body = {"address": "127.0.0.1:80"}
    assert (await put(token_client, "web/a", body, headers=good)).status == 201
    before = await listing(token_client)  # reads need no token

    assert (await put(token_client, "web/b", body, headers=headers)).status == status
    assert (await token_client.post(f"{URL}/web/a/heartbeat", headers=headers)).status == status
    response = await token_client.delete(f"{URL}/web/a", headers=headers)
    assert response.status == status
    assert (await response.json())["error"]
    assert await listing(token_client) == before
    assert (await token_client.delete(f"{URL}/web/a", headers=good)).status == 200


async def test_token_file_is_reread_when_it_changes(
    token_client: TestClient[Any, Any], tmp_path: Path
) -> None:
    body = {"address": "127.0.0.1:80"}
    (tmp_path / "token").write_text("rotated-token-value")
    assert (
        await put(token_client, "web/a", body, headers={"Authorization": f"Bearer {TOKEN}"})
    ).status == 403
    assert (
        await put(
            token_client, "web/a", body, headers={"Authorization": "Bearer rotated-token-value"}
        )
    ).status == 201
    (tmp_path / "token").unlink()  # unreadable: writes fail closed
    assert (
        await put(
            token_client, "web/b", body, headers={"Authorization": "Bearer rotated-token-value"}
        )
    ).status == 503


async def test_missing_token_file_fails_the_start(tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path, {"write_token_file": "absent"})
    app = create_app(daemon, route_hooks=[registry_routes(daemon)])
    runner = web.AppRunner(app)
    with pytest.raises(ConfigError, match=r"registry.write_token_file .*absent"):
        await runner.setup()
    await runner.cleanup()


async def test_token_writes_skip_basic_auth_but_reads_need_it(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN)
    daemon = make_daemon(tmp_path, {"write_token_file": "token"})
    web_config = write_web_config(tmp_path / "web.yml", users={"alice": "pw"})
    server = await start_server(
        daemon, "127.0.0.1:0", web_config, route_hooks=[registry_routes(daemon)]
    )
    try:
        async with aiohttp.ClientSession() as session:
            url = f"{server.url}{URL}/web/a"
            body = orjson.dumps({"address": "127.0.0.1:80"})
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            async with session.put(url, data=body, headers=bearer) as response:
                assert response.status == 201
            async with session.get(url) as response:
                assert response.status == 401  # reads keep basic auth
            async with session.get(url, headers=BASIC) as response:
                assert response.status == 200
            async with session.put(url, data=body, headers=BASIC) as response:
                assert response.status == 401  # writes need the token, not the password
    finally:
        await server.close()
        await daemon.stop()


async def test_registration_reaches_http_sd(tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path, {"register_self": True})
    server = await start_server(daemon, "127.0.0.1:0", route_hooks=[registry_routes(daemon)])
    await server_listening(server.runner.app, server.url)
    daemon.start()
    try:
        async with aiohttp.ClientSession() as session:

            async def sd() -> list[dict[str, Any]]:
                async with session.get(f"{server.url}/sd/registry") as response:
                    return await response.json() if response.status == 200 else []

            async def has_targets(targets: list[list[str]]) -> bool:
                return [g["targets"] for g in await sd()] == targets

            async def has_group(group: dict[str, Any]) -> bool:
                return group in await sd()

            own = f"127.0.0.1:{server.port}"
            await eventually(
                lambda: has_targets([[own]]), "sdbridge's own registration in /sd/registry"
            )
            body = orjson.dumps({"address": "127.0.0.5:9100", "labels": {"team": "a"}})
            async with session.put(f"{server.url}{URL}/node/n1", data=body) as response:
                assert response.status == 201
            expected = {
                "targets": ["127.0.0.5:9100"],
                "labels": {
                    "team": "a",
                    "__meta_registry_service": "node",
                    "__meta_registry_instance": "n1",
                },
            }
            await eventually(lambda: has_group(expected), "the registration in /sd/registry")
    finally:
        await server.close()  # first, as `sdbridge run` does: it deregisters sdbridge itself
        await daemon.stop()
    # sdbridge deregisters itself when it stops; the other registration stays.
    with contextlib.closing(sqlite3.connect(db_path(tmp_path / "data"))) as db:
        assert db.execute("SELECT service, instance FROM instances").fetchall() == [("node", "n1")]


async def test_a_reloaded_config_applies_to_the_next_request(tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path)
    app = create_app(daemon, route_hooks=[registry_routes(daemon)])
    async with TestClient(TestServer(app)) as client:
        assert (await put(client, "web/a", {"address": "127.0.0.1:80"})).status == 201
        # What a reload does: the daemon's config is replaced.
        (tmp_path / "token").write_text(TOKEN)
        daemon.config = make_daemon(tmp_path, {"write_token_file": "token", "max_ttl": "1m"}).config
        assert (await put(client, "web/b", {"address": "127.0.0.1:81"})).status == 401
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        response = await put(
            client, "web/b", {"address": "127.0.0.1:81", "ttl": "2m"}, headers=bearer
        )
        assert response.status == 400
        assert (await response.json())["field"] == "ttl"
        assert [i["instance"] for i in await listing(client)] == ["a"]
    await daemon.stop()


def encode(value: object) -> bytes:
    return json.dumps(value).encode()  # any int, and Infinity: orjson must refuse those


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
BODIES = st.one_of(
    st.binary(max_size=64),
    JSON_VALUES.map(encode),
    st.fixed_dictionaries(
        {},
        optional={
            "address": st.one_of(
                JSON_VALUES, st.from_regex(r"127\.0\.0\.[0-9]{1,3}:[0-9]{1,6}", fullmatch=True)
            ),
            "labels": st.one_of(
                JSON_VALUES, st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3)
            ),
            "ttl": st.one_of(JSON_VALUES, st.sampled_from(["30s", "1m", "0s", "25h", "1h30m"])),
        },
    ).map(encode),
)


@given(BODIES)
def test_any_body_is_either_a_valid_registration_or_a_named_refusal(body: bytes) -> None:
    config = RegistryConfig()
    try:
        address, labels, ttl = parse_registration(body, config)
    except RegistrationError as exc:
        refusal = (exc.field, str(exc))
        assert all(refusal)  # it names the field and says what is wrong
        return
    # Accepted: exactly what Prometheus accepts as a target, within the ttl bounds.
    assert TargetGroup(source="x", targets=({"__address__": address},), labels=labels)
    assert all(not name.startswith("__") for name in labels)
    assert config.min_ttl <= ttl <= config.max_ttl
