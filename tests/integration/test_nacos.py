"""nacos_sd_configs against the Nacos double: versions, scope, auth, paging, faults."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from sdbridge.config import load_config
from sdbridge.discovery import mechanisms
from sdbridge.discovery.base import DiscoveryContext
from sdbridge.discovery.nacos import NacosDiscoverer, NacosSDConfig
from sdbridge.errors import BackendError
from sdbridge.model import TargetGroup
from sdbridge.relabel import compile_rules, process
from tests.doubles.nacos_double import NacosDouble, running
from tests.servers.nacos_sdk import sdk_python
from tests.unit.fakes import background

VERSIONS = ("1.x", "2.x", "3.x")


def make(double: NacosDouble, **options: Any) -> NacosDiscoverer:
    options.setdefault("server", double.address)
    options.setdefault("grpc", False)
    options.setdefault("request_timeout", "2s")
    config = NacosSDConfig.model_validate(options)
    return NacosDiscoverer(config, DiscoveryContext(job="test", mechanism="nacos"))


async def listing(discoverer: NacosDiscoverer) -> dict[str, dict[str, str]]:
    """Every target of one refresh by instance id."""
    groups = await discoverer.refresh()
    return {t["__meta_nacos_service_instance_id"]: t for g in groups for t in g.merged_targets()}


@contextlib.asynccontextmanager
async def refreshing(double: NacosDouble, **options: Any) -> AsyncIterator[NacosDiscoverer]:
    discoverer = make(double, **options)
    try:
        yield discoverer
    finally:
        await discoverer.client.close()


@pytest.fixture(params=VERSIONS)
def nacos(request: pytest.FixtureRequest) -> Iterator[NacosDouble]:
    with running(version=request.param, grpc=False) as double:
        yield double


def _fill(double: NacosDouble) -> None:
    double.register(
        "orders",
        "127.0.0.1",
        8080,
        metadata={"prometheus.path": "/actuator/prometheus", "management.port": "8081"},
        weight=0.5,
    )
    double.register("orders", "127.0.0.2", 8080, cluster="BJ", healthy=False)
    double.register("orders", "127.0.0.3", 8080, enabled=False)  # offline: never listed
    double.register("pay", "::1", 9090, group="PAY_GROUP", ephemeral=False)


# --- labels and versions -----------------------------------------------------------------


async def test_labels_are_vmagents_plus_weight_and_instance_id(nacos: NacosDouble) -> None:
    _fill(nacos)
    async with refreshing(nacos) as d:
        targets = await listing(d)
        assert d.lister.mode == "bulk"
    assert targets["127.0.0.1#8080#DEFAULT#DEFAULT_GROUP@@orders"] == {
        "__address__": "127.0.0.1:8080",
        "__meta_nacos_service": "orders",
        "__meta_nacos_service_address": "127.0.0.1",
        "__meta_nacos_service_port": "8080",
        "__meta_nacos_service_healthy": "true",
        "__meta_nacos_service_enabled": "true",
        "__meta_nacos_service_ephemeral": "true",
        "__meta_nacos_service_cluster": "DEFAULT",
        "__meta_nacos_service_namespace": "public",
        "__meta_nacos_service_group": "DEFAULT_GROUP",
        "__meta_nacos_service_weight": "0.5",
        "__meta_nacos_service_instance_id": "127.0.0.1#8080#DEFAULT#DEFAULT_GROUP@@orders",
        "__meta_nacos_metadata_prometheus_path": "/actuator/prometheus",
        "__meta_nacos_metadata_management_port": "8081",
    }
    assert targets["127.0.0.2#8080#BJ#DEFAULT_GROUP@@orders"]["__meta_nacos_service_healthy"] == (
        "false"
    )
    pay = targets["::1#9090#DEFAULT#PAY_GROUP@@pay"]
    assert pay["__address__"] == "[::1]:9090"
    assert pay["__meta_nacos_service_group"] == "PAY_GROUP"
    # The 1.x/2.x catalog does not carry the ephemeral flag; 3.x's full Instance does.
    assert pay["__meta_nacos_service_ephemeral"] == ("false" if nacos.major == 3 else "true")
    assert len(targets) == 3  # the disabled instance is not there


async def test_bulk_listing_is_one_request_per_page(nacos: NacosDouble) -> None:
    nacos.load(services=120, instances=2)
    async with refreshing(nacos, page_size=50) as d:
        await d.refresh()  # detection, namespaces, first listing
        nacos.reset_counters()
        groups = await d.refresh()
    assert len(groups) == 120
    path = (
        "/nacos/v3/admin/ns/service/list" if nacos.major == 3 else "/nacos/v1/ns/catalog/services"
    )
    assert nacos.stats()["requests"] == {path: 3}


async def test_version_is_detected(nacos: NacosDouble) -> None:
    async with refreshing(nacos) as d:
        await d.refresh()
        assert d.client.server is not None
        assert d.client.server.major == nacos.major


async def test_2x_catalog_paging_quirk_everything_on_a_short_page() -> None:
    # CatalogServiceV2Impl.doPage: fewer than pageSize -> every service, whatever pageNo.
    with running(version="2.x", grpc=False) as double:
        double.load(services=3, instances=1)
        async with refreshing(double, page_size=5) as d:
            assert len(await d.refresh()) == 3
        assert double.requests["/nacos/v1/ns/catalog/services"] == 1


# --- 3.x: admin switch, the DEFAULT cluster, per-service fallback ------------------------


async def test_3x_non_admin_falls_back_per_service_and_keeps_every_cluster() -> None:
    with running(version="3.x", grpc=False, users={"nacos": "pw", "app": "pw2"}) as double:
        _fill(double)
        # No admin rights: neither the v3 admin list nor the (switched-off) v1 list of
        # services is open, so the services are named; v1 instance list keeps all clusters.
        async with refreshing(double, username="app", password="pw2", services=["orders"]) as d:
            targets = await listing(d)
            assert d.lister.mode == "per-service"
        assert sorted(t["__meta_nacos_service_cluster"] for t in targets.values()) == [
            "BJ",
            "DEFAULT",
        ]
        assert double.requests["/nacos/v3/admin/ns/service/list"] == 1  # probed once
        assert double.requests["/nacos/v1/ns/instance/list"] == 1


async def test_3x_client_api_is_given_the_clusters() -> None:
    with running(version="3.x", grpc=False, users={"app": "pw"}) as double:
        _fill(double)
        async with refreshing(
            double, username="app", password="pw", services=["orders"], clusters=["BJ", "DEFAULT"]
        ) as d:
            targets = await listing(d)
        assert len(targets) == 2
        assert double.requests["/nacos/v3/client/ns/instance/list"] == 1


async def test_3x_without_a_service_list_says_what_to_do() -> None:
    with running(version="3.x", grpc=False, users={"app": "pw"}) as double:
        _fill(double)
        async with refreshing(double, username="app", password="pw") as d:
            with pytest.raises(BackendError, match="name the services in `services`"):
                await d.refresh()


async def test_3x_admin_compat_switch_opens_the_v1_catalog() -> None:
    with running(version="3.x", grpc=False, admin_api_compat=True) as double:
        _fill(double)
        async with refreshing(double) as d:
            await d.refresh()
        assert double.requests["/nacos/v1/ns/catalog/services"] == 0  # v3 admin preferred
        assert double.requests["/nacos/v3/admin/ns/service/list"] == 1


async def test_per_service_fallback_on_1x_2x_when_the_catalog_is_hidden() -> None:
    with running(version="2.x", grpc=False) as double:
        double.load(services=7, instances=2)
        double.add_fault("status", "/catalog/", status=404, body="Not Found")
        async with refreshing(double, page_size=3) as d:
            groups = await d.refresh()
            assert d.lister.mode == "per-service"
        assert len(groups) == 7
        assert double.requests["/nacos/v1/ns/service/list"] == 3  # 7 names, 3 a page
        assert double.requests["/nacos/v1/ns/instance/list"] == 7


# --- scope -------------------------------------------------------------------------------


async def test_group_services_clusters_healthy_only(nacos: NacosDouble) -> None:
    _fill(nacos)
    async with refreshing(nacos, group="PAY_GROUP") as d:
        assert [t["__meta_nacos_service"] for t in (await listing(d)).values()] == ["pay"]
    async with refreshing(nacos, services=["orders"]) as d:
        assert {t["__meta_nacos_service"] for t in (await listing(d)).values()} == {"orders"}
    async with refreshing(nacos, clusters=["BJ"]) as d:
        assert list(await listing(d)) == ["127.0.0.2#8080#BJ#DEFAULT_GROUP@@orders"]
    async with refreshing(nacos, healthy_only=True) as d:
        targets = await listing(d)
        assert "127.0.0.2#8080#BJ#DEFAULT_GROUP@@orders" not in targets
        assert len(targets) == 2


async def test_default_group_only_where_groups_cannot_be_listed() -> None:
    with running(version="2.x", grpc=False) as double:
        _fill(double)
        double.add_fault("status", "/catalog/", status=410)
        async with refreshing(double) as d:
            services = {t["__meta_nacos_service"] for t in (await listing(d)).values()}
        assert services == {"orders"}  # PAY_GROUP needs `group`


async def test_namespaces(nacos: NacosDouble) -> None:
    nacos.add_namespace("dev")
    nacos.register("a", "127.0.0.1", 1)
    nacos.register("b", "127.0.0.2", 2, namespace="dev")
    async with refreshing(nacos, namespace=["*"]) as d:
        targets = await listing(d)
    assert sorted(t["__meta_nacos_service_namespace"] for t in targets.values()) == [
        "dev",
        "public",
    ]
    # "" is the public namespace on every version, and is labelled "public".
    async with refreshing(nacos, namespace=[""]) as d:
        [target] = (await listing(d)).values()
        assert target["__meta_nacos_service_namespace"] == "public"
    async with refreshing(nacos, namespace="nope") as d:
        with pytest.raises(BackendError, match="namespace 'nope' does not exist"):
            await d.refresh()


# --- auth --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_login_v3_with_v1_fallback(version: str) -> None:
    with running(version=version, grpc=False, users={"nacos": "secret"}) as double:
        _fill(double)
        async with refreshing(double, username="nacos", password="secret") as d:
            assert len(await listing(d)) == 3
        path = "/nacos/v3/auth/user/login" if version == "3.x" else "/nacos/v1/auth/users/login"
        assert double.logins == {path: 1}


async def test_login_refused_names_the_server() -> None:
    with running(version="2.x", grpc=False, users={"nacos": "secret"}) as double:
        async with refreshing(double, username="nacos", password="wrong") as d:
            with pytest.raises(BackendError, match="login refused") as caught:
                await d.refresh()
        assert double.address in str(caught.value)
        assert "wrong" not in str(caught.value)


async def test_password_file(tmp_path: Any) -> None:
    (tmp_path / "pw").write_text("secret\n")
    with running(version="2.x", grpc=False, users={"nacos": "secret"}) as double:
        _fill(double)
        async with refreshing(double, username="nacos", password_file=str(tmp_path / "pw")) as d:
            assert len(await listing(d)) == 3


async def test_token_renewed_before_ttl_and_on_403() -> None:
    with running(version="3.x", grpc=False, users={"nacos": "secret"}, token_ttl=100) as double:
        _fill(double)
        now = [0.0]
        async with refreshing(double, username="nacos", password="secret") as d:
            d.client.clock = lambda: now[0]
            await d.refresh()
            assert d.client.logins == 1
            now[0] = 50.0
            await d.refresh()
            assert d.client.logins == 1
            now[0] = 91.0  # past 90 % of tokenTtl: renewed before it runs out
            await d.refresh()
            assert d.client.logins == 2
            double.expire_tokens()  # expired mid-refresh, earlier than announced
            assert len(await listing(d)) == 3
            assert d.client.logins == 3


# --- bad input and faults ----------------------------------------------------------------


async def test_port_0_and_malformed_ip_are_skipped_and_counted(nacos: NacosDouble) -> None:
    _fill(nacos)
    nacos.register("orders", "127.0.0.9", 0)
    nacos.register("orders", "not an ip!", 80)
    async with refreshing(nacos) as d:
        targets = await listing(d)
        assert len(targets) == 3
        assert len(d.skipped) == 2
        assert "port 0" in " ".join(d.skipped)
        assert "'not an ip!'" in " ".join(d.skipped)


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "status", "status": 500},
        {"kind": "malformed"},
        {"kind": "truncated"},
        {"kind": "reset"},
    ],
)
async def test_a_failed_page_fails_the_whole_listing(fault: dict[str, Any]) -> None:
    with running(version="3.x", grpc=False) as double:
        double.load(services=30, instances=1)
        async with refreshing(double, page_size=10) as d:
            assert len(await d.refresh()) == 30
            # Page 2 of 3 fails: the listing fails, nothing partial comes out.
            # (aiohttp retries a GET once on a reset keep-alive connection: keep failing.)
            injected = double.add_fault(path="/admin/ns/service/list", after=1, **fault)
            with pytest.raises(BackendError):
                await d.refresh()
            assert injected.hits >= 1
            double.clear_faults()
            assert len(await d.refresh()) == 30  # recovered


async def test_a_failed_service_fails_the_per_service_listing() -> None:
    with running(version="2.x", grpc=False) as double:
        double.load(services=5, instances=1)
        double.add_fault("status", "/catalog/", status=404)
        async with refreshing(double) as d:
            assert len(await d.refresh()) == 5
            double.add_fault("truncated", "/instance/list", count=1)
            with pytest.raises(BackendError, match="JSON"):
                await d.refresh()
            assert len(await d.refresh()) == 5


def _dead_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


async def test_servers_are_tried_in_turn() -> None:
    with running(version="2.x", grpc=False) as double:
        _fill(double)
        async with refreshing(double, server=[_dead_address(), double.address]) as d:
            assert len(await listing(d)) == 3
            assert d.client.server is not None
            assert d.client.server.address == double.address


async def test_no_server_answers() -> None:
    dead = _dead_address()
    with running(version="2.x", grpc=False):
        async with refreshing(NacosDouble(), server=[dead]) as d:
            with pytest.raises(BackendError, match="no Nacos server answered") as caught:
                await d.refresh()
    assert dead in str(caught.value)


async def test_run_keeps_the_last_good_targets_on_failure() -> None:
    with running(version="2.x", grpc=False) as double:
        _fill(double)
        discoverer = make(double, refresh_interval="50ms")
        sends: list[list[TargetGroup]] = []

        async def send(groups: list[TargetGroup]) -> None:
            sends.append(groups)

        task = asyncio.create_task(discoverer.run(send))
        try:
            await _until(lambda: len(sends) >= 1)
            double.add_fault("status", "/catalog/", status=503)
            failures = discoverer.context.status.failures
            await _until(lambda: discoverer.context.status.failures > failures)
            sent = len(sends)
            await _until(lambda: discoverer.context.status.failures > failures + 1)
            assert len(sends) == sent  # a failed refresh sends nothing
            assert "nacos" in (discoverer.context.status.last_error or "").lower()
            double.clear_faults()
            double.register("new", "127.0.0.7", 7)
            await _until(lambda: any(g.source.endswith("/new") for s in sends for g in s))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _until(condition: Callable[[], bool], limit: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


# --- config ------------------------------------------------------------------------------


def test_registered_and_config_errors() -> None:
    assert mechanisms()["nacos"].config_key == "nacos_sd_configs"
    config = NacosSDConfig.model_validate({"server": "127.0.0.1:8848"})
    assert config.server == ["127.0.0.1:8848"]
    assert config.namespace == ["public"]
    for bad in (
        {"server": []},
        {"server": [""]},
        {"server": "a", "password": "x"},
        {"server": "a", "username": "u", "password": "x", "password_file": "f"},
        {"server": "a", "namespace": ["*", "dev"]},
        {"server": "a", "page_size": 0},
        {"server": "a", "bogus": 1},
    ):
        with pytest.raises(ValidationError):
            NacosSDConfig.model_validate(bad)


# --- gRPC subscription -------------------------------------------------------------------


class Running:
    """A discoverer running as a job runs it, with its sends applied to ``groups``."""

    def __init__(self, discoverer: NacosDiscoverer) -> None:
        self.discoverer = discoverer
        self.groups: dict[str, TargetGroup] = {}
        self.sends = 0

    async def send(self, groups: list[TargetGroup]) -> None:
        self.sends += 1
        for group in groups:
            if group.targets:
                self.groups[group.source] = group
            else:
                self.groups.pop(group.source, None)

    def addresses(self, service: str) -> list[str]:
        group = self.groups.get(f"nacos/public/DEFAULT_GROUP/{service}")
        return sorted(t["__address__"] for t in group.targets) if group else []


@contextlib.asynccontextmanager
async def running_discoverer(double: NacosDouble, **options: Any) -> AsyncIterator[Running]:
    options.setdefault("grpc", True)
    harness = Running(make(double, **options))
    async with background(harness.discoverer.run(harness.send)):
        yield harness


@pytest.mark.parametrize("version", ["2.x", "3.x"])
async def test_grpc_push_reaches_the_targets_without_http(version: str) -> None:
    with running(version=version, users={"nacos": "pw"}) as double:
        double.load(services=20, instances=2)
        async with running_discoverer(
            double, username="nacos", password="pw", refresh_interval="1h"
        ) as h:
            d = h.discoverer
            await _until(lambda: d.pushing())
            assert d.push is not None
            double.reset_counters()
            double.register("svc-00003", "127.0.0.99", 7000)
            await _until(lambda: "127.0.0.99:7000" in h.addresses("svc-00003"))
            double.deregister("svc-00004", "127.0.0.5", 9000)
            await _until(lambda: h.addresses("svc-00004") == ["127.0.0.5:9001"])
            assert double.stats()["total_requests"] == 0  # pushed, not polled
            assert double.grpc_messages["NotifySubscriberRequest"] == 2
            assert double.grpc_messages["NotifySubscriberResponse"] == 2  # acknowledged


async def test_grpc_per_service_mode_follows_new_services_with_a_name_page() -> None:
    with running(version="2.x") as double:
        double.add_fault("status", "/catalog/", status=404)
        double.load(services=3, instances=1)
        async with running_discoverer(double, refresh_interval="50ms") as h:
            d = h.discoverer
            await _until(lambda: d.pushing() and len(h.groups) == 3)
            double.register("fresh", "127.0.0.50", 80)
            await _until(lambda: h.addresses("fresh") == ["127.0.0.50:80"])
            double.reset_counters()
            sends = h.sends
            await _until(lambda: h.sends > sends + 3)
            # Idle: pages of names only, no instance reads (pushes keep them current).
            assert set(double.stats()["requests"]) <= {"/nacos/v1/ns/service/list"}


async def test_3x_non_admin_lists_services_over_grpc() -> None:
    # Neither the admin list nor the (switched-off) v1 list is open to this user: the
    # gRPC channel's ServiceListRequest names the services, the v1 client API reads them.
    with running(version="3.x", users={"nacos": "pw", "app": "pw2"}) as double:
        _fill(double)
        async with running_discoverer(
            double, username="app", password="pw2", refresh_interval="50ms"
        ) as h:
            await _until(lambda: len(h.addresses("orders")) == 2)
            # The first listing waited for the channel rather than failing.
            assert h.discoverer.context.status.failures == 0
        assert double.grpc_messages["ServiceListRequest"] >= 1


@pytest.mark.parametrize("hidden_catalog", [False, True])
async def test_3x_fuzzy_watch_finds_new_services_at_once(hidden_catalog: bool) -> None:
    with running(version="3.x") as double:
        if hidden_catalog:
            double.add_fault("status", "/admin/ns/service/list", status=403)
        double.load(services=3, instances=1)
        # An hour between listings: only the fuzzy watch can tell of the new service.
        async with running_discoverer(double, refresh_interval="1h") as h:
            d = h.discoverer
            await _until(lambda: d.pushing() and len(h.groups) == 3)
            double.register("brand-new", "127.0.0.60", 60)
            await _until(lambda: h.addresses("brand-new") == ["127.0.0.60:60"])
            double.remove_service("brand-new")
            await _until(lambda: h.addresses("brand-new") == [])
        assert double.grpc_messages["NamingFuzzyWatchRequest"] >= 1
        assert double.grpc_messages["NamingFuzzyWatchChangeNotifyResponse"] >= 1


async def test_grpc_refused_falls_back_to_polling_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with running(version="2.x", grpc=False) as double:
        _fill(double)
        async with running_discoverer(
            double, refresh_interval="50ms", grpc_port=int(_dead_address().split(":")[1])
        ) as h:
            await _until(lambda: h.sends >= 5)
            assert not h.discoverer.pushing()
            double.register("late", "127.0.0.8", 8)
            await _until(lambda: h.addresses("late") == ["127.0.0.8:8"])  # by polling
    refused = [r for r in caplog.records if "gRPC channel" in r.getMessage()]
    assert len(refused) == 1
    assert "refused" in refused[0].getMessage()
    assert "polling" in refused[0].getMessage()


async def test_grpc_reset_then_back(caplog: pytest.LogCaptureFixture) -> None:
    with running(version="3.x") as double:
        double.load(services=2, instances=1)
        async with running_discoverer(double, refresh_interval="100ms") as h:
            d = h.discoverer
            await _until(lambda: d.pushing())
            grpc_server = double.grpc_server
            assert grpc_server is not None
            future = asyncio.run_coroutine_threadsafe(grpc_server.restart(), double._loop)  # type: ignore[arg-type]
            await asyncio.wrap_future(future)
            await _until(lambda: any("reset" in r.getMessage() for r in caplog.records))
            await _until(lambda: any("is back" in r.getMessage() for r in caplog.records))
            await _until(lambda: d.pushing())
            double.register("svc-00001", "127.0.0.77", 77)
            await _until(lambda: "127.0.0.77:77" in h.addresses("svc-00001"))
    assert sum("reset" in r.getMessage() for r in caplog.records) == 1


async def test_no_grpc_on_1x() -> None:
    with running(version="1.x") as double:
        _fill(double)
        async with running_discoverer(double, refresh_interval="50ms") as h:
            await _until(lambda: h.sends >= 2)
            assert h.discoverer.push is None


# --- the official client against the double ----------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("version", ["2.x", "3.x"])
async def test_official_python_client_registers_and_subscribes(version: str, tmp_path: Any) -> None:
    """nacos-sdk-python (gRPC + v1 login) works against the double as against Nacos."""
    python = sdk_python()
    script = Path(__file__).parents[1] / "doubles" / "nacos_sdk_client.py"
    with running(version=version, users={"nacos": "pw"}) as double:
        double.register("watched", "127.0.0.40", 40)
        process = await asyncio.create_subprocess_exec(
            str(python),
            str(script),
            double.address,
            "nacos",
            "pw",
            str(tmp_path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        assert process.stdin is not None

        async def event(name: str) -> dict[str, Any]:
            while True:
                line = await asyncio.wait_for(process.stdout.readline(), 60)  # type: ignore[union-attr]
                assert line, f"the SDK client ended before {name}"
                found = orjson.loads(line)
                if found["event"] == name:
                    return dict(found)

        try:
            assert (await event("registered"))["ok"] is True
            assert (await event("subscribed"))["addresses"] == ["127.0.0.40:40"]
            # Its registration is what sdbridge lists, over HTTP and over gRPC.
            async with refreshing(double, username="nacos", password="pw") as d:
                sdk_app = (await listing(d))["127.0.0.31#8031#DEFAULT#DEFAULT_GROUP@@sdk-app"]
            assert sdk_app["__meta_nacos_metadata_prometheus_path"] == "/metrics"
            double.register("watched", "127.0.0.41", 41)
            pushed = await event("pushed")
            assert pushed["addresses"] == ["127.0.0.40:40", "127.0.0.41:41"]
            assert double.logins["/nacos/v1/auth/users/login"] >= 1
            assert double.grpc_messages["SubscribeServiceRequest"] >= 1
            await _until(lambda: double.grpc_messages["NotifySubscriberResponse"] >= 1)
            process.stdin.close()
            await event("done")
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()
        # Its connection closed: its ephemeral instance went with it, as on Nacos 2.x.
        await _until(
            lambda: (
                not double.service_info("public", "DEFAULT_GROUP", "sdk-app", [], False)["hosts"]
            )
        )


# --- examples/nacos ----------------------------------------------------------------------

EXAMPLE = Path(__file__).parents[2] / "examples" / "nacos" / "sdbridge.yml"


def test_example_passes_sdbridge_check() -> None:
    sdbridge = Path(sys.executable).with_name("sdbridge")
    result = subprocess.run(
        [str(sdbridge), "check", str(EXAMPLE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "OK (1 job(s), 1 mechanism(s))" in result.stdout


async def test_example_relabeling_scrapes_where_metadata_says() -> None:
    config = load_config(EXAMPLE)
    rules = compile_rules(config.jobs[0].relabel_configs)
    with running(version="2.x", grpc=False) as double:
        _fill(double)  # orders@127.0.0.1 announces prometheus.path and management.port
        double.register("legacy", "127.0.0.5", 80, metadata={"prometheus.scrape": "false"})
        double.register("v6", "::1", 80, metadata={"management.port": "9100"})
        async with refreshing(double) as d:
            targets = await listing(d)
    orders = process(targets["127.0.0.1#8080#DEFAULT#DEFAULT_GROUP@@orders"], rules)
    assert orders is not None
    assert orders["__address__"] == "127.0.0.1:8081"
    assert orders["__metrics_path__"] == "/actuator/prometheus"
    assert (orders["service"], orders["namespace"], orders["cluster"]) == (
        "orders",
        "public",
        "DEFAULT",
    )
    plain = process(targets["127.0.0.2#8080#BJ#DEFAULT_GROUP@@orders"], rules)
    assert plain is not None
    assert plain["__address__"] == "127.0.0.2:8080"
    assert "__metrics_path__" not in plain
    assert process(targets["127.0.0.5#80#DEFAULT#DEFAULT_GROUP@@legacy"], rules) is None
    v6 = process(targets["::1#80#DEFAULT#DEFAULT_GROUP@@v6"], rules)
    assert v6 is not None
    assert v6["__address__"] == "[::1]:9100"
