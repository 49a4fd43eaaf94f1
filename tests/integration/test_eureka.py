"""eureka_sd against the Eureka double over HTTP: one request per refresh, reconciling,
falling back to full fetches, and keeping the last good targets on any bad answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import ClientSession

from sdbridge.discovery.base import DiscoveryContext
from sdbridge.discovery.eureka import (
    INLINE_DECODE_MAX,
    MAX_DELTA_GAP,
    EurekaDiscoverer,
    EurekaSDConfig,
)
from sdbridge.errors import BackendError
from sdbridge.model import TargetGroup
from tests.doubles.eureka_double import EurekaDouble, instance, running
from tests.servers.common import free_port
from tests.unit.fakes import background


@pytest.fixture
def eureka() -> Iterator[EurekaDouble]:
    with running() as double:
        yield double


class Clock:
    """An injected monotonic clock: refreshes happen when the test says, not in real time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def discoverer(server: str, **options: Any) -> AsyncIterator[EurekaDiscoverer]:
    context = DiscoveryContext(job="eureka-test", mechanism="eureka")
    invalid: list[str] = []
    context.record_invalid = lambda what, error: invalid.append(f"{what}: {error}")  # type: ignore[method-assign]
    found = EurekaDiscoverer(EurekaSDConfig(server=server, **options), context)
    found.clock = Clock()
    found.invalid = invalid  # type: ignore[attr-defined]
    async with found.http:
        yield found


def addresses(groups: list[TargetGroup]) -> dict[str, list[str]]:
    return {g.source: sorted(t["__address__"] for t in g.targets) for g in groups}


async def test_a_full_fetch_then_one_delta_per_refresh(eureka: EurekaDouble) -> None:
    web1 = eureka.register(instance("web", "127.0.0.1", 8080))
    eureka.register(instance("api", "127.0.0.2", 9090, metadata={"prometheus.path": "/m"}))
    async with discoverer(eureka.url) as d:
        assert addresses(await d.refresh()) == {
            "WEB": ["127.0.0.1:8080"],
            "API": ["127.0.0.2:9090"],
        }
        eureka.register(instance("web", "127.0.0.3", 8080))
        eureka.set_status("web", web1, "DOWN")
        groups = {g.source: g for g in await d.refresh()}
        assert addresses(list(groups.values()))["WEB"] == ["127.0.0.1:8080", "127.0.0.3:8080"]
        statuses = {t["__meta_eureka_app_instance_status"] for t in groups["WEB"].targets}
        assert statuses == {"UP", "DOWN"}
        eureka.cancel("api", "127.0.0.2:api:9090")
        assert "API" not in addresses(await d.refresh())
        for _ in range(3):
            await d.refresh()  # nothing changed: still one small request each
    assert eureka.requests == {"/apps": 1, "/apps/delta": 5}
    assert d.fetches == {"full": 1, "delta": 5}


async def test_a_hash_code_mismatch_means_a_full_fetch(eureka: EurekaDouble) -> None:
    eureka.retention = 0.0  # the delta window is empty: changes are missed by deltas
    eureka.register(instance("web", "127.0.0.1", 8080))
    async with discoverer(eureka.url) as d:
        await d.refresh()
        eureka.register(instance("web", "127.0.0.2", 8080))
        assert addresses(await d.refresh())["WEB"] == ["127.0.0.1:8080", "127.0.0.2:8080"]
        assert d.fetches == {"full": 2, "delta": 1, "reconcile": 1}


async def test_a_gap_longer_than_the_delta_window_means_a_full_fetch(
    eureka: EurekaDouble,
) -> None:
    eureka.register(instance("web", "127.0.0.1", 8080))
    async with discoverer(eureka.url) as d:
        await d.refresh()
        d.clock.now += MAX_DELTA_GAP - 1  # type: ignore[attr-defined]
        await d.refresh()
        d.clock.now += MAX_DELTA_GAP  # type: ignore[attr-defined]
        await d.refresh()
    assert d.fetches == {"full": 2, "delta": 1}


async def test_delta_off_fetches_everything_every_time(eureka: EurekaDouble) -> None:
    eureka.register(instance("web", "127.0.0.1", 8080))
    async with discoverer(eureka.url, delta=False) as d:
        for _ in range(3):
            await d.refresh()
    assert eureka.requests == {"/apps": 3}


async def test_a_refused_delta_falls_back_to_full_fetches() -> None:
    with running(disable_delta=True) as eureka:
        eureka.register(instance("web", "127.0.0.1", 8080))
        async with discoverer(eureka.url) as d:
            await d.refresh()
            eureka.register(instance("web", "127.0.0.2", 8080))
            assert len((await d.refresh())[0].targets) == 2  # 403, then /apps
            await d.refresh()  # the 403 is remembered: /apps directly
        assert eureka.requests == {"/apps": 3, "/apps/delta": 1}


@pytest.mark.parametrize(
    ("path", "fault", "message"),
    [
        ("^/apps/delta$", {"kind": "malformed"}, "/apps/delta: answer is <html>, not Eureka's"),
        ("^/apps/delta$", {"kind": "truncated"}, "/apps/delta: answer is not well-formed XML"),
        ("^/apps/delta$", {"kind": "reset"}, "/apps/delta: "),
        ("^/apps$", {"kind": "status", "status": 500}, "/apps: HTTP 500: injected fault"),
        ("^/apps$", {"kind": "truncated"}, "/apps: answer is not well-formed XML"),
    ],
)
async def test_a_bad_answer_keeps_the_last_good_copy(
    eureka: EurekaDouble, path: str, fault: dict[str, Any], message: str
) -> None:
    eureka.register(instance("web", "127.0.0.1", 8080))
    async with discoverer(eureka.url) as d:
        first = await d.refresh()
        eureka.register(instance("web", "127.0.0.2", 8080))
        eureka.add_fault(path=path, count=2, **fault)  # 2: aiohttp retries a reset once
        if path == "^/apps$":
            eureka.add_fault("status", "^/apps/delta$", status=503, count=1)  # forces /apps
        with pytest.raises(BackendError, match=f"^eureka {eureka.url}") as error:
            await d.refresh()
        assert message in str(error.value)
        assert list(d.groups.values()) == first  # nothing of the failed refresh is kept
        eureka.clear_faults()
        assert addresses(await d.refresh())["WEB"] == ["127.0.0.1:8080", "127.0.0.2:8080"]


async def test_server_down_names_the_mechanism_and_server() -> None:
    server = f"http://127.0.0.1:{free_port()}/eureka"
    async with discoverer(server.replace("//", "//user:pw@")) as d:
        with pytest.raises(BackendError, match=f"^eureka {server}/apps: .*Connect") as error:
            await d.refresh()
    assert "pw" not in str(error.value)


async def test_bad_instances_are_skipped_and_reported_once(eureka: EurekaDouble) -> None:
    eureka.register(instance("web", "127.0.0.1", 8080))
    eureka.register(instance("web", "127.0.0.2", 0))
    async with discoverer(eureka.url, delta=False) as d:
        for _ in range(2):
            assert addresses(await d.refresh()) == {"WEB": ["127.0.0.1:8080"]}
    assert d.invalid == [  # type: ignore[attr-defined]
        f"eureka {eureka.url}: application 'WEB' instance '127.0.0.2:web:0':"
        " address '127.0.0.2:0' is not a valid host:port"
    ]


async def test_json_answers_and_basic_auth() -> None:
    with running(json_only=True, basic_auth=("eureka", "s3cret")) as eureka:
        eureka.register(instance("web", "127.0.0.1", 8080, metadata={"a": "x&y"}))
        async with discoverer(eureka.url) as d:
            with pytest.raises(BackendError, match=r"HTTP 401 \(check basic_auth") as error:
                await d.refresh()
            assert "s3cret" not in str(error.value)
        auth = {"basic_auth": {"username": "eureka", "password": "s3cret"}}
        async with discoverer(eureka.url, **auth) as d:
            [group] = await d.refresh()
            eureka.register(instance("web", "127.0.0.2", 8080))
            [group] = await d.refresh()
        assert len(group.targets) == 2
        assert group.targets[0]["__meta_eureka_app_instance_metadata_a"] == "x&y"
        assert d.fetches == {"full": 1, "delta": 1}


async def test_server_down_keeps_the_last_good_targets_then_recovers() -> None:
    """Through the real refresh loop: nothing is sent while Eureka is down; after it
    comes back empty (a restarted server) the delta does not add up, and the full fetch
    that follows removes what is gone."""
    sent: list[list[TargetGroup]] = []
    eureka = EurekaDouble().start()
    eureka.register(instance("web", "127.0.0.1", 8080))
    context = DiscoveryContext(job="eureka-test", mechanism="eureka")
    config = EurekaSDConfig(server=eureka.url, refresh_interval="50ms")  # type: ignore[arg-type]
    async with background(EurekaDiscoverer(config, context).run(_append(sent, context))):
        await _until(lambda: len(sent) >= 1)
        assert addresses(sent[0]) == {"WEB": ["127.0.0.1:8080"]}
        eureka.stop()
        await _until(lambda: context.status.failures >= 2)
        assert context.status.last_error is not None
        assert context.status.last_error.startswith(f"eureka {eureka.url}/apps/delta: ")
        assert all(not groups for groups in sent[1:])  # no change sent while down
        restarted = EurekaDouble(port=eureka.port).start()
        try:
            restarted.register(instance("api", "127.0.0.2", 9090))
            await _until(lambda: any(g.source == "API" for groups in sent for g in groups))
        finally:
            restarted.stop()
        changes = {g.source: g.targets for groups in sent for g in groups}
        assert changes["WEB"] == ()  # removed, by the reconcile fetch
        assert context.status.failing_since is None


def _append(
    sent: list[list[TargetGroup]], context: DiscoveryContext | None = None
) -> Callable[[list[TargetGroup]], Awaitable[None]]:
    """A send that records what it gets and, like the job, records the accepted sync."""

    async def send(groups: list[TargetGroup]) -> None:
        sent.append(groups)
        if context is not None:
            context.record_sync()

    return send


async def _until(condition: Callable[[], bool], limit: int = 600) -> None:
    """Yield to the loop until ``condition`` holds (at most ``limit`` times 50 ms)."""
    for _ in range(limit):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def test_a_large_registry_is_decoded_off_the_event_loop(eureka: EurekaDouble) -> None:
    for n in range(300):  # > INLINE_DECODE_MAX of XML
        eureka.register(instance(f"app-{n % 30}", f"127.0.1.{n % 250 + 1}", 8000 + n))
    async with discoverer(eureka.url) as d:
        groups = await d.refresh()
    assert eureka.body_bytes["/apps"] > INLINE_DECODE_MAX
    assert sum(len(g.targets) for g in groups) == 300
    assert d.decode_cpu > 0


async def test_the_double_speaks_eurekas_rest_api() -> None:
    """Register, heartbeat, status override, metadata, cancel and eviction over HTTP,
    as a Eureka client does them, and what /apps and /apps/delta then say."""
    now = [0.0]
    with running(clock=lambda: now[0]) as eureka:
        async with ClientSession() as session:
            json_body = {
                "instance": {
                    "instanceId": "h1:orders:8080",
                    "hostName": "127.0.0.1",
                    "app": "ORDERS",
                    "ipAddr": "127.0.0.1",
                    "status": "UP",
                    "port": {"$": 8080, "@enabled": "true"},
                    "dataCenterInfo": {"@class": "x", "name": "MyOwn"},
                    "metadata": {"management.port": "9081"},
                }
            }
            xml_body = (
                "<instance><instanceId>h2:orders:8080</instanceId><hostName>127.0.0.2</hostName>"
                '<app>ORDERS</app><status>UP</status><port enabled="true">8080</port>'
                "<metadata><zone>z1</zone></metadata></instance>"
            )
            apps = f"{eureka.url}/apps"
            async with session.post(f"{apps}/ORDERS", json=json_body) as response:
                assert response.status == 204
            headers = {"Content-Type": "application/xml"}
            async with session.post(f"{apps}/ORDERS", data=xml_body, headers=headers) as response:
                assert response.status == 204
            assert eureka.hash_code() == "UP_2_"
            async with session.put(f"{apps}/ORDERS/h1:orders:8080") as response:
                assert response.status == 200  # heartbeat
            async with session.put(f"{apps}/ORDERS/nobody") as response:
                assert response.status == 404  # unknown lease: the client registers again
            status = f"{apps}/ORDERS/h2:orders:8080/status?value=OUT_OF_SERVICE"
            async with session.put(status) as response:
                assert response.status == 200
            async with session.put(f"{apps}/ORDERS/h1:orders:8080/metadata?v=2") as response:
                assert response.status == 200
            async with session.get(apps, headers={"Accept": "application/json"}) as response:
                assert response.content_type == "application/json"
                body = await response.json()
            root = body["applications"]
            assert root["apps__hashcode"] == "OUT_OF_SERVICE_1_UP_1_"
            [orders] = root["application"]
            ports = {i["instanceId"]: i["port"] for i in orders["instance"]}
            assert ports["h1:orders:8080"] == {"$": 8080, "@enabled": "true"}
            metadata = {i["instanceId"]: i["metadata"] for i in orders["instance"]}
            assert metadata["h1:orders:8080"] == {"management.port": "9081", "v": "2"}
            now[0] = 200.0  # past the delta window, and h2 missed its heartbeats
            assert eureka.renew("ORDERS", "h1:orders:8080")
            assert eureka.evict() == 1
            async with session.get(f"{apps}/delta") as response:
                assert response.content_type == "application/xml"  # XML unless JSON is asked
                delta = await response.text()
            assert "<actionType>DELETED</actionType>" in delta
            assert "h1:orders:8080" not in delta  # its changes are older than 3 minutes
            async with session.delete(f"{apps}/ORDERS/h1:orders:8080") as response:
                assert response.status == 200
            async with session.delete(f"{apps}/ORDERS/h1:orders:8080") as response:
                assert response.status == 404
            assert eureka.instances() == []
            assert eureka.requests["register"] == 2
            assert eureka.requests["heartbeat"] == 2
            assert eureka.requests["cancel"] == 2
