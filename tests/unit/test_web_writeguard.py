"""Token-less writes: DNS rebinding and cross-site posts refused (issue 12, finding 5)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from sdbridge.web.app import create_app
from sdbridge.web.flags import WebFlags
from sdbridge.web.registry_api import registry_routes
from sdbridge.web.writeguard import WriteGuard, split_host
from tests.unit.test_registry_api import TOKEN, make_daemon

BODY = orjson.dumps({"address": "169.254.169.254:80", "labels": {"__metrics_path__": "/x"}})
URL = "/api/v1/registry/meta/i1"


async def _client(
    tmp_path: Path, registry: dict[str, Any] | None = None, listen_host: str = "127.0.0.1"
) -> AsyncIterator[TestClient[Any, Any]]:
    daemon = make_daemon(tmp_path, registry)
    flags = WebFlags(enable_lifecycle=True, external_url="https://sd.example.org/")
    app = create_app(
        daemon, route_hooks=[registry_routes(daemon)], flags=flags, listen_host=listen_host
    )
    async with TestClient(TestServer(app)) as client:
        yield client
    await daemon.stop()


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    async for c in _client(tmp_path):
        yield c


async def _stored(client: TestClient[Any, Any]) -> list[str]:
    response = await client.get("/api/v1/registry")
    return [i["instance"] for i in (await response.json())["data"]["instances"]]


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "attacker.example"},  # DNS rebinding
        {"Host": "attacker.example:9099"},
        {"Host": ""},
        {"Origin": "http://attacker.example"},  # a cross-site form post
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
async def test_tokenless_writes_from_elsewhere_are_refused(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    for method, path in (("PUT", URL), ("DELETE", URL), ("POST", URL + "/heartbeat")):
        response = await client.request(method, path, data=BODY, headers=headers)
        assert response.status == 403, (method, headers)
        assert (await response.json())["errorType"] == "forbidden"
    reload = await client.post("/-/reload", headers=headers)
    assert reload.status == 403
    assert await _stored(client) == []


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, scripts: the Host is the address they connected to
        {"Host": "localhost:9099"},
        {"Host": "sd.example.org"},  # --web.external-url
        {"Host": "[::1]:9099"},
        {"Sec-Fetch-Site": "same-origin"},
    ],
)
async def test_tokenless_writes_from_known_names_are_accepted(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    response = await client.put(URL, data=BODY, headers=headers)
    assert response.status == 201
    assert await _stored(client) == ["i1"]


async def test_same_origin_browser_posts_are_accepted(client: TestClient[Any, Any]) -> None:
    host = f"127.0.0.1:{client.port}"
    response = await client.put(URL, data=BODY, headers={"Origin": f"http://{host}"})
    assert response.status == 201


async def test_with_a_token_remote_names_keep_working(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN)
    async for client in _client(tmp_path, {"write_token_file": "token"}, listen_host="0.0.0.0"):
        bearer = {"Authorization": f"Bearer {TOKEN}", "Host": "sdbridge.behind.lb.example"}
        assert (await client.put(URL, data=BODY, headers=bearer)).status == 201


async def test_non_loopback_without_token_refuses_writes_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="sdbridge.registry"):
        async for client in _client(tmp_path, listen_host="0.0.0.0"):
            response = await client.put(URL, data=BODY)
            assert response.status == 403
            assert "registry.write_token_file" in (await response.json())["error"]
            assert await _stored(client) == []
            assert (await client.get("/api/v1/registry")).status == 200  # reads still work
    assert any("registry.write_token_file" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Example.org:9099", ("example.org", "9099")),
        ("[::1]:9099", ("::1", "9099")),
        ("::1", ("::1", "")),
        ("localhost", ("localhost", "")),
    ],
)
def test_split_host(value: str, expected: tuple[str, str]) -> None:
    assert split_host(value) == expected


def test_known_hosts() -> None:
    guard = WriteGuard("sdbridge.internal", ["sd.example.org"])
    assert guard.known_host("sdbridge.internal:9099")
    assert guard.known_host("SD.example.org")
    assert guard.known_host("10.1.2.3:9099")
    assert not guard.known_host("sdbridge.internal.attacker.example")
    assert not guard.loopback_only
    assert WriteGuard("127.0.0.2").loopback_only
