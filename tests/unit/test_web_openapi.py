"""The whole ``/api/v1`` from its OpenAPI description, property-based (schemathesis).

sdbridge's web server runs in a background thread (a real socket on 127.0.0.1), with the
registry on and no write token, as a fresh install has it. schemathesis sends requests
the description allows and requests it does not (negative mode: wrong types, patterns
broken, unknown fields). For each: no 5xx, the answer matches the description (status
code, content type, body schema), and a refused request leaves the store unchanged.
The example count is kept small so the suite stays fast.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from sdbridge.web import openapi
from sdbridge.web.registry_api import registry_routes
from sdbridge.web.server import Server, start_server
from tests.unit.test_registry_api import make_daemon

schema = schemathesis.openapi.from_dict(openapi.document())

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    loop = asyncio.new_event_loop()
    tmp = tmp_path_factory.mktemp("openapi")
    daemon = make_daemon(Path(tmp))

    async def boot() -> Server:
        started = await start_server(daemon, "127.0.0.1:0", route_hooks=[registry_routes(daemon)])
        daemon.start()
        return started

    server = loop.run_until_complete(boot())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        # One registration, so that GETs, heartbeats and deletes can find something.
        response = requests.put(
            f"{server.url}/api/v1/registry/web/a", json={"address": "127.0.0.1:80"}, timeout=10
        )
        assert response.status_code == 201
        yield server.url
    finally:

        async def stop() -> None:
            await server.close()
            await daemon.stop()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _store(base_url: str) -> list[tuple[Any, ...]]:
    instances = requests.get(f"{base_url}/api/v1/registry", timeout=10).json()["data"]["instances"]
    return sorted(
        (i["service"], i["instance"], i["address"], sorted(i["labels"].items()), i["expires_at"])
        for i in instances
    )


def test_the_description_is_served(base_url: str) -> None:
    served = requests.get(f"{base_url}{openapi.PATH}", timeout=10)
    assert served.status_code == 200
    assert served.json() == openapi.document()


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api(case: schemathesis.Case, base_url: str) -> None:
    before = _store(base_url)
    response = case.call(base_url=base_url)
    case.validate_response(response, checks=CHECKS)
    if response.status_code >= 400:
        assert _store(base_url) == before, (case.method, case.formatted_path, response.text)
