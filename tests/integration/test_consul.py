"""consul_sd_configs against the Consul API double: labels, load, faults and bad input."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from sdbridge import metrics
from sdbridge.config import parse_config
from sdbridge.discovery.base import DiscoveryContext
from sdbridge.discovery.consul import (
    ConsulDiscoverer,
    ConsulSDConfig,
    aggregated_status,
    parse_service_nodes,
)
from sdbridge.errors import BackendError
from sdbridge.model import TargetGroup, sanitize_label_name
from tests.doubles.consul_double import ConsulDouble, compile_filter, parse_go_duration, running
from tests.doubles.http_proxy import running_proxy
from tests.doubles.oauth2 import TokenEndpoint, serving
from tests.servers.tls import self_signed
from tests.unit.fakes import background

# --- config ------------------------------------------------------------------------------


def test_defaults_match_prometheus() -> None:
    config = ConsulSDConfig()
    assert config.server == "localhost:8500"
    assert config.scheme == "http"
    assert config.tag_separator == ","
    assert config.allow_stale is True
    assert config.refresh_interval == 30.0


def test_secrets_are_masked() -> None:
    config = ConsulSDConfig.model_validate(
        {"token": "s3cret", "basic_auth": {"username": "u", "password": "pw"}}
    )
    shown = repr(config) + str(config.model_dump()) + config.model_dump_json()
    assert "s3cret" not in shown
    assert "pw'" not in shown
    assert '"pw"' not in shown
    assert config.token is not None
    assert config.token.get_secret_value() == "s3cret"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"server": " "}, "requires a server address"),
        ({"username": "u", "basic_auth": {"username": "v"}}, "at most one"),
        ({"token": "t", "authorization": {"credentials": "c"}}, "at most one"),
        ({"watch_timeout": "11m"}, "at most 10m"),
        ({"refresh_interval": "0"}, "greater than 0"),
        ({"scheme": "ftp"}, "scheme"),
        ({"bogus": 1}, "bogus"),
        ({"tls_config": {"cert_file": "x.crt"}}, "together"),
    ],
)
def test_invalid_configs(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ConsulSDConfig.model_validate(options)


def test_config_key_and_paths(tmp_path: Any) -> None:
    config = parse_config(
        {
            "jobs": [
                {
                    "name": "web",
                    "consul_sd_configs": [
                        {"server": "127.0.0.1:8500", "tls_config": {"ca_file": "ca.pem"}}
                    ],
                }
            ]
        },
        origin="test",
        base_dir=tmp_path,
    )
    (name, mechanism), *_ = config.jobs[0].mechanism_configs()
    assert name == "consul"
    assert isinstance(mechanism, ConsulSDConfig)
    assert mechanism.tls_config is not None
    assert mechanism.tls_config.ca_file == tmp_path / "ca.pem"


# --- labels ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("checks", "expected"),
    [
        ([], "passing"),
        ([{"CheckID": "a", "Status": "passing"}], "passing"),
        ([{"CheckID": "a", "Status": "passing"}, {"CheckID": "b", "Status": "warning"}], "warning"),
        (
            [{"CheckID": "a", "Status": "critical"}, {"CheckID": "b", "Status": "warning"}],
            "critical",
        ),
        ([{"CheckID": "_node_maintenance", "Status": "critical"}], "maintenance"),
        ([{"CheckID": "_service_maintenance:web", "Status": "passing"}], "maintenance"),
        ([{"CheckID": "a", "Status": "bogus"}], ""),
    ],
)
def test_aggregated_status(checks: list[dict[str, str]], expected: str) -> None:
    assert aggregated_status(checks) == expected


def _entry(**service: Any) -> dict[str, Any]:
    return {
        "Node": {"Node": "n1", "Address": "127.0.0.1", "Meta": {"a-b": "1"}},
        "Service": {"ID": "s1", "Service": "web", "Port": 80, **service},
        "Checks": [],
    }


def test_service_address_wins_over_node_address() -> None:
    (instance,) = parse_service_nodes(
        [_entry(Address="127.0.0.9")], service="web", tag_separator=",", where="t"
    )
    assert not isinstance(instance, str)
    assert instance.labels["__address__"] == "127.0.0.9:80"
    assert instance.labels["__meta_consul_address"] == "127.0.0.1"
    assert instance.labels["__meta_consul_service_address"] == "127.0.0.9"
    assert instance.labels["__meta_consul_metadata_a_b"] == "1"
    assert instance.labels["__meta_consul_tags"] == ",,"


@pytest.mark.parametrize("port", ["80", 8.5, True, [80]])
def test_non_numeric_port_fails_the_read(port: Any) -> None:
    with pytest.raises(BackendError, match="Port is not a number"):
        parse_service_nodes([_entry(Port=port)], service="web", tag_separator=",", where="t")


def test_port_zero_is_skipped_not_fatal() -> None:
    (problem,) = parse_service_nodes([_entry(Port=0)], service="web", tag_separator=",", where="t")
    assert isinstance(problem, str)
    assert "127.0.0.1:0" in problem


@given(st.text(max_size=20))
def test_sanitize_like_prometheus(key: str) -> None:
    # strutil.SanitizeLabelName: every rune outside [a-zA-Z0-9_] becomes one "_".
    sanitized = sanitize_label_name(key)
    assert len(sanitized) == len(key)
    assert all(c == "_" or (c.isascii() and c.isalnum()) for c in sanitized)


# --- the double itself -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"), [("10s", 10), ("1m30s", 90), ("250ms", 0.25), ("1.5h", 5400), ("0", 0)]
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('ServiceName == "web"', True),
        ('ServiceName != "web"', False),
        ('"blue" in ServiceTags', True),
        ('"green" not in ServiceTags', True),
        ('NodeMeta.rack == "r1" and ServicePort == "80"', True),
        ('not (ServiceName == "web" or ServiceName == "db")', False),
        ("ServiceMeta is empty", True),
        ("NodeMeta is not empty", True),
    ],
)
def test_filter_subset(expression: str, expected: bool) -> None:
    row = {
        "ServiceName": "web",
        "ServiceTags": ["blue"],
        "NodeMeta": {"rack": "r1"},
        "ServicePort": 80,
        "ServiceMeta": {},
    }
    assert compile_filter(expression)(row) is expected


# --- running the mechanism against the double ----------------------------------------------


class Harness:
    """Runs a ConsulDiscoverer and applies its sends the way a job does."""

    def __init__(self, double: ConsulDouble, **options: Any) -> None:
        options.setdefault("server", double.address)
        options.setdefault("refresh_interval", "50ms")
        options.setdefault("watch_timeout", "30s")
        options.setdefault("request_timeout", "2s")
        self.config = ConsulSDConfig.model_validate(options)
        self.context = DiscoveryContext(job="test", mechanism="consul")
        self.discoverer = ConsulDiscoverer(self.config, self.context)
        self.groups: dict[str, TargetGroup] = {}
        self.sends: list[list[TargetGroup]] = []
        self.changed = asyncio.Event()

    async def send(self, groups: list[TargetGroup]) -> None:
        self.sends.append(groups)
        self.context.record_sync()  # the job records every accepted update as a sync
        for group in groups:
            if group.targets:
                self.groups[group.source] = group
            else:
                self.groups.pop(group.source, None)
        self.changed.set()

    def targets(self) -> dict[str, dict[str, str]]:
        """Every target by service id, with its merged labels."""
        return {
            t["__meta_consul_service_id"]: t
            for g in self.groups.values()
            for t in g.merged_targets()
        }

    async def wait_for(self, condition: Callable[[], bool], what: str, limit: float = 20) -> None:
        deadline = asyncio.get_running_loop().time() + limit
        while not condition():
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"timed out waiting for {what}; status={self.context.status}")
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def discovering(double: ConsulDouble, **options: Any) -> AsyncIterator[Harness]:
    harness = Harness(double, **options)
    async with background(harness.discoverer.run(harness.send)):
        yield harness


@pytest.fixture
def consul() -> Iterator[ConsulDouble]:
    with running() as double:
        yield double


def _web_dataset(instances: int = 2, services: int = 1) -> list[dict[str, Any]]:
    nodes = []
    for n in range(instances):
        nodes.append(
            {
                "node": f"node{n}",
                "address": f"127.0.0.{n + 1}",
                "meta": {"rack-id": f"r{n}"},
                "checks": [{"id": "serfHealth"}],
                "services": [
                    {
                        "name": f"svc{s}",
                        "id": f"svc{s}-{n}",
                        "port": 9000 + s,
                        "tags": ["t1"],
                        "checks": [{"id": f"check-svc{s}-{n}"}],
                    }
                    for s in range(services)
                ],
            }
        )
    return nodes


async def test_first_send_is_the_full_set(consul: ConsulDouble) -> None:
    consul.load(_web_dataset(instances=2, services=3))
    async with discovering(consul) as h:
        await h.wait_for(lambda: bool(h.sends), "first send")
        assert sorted(g.source for g in h.sends[0]) == ["svc0", "svc1", "svc2"]
        target = h.targets()["svc1-1"]
        assert target == {
            "__address__": "127.0.0.2:9001",
            "__meta_consul_address": "127.0.0.2",
            "__meta_consul_dc": "dc1",
            "__meta_consul_health": "passing",
            "__meta_consul_metadata_rack_id": "r1",
            "__meta_consul_node": "node1",
            "__meta_consul_service": "svc1",
            "__meta_consul_service_id": "svc1-1",
            "__meta_consul_service_port": "9001",
            "__meta_consul_tags": ",t1,",
        }
        assert h.context.status.synced


async def test_idle_load_is_constant_whatever_the_number_of_services(consul: ConsulDouble) -> None:
    consul.load(_web_dataset(instances=2, services=40))
    async with discovering(consul) as h:
        await h.wait_for(lambda: len(h.groups) == 40, "40 services")
        await h.wait_for(lambda: consul.waiting == 3, "three long-polls outstanding")
        before = consul.stats()
        await asyncio.sleep(0.3)
        after = consul.stats()
        # Nothing changed: no request was answered, three stay outstanding.
        assert after["total_requests"] == before["total_requests"]
        assert consul.waiting == 3
        assert after["open_connections"] <= 3 + 16
        assert set(after["blocking_requests"]) == {
            "/v1/catalog/services",
            "/v1/health/state/any",
            "/v1/catalog/nodes",
        }


async def _settle(consul: ConsulDouble, h: Harness, services: int) -> None:
    """Wait for every service and the three long-polls outstanding; reset the counters."""
    await h.wait_for(lambda: len(h.groups) == services, f"{services} services")
    await h.wait_for(lambda: consul.waiting == 3, "long-polls outstanding")
    consul.reset_counters()


async def test_a_check_change_rereads_only_its_service(consul: ConsulDouble) -> None:
    consul.load(_web_dataset(instances=2, services=20))
    async with discovering(consul) as h:
        await _settle(consul, h, 20)
        consul.set_check_status("node1", "check-svc7-1", "critical")
        await h.wait_for(
            lambda: h.targets()["svc7-1"].get("__meta_consul_health") == "critical", "critical"
        )
        assert consul.stats()["requests"].get("/v1/health/service") == 1
        assert h.sends[-1] == [h.groups["svc7"]]


async def test_a_port_only_reregistration_is_found_by_node(consul: ConsulDouble) -> None:
    # 40 services on 2 nodes: no check moves, so the catalog's index is all there is to
    # go on; the nodes' answers tell which service moved, without reading every service.
    consul.load(_web_dataset(instances=2, services=40))
    async with discovering(consul) as h:
        await _settle(consul, h, 40)
        consul.register_service("node1", "svc23", 7023, service_id="svc23-1", tags=["t1"])
        await h.wait_for(
            lambda: h.targets()["svc23-1"]["__address__"] == "127.0.0.2:7023", "the new port"
        )
        await h.wait_for(lambda: consul.waiting == 3, "long-polls outstanding again")
        requests = consul.stats()["requests"]
        assert requests.get("/v1/health/service") == 1
        assert requests.get("/v1/catalog/node/node0") == 1
        assert requests.get("/v1/catalog/node/node1") == 1
        assert h.sends[-1] == [h.groups["svc23"]]
        # A tag-only change and a removal of an instance are found the same way.
        consul.register_service("node0", "svc5", 9005, service_id="svc5-0", tags=["t1", "new"])
        await h.wait_for(lambda: "new" in h.targets()["svc5-0"]["__meta_consul_tags"], "a tag")
        consul.deregister_service("node1", "svc31-1")
        await h.wait_for(lambda: "svc31-1" not in h.targets(), "the instance removed")
        assert set(h.groups) == {f"svc{s}" for s in range(40)}


async def test_a_node_change_rereads_the_services_on_that_node(consul: ConsulDouble) -> None:
    dataset = _web_dataset(instances=3, services=4)
    dataset.append(
        {"node": "other", "address": "127.0.0.9", "services": [{"name": "lonely", "port": 1234}]}
    )
    consul.load(dataset)
    async with discovering(consul) as h:
        await h.wait_for(lambda: len(h.groups) == 5, "5 services")
        await h.wait_for(lambda: consul.waiting == 3, "long-polls outstanding")
        consul.reset_counters()
        consul.register_node("node2", "127.0.0.3", meta={"rack-id": "moved"})
        await h.wait_for(
            lambda: h.targets()["svc3-2"].get("__meta_consul_metadata_rack_id") == "moved",
            "new node meta",
        )
        assert consul.stats()["requests"].get("/v1/health/service") == 4
        # A node-level check touches the same services.
        consul.reset_counters()
        consul.set_check_status("node2", "serfHealth", "critical")
        await h.wait_for(
            lambda: all(
                h.targets()[f"svc{s}-2"].get("__meta_consul_health") == "critical" for s in range(4)
            ),
            "node critical",
        )
        assert consul.stats()["requests"].get("/v1/health/service") == 4


async def test_registrations_and_removals(consul: ConsulDouble) -> None:
    consul.load(_web_dataset(instances=2, services=2))
    async with discovering(consul) as h:
        await h.wait_for(lambda: len(h.targets()) == 4, "4 targets")
        consul.register_service("node0", "svc0", 7777, service_id="svc0-port", tags=["t1"])
        await h.wait_for(lambda: "svc0-port" in h.targets(), "a new instance, no check")
        # A re-registration that changes only the port.
        consul.register_service("node0", "svc0", 7778, service_id="svc0-port", tags=["t1"])
        await h.wait_for(
            lambda: h.targets()["svc0-port"]["__address__"] == "127.0.0.1:7778", "new port"
        )
        consul.deregister_service("node1", "svc1-1")
        consul.deregister_service("node0", "svc1-0")
        await h.wait_for(lambda: "svc1" not in h.groups, "svc1 gone")
        assert any(TargetGroup(source="svc1") in sent for sent in h.sends)


async def test_services_tags_node_meta_and_separator(consul: ConsulDouble) -> None:
    consul.load(
        [
            {
                "node": "a",
                "address": "127.0.0.1",
                "meta": {"env": "prod"},
                "services": [
                    {"name": "web", "id": "w1", "port": 1, "tags": ["x", "y"]},
                    {"name": "web", "id": "w2", "port": 2, "tags": ["x"]},
                    {"name": "db", "id": "d1", "port": 3, "tags": ["x", "y"]},
                ],
            },
            {
                "node": "b",
                "address": "127.0.0.2",
                "meta": {"env": "dev"},
                "services": [{"name": "web", "id": "w3", "port": 4, "tags": ["x", "y"]}],
            },
        ]
    )
    options = {"services": ["web"], "tags": ["x", "y"], "node_meta": {"env": "prod"}}
    async with discovering(consul, tag_separator="|", **options) as h:
        await h.wait_for(lambda: bool(h.sends), "first send")
        assert set(h.targets()) == {"w1"}
        assert h.targets()["w1"]["__meta_consul_tags"] == "|x|y|"


async def test_filters_reach_consul(consul: ConsulDouble) -> None:
    consul.load(_web_dataset(instances=2, services=3))
    async with discovering(
        consul, filter='ServiceName != "svc2"', health_filter='Node.Node == "node1"'
    ) as h:
        await h.wait_for(lambda: bool(h.sends), "first send")
        assert set(h.targets()) == {"svc0-1", "svc1-1"}


async def test_no_send_before_the_first_sync_and_empty_catalog(consul: ConsulDouble) -> None:
    async with discovering(consul) as h:
        await h.wait_for(lambda: bool(h.sends), "first send")
        assert h.sends == [[]]
        assert h.context.status.synced


async def test_path_prefix_and_namespace() -> None:
    with running(path_prefix="/consul") as consul:
        consul.register_node("n", "127.0.0.1")
        consul.register_service("n", "web", 1, service_id="a", namespace="team-a")
        consul.register_service("n", "web", 2, service_id="b", namespace="team-b")
        async with discovering(consul, path_prefix="consul/", namespace="team-a") as h:
            await h.wait_for(lambda: bool(h.sends), "first send")
            assert set(h.targets()) == {"a"}
            assert h.targets()["a"]["__meta_consul_namespace"] == "team-a"


async def test_token_and_basic_auth_are_sent() -> None:
    with running(acl_token="tok", basic_auth=("u", "p")) as consul:
        consul.load(_web_dataset(1))
        async with discovering(
            consul, token="tok", basic_auth={"username": "u", "password": "p"}
        ) as h:
            await h.wait_for(lambda: len(h.targets()) == 1, "one target")


async def test_bearer_authorization_is_sent() -> None:
    with running(acl_token="tok") as consul:
        consul.load(_web_dataset(1))
        async with discovering(consul, authorization={"credentials": "tok"}) as h:
            await h.wait_for(lambda: len(h.targets()) == 1, "one target")


# --- faults: the last good targets stay, and the job recovers ------------------------------


FAULTS = [
    pytest.param({"kind": "status", "status": 500}, id="5xx"),
    pytest.param({"kind": "status", "status": 429, "body": "Too many"}, id="429"),
    pytest.param({"kind": "malformed"}, id="malformed-json"),
    pytest.param({"kind": "truncated"}, id="truncated-json"),
    pytest.param({"kind": "short"}, id="short-body"),
    pytest.param({"kind": "reset"}, id="connection-reset"),
    pytest.param({"kind": "delay", "delay": 5.0}, id="slow-beyond-timeout"),
]


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("where", ["/v1/health/service/", "/v1/health/state/", "/v1/catalog/"])
async def test_faults_keep_the_last_good_targets(
    consul: ConsulDouble, fault: dict[str, Any], where: str, caplog: pytest.LogCaptureFixture
) -> None:
    if fault["kind"] == "delay" and where != "/v1/health/service/":
        # A long-poll that answers late is just a long-poll: nothing failed.
        fault = {**fault, "delay": 0.5}
    consul.load(_web_dataset(instances=2, services=2))
    async with discovering(consul, request_timeout="300ms", watch_timeout="1s") as h:
        await h.wait_for(lambda: len(h.targets()) == 4, "4 targets")
        good = h.targets()
        sends = len(h.sends)
        consul.add_fault(path=where, **fault)
        # A change that needs every kind of read: a new instance with a check, a health flip.
        consul.register_service("node0", "svc1", 9999, service_id="new", tags=["t1"])
        consul.register_check("node0", "new-check", "warning", service_id="new")
        consul.set_check_status("node1", "check-svc0-1", "critical")
        await h.wait_for(lambda: h.context.status.failures > 0, "a recorded failure")
        if where == "/v1/health/service/":
            # Every resync needs a service read, and every one fails: nothing was sent.
            assert h.targets() == good
            assert len(h.sends) == sends
        else:
            # A failing long-poll only delays changes; reads that succeed may still land,
            # but nothing known is ever dropped.
            assert set(good) <= set(h.targets())
        consul.clear_faults()
        await h.wait_for(lambda: "new" in h.targets(), "recovery", limit=60)
        await h.wait_for(
            lambda: h.targets()["svc0-1"].get("__meta_consul_health") == "critical", "recovery"
        )
        assert h.targets()["new"]["__meta_consul_health"] == "warning"
        await h.wait_for(lambda: h.context.status.failing_since is None, "status recovered")


async def test_all_or_nothing_when_one_service_fails(consul: ConsulDouble) -> None:
    consul.load(_web_dataset(instances=1, services=2))
    async with discovering(consul) as h:
        await h.wait_for(lambda: len(h.targets()) == 2, "2 targets")
        consul.add_fault("status", path="/v1/health/service/svc1$", status=500)
        sends = len(h.sends)
        # One transaction-like change touching both services (a node-level check).
        consul.set_check_status("node0", "serfHealth", "critical")
        await h.wait_for(lambda: h.context.status.failures > 0, "failure")
        await asyncio.sleep(0.2)
        assert len(h.sends) == sends  # svc0 was read fine, but nothing was sent
        assert all(t.get("__meta_consul_health") == "passing" for t in h.targets().values())
        consul.clear_faults()
        await h.wait_for(
            lambda: all(t.get("__meta_consul_health") == "critical" for t in h.targets().values()),
            "both critical",
            limit=60,
        )


async def test_index_going_backwards_resyncs(consul: ConsulDouble) -> None:
    consul.load(_web_dataset(instances=2, services=2))
    async with discovering(consul) as h:
        await h.wait_for(lambda: len(h.targets()) == 4, "4 targets")
        await h.wait_for(lambda: consul.waiting == 3, "long-polls outstanding")
        consul.rewind_index(1)  # a snapshot restore: every index drops
        consul.deregister_service("node1", "svc1-1")
        await h.wait_for(lambda: "svc1-1" not in h.targets(), "resynced after the reset")
        # Later changes still arrive: the indexes restarted from the lower value.
        consul.set_check_status("node0", "check-svc0-0", "warning")
        await h.wait_for(
            lambda: h.targets()["svc0-0"].get("__meta_consul_health") == "warning", "new change"
        )


async def test_an_index_below_one_is_treated_as_one(consul: ConsulDouble) -> None:
    consul.load(_web_dataset(instances=1, services=1))
    consul.add_fault("index", path="/v1/catalog/nodes", index=0)
    async with discovering(consul) as h:
        await h.wait_for(lambda: len(h.targets()) == 1, "1 target")
        await h.wait_for(
            lambda: "1" in consul.index_params.get("/v1/catalog/nodes", []), "a query at index 1"
        )
        assert "0" not in consul.index_params["/v1/catalog/nodes"]
        # The other long-polls still see changes.
        consul.set_check_status("node0", "check-svc0-0", "critical")
        await h.wait_for(
            lambda: h.targets()["svc0-0"].get("__meta_consul_health") == "critical", "change"
        )


# --- bad input ---------------------------------------------------------------------------


async def _first_failure(harness: Harness) -> str:
    await harness.wait_for(lambda: harness.context.status.failures > 0, "a failure")
    assert not harness.sends  # nothing before the first sync
    return harness.context.status.last_error or ""


async def test_unreachable_server() -> None:
    from tests.servers.common import free_port

    double = ConsulDouble()  # never started: the port is closed
    double.port = free_port()
    async with discovering(double) as h:
        message = await _first_failure(h)
    assert "127.0.0.1" in message


async def test_wrong_token_is_a_clear_403(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    with running(acl_token="right") as consul:
        consul.load(_web_dataset(1))
        async with discovering(consul, token="wrong") as h:
            message = await _first_failure(h)
    assert "HTTP 403 (check the token" in message
    assert "ACL not found" in message
    assert "wrong" not in caplog.text  # the token itself is never logged


async def test_requests_go_through_proxy_url(consul: ConsulDouble) -> None:
    consul.load(_web_dataset(instances=2, services=1))
    async with running_proxy() as proxy:
        async with discovering(consul, proxy_url=proxy.url) as h:
            await h.wait_for(lambda: len(h.targets()) == 2, "2 targets")
        assert proxy.seen
        assert {seen.target for seen in proxy.seen} == {consul.address}


async def test_oauth2_token_is_the_consul_acl_token() -> None:
    endpoint = TokenEndpoint()
    with running(acl_token="t1") as consul:  # the double takes a bearer as the ACL token
        consul.load(_web_dataset(instances=1, services=1))
        async with serving(endpoint.app()) as url:
            oauth2 = {
                "client_id": "sdbridge",
                "client_secret": "s:cret",
                "token_url": url + "/token",
            }
            async with discovering(consul, oauth2=oauth2) as h:
                await h.wait_for(lambda: len(h.targets()) == 1, "1 target")
    assert endpoint.issued == 1  # one token for every request of the run


async def test_unknown_datacenter(consul: ConsulDouble) -> None:
    async with discovering(consul, datacenter="nowhere") as h:
        message = await _first_failure(h)
    assert "No path to datacenter" in message
    assert "datacenter option" in message


async def test_non_numeric_port_keeps_the_last_good(consul: ConsulDouble) -> None:
    consul.load(_web_dataset(instances=1, services=1))
    async with discovering(consul) as h:
        await h.wait_for(lambda: len(h.targets()) == 1, "1 target")
        consul.register_service("node0", "svc0", "http", service_id="bad")
        await h.wait_for(lambda: h.context.status.failures > 0, "failure")
        assert "Port is not a number" in (h.context.status.last_error or "")
        assert set(h.targets()) == {"svc0-0"}
        consul.register_service("node0", "svc0", 8080, service_id="bad")
        await h.wait_for(lambda: "bad" in h.targets(), "recovered")


async def test_label_unsafe_metadata_keys(consul: ConsulDouble) -> None:
    consul.load(
        [
            {
                "node": "n",
                "address": "127.0.0.1",
                "meta": {"rack.id/ü": "r"},
                "tagged_addresses": {"lan_ipv4": "127.0.0.1", "wan-x": "127.0.0.2"},
                "services": [{"name": "s", "port": 1, "meta": {"version-1.2": "v"}}],
            }
        ]
    )
    async with discovering(consul) as h:
        await h.wait_for(lambda: len(h.targets()) == 1, "1 target")
        target = h.targets()["s"]
        assert target["__meta_consul_metadata_rack_id__"] == "r"
        assert target["__meta_consul_service_metadata_version_1_2"] == "v"
        assert target["__meta_consul_tagged_address_lan_ipv4"] == "127.0.0.1"
        assert target["__meta_consul_tagged_address_wan_x"] == "127.0.0.2"


async def test_tls_with_a_ca_file(tmp_path: Path) -> None:
    material = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(material.cert, material.key)
    with running(ssl_context=context) as consul:
        consul.load(_web_dataset(1))
        async with discovering(
            consul, scheme="https", tls_config={"ca_file": str(material.cert)}
        ) as h:
            await h.wait_for(lambda: len(h.targets()) == 1, "one target over TLS")
        async with discovering(consul, scheme="https") as h:
            message = await _first_failure(h)  # the system CAs do not know this certificate
        assert "certificate" in message.lower()
        async with discovering(
            consul, scheme="https", tls_config={"insecure_skip_verify": True}
        ) as h:
            await h.wait_for(lambda: len(h.targets()) == 1, "one target, unverified")


async def test_failures_are_counted_in_the_metric() -> None:
    failures = metrics.REFRESH_FAILURES.labels(job="test", mechanism="consul")
    before = failures._value.get()
    with running(acl_token="right") as consul:
        async with discovering(consul, token="wrong") as h:
            await _first_failure(h)
    assert failures._value.get() > before
