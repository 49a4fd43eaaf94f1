"""Strict target validation for sdbridge's own sources; Prometheus's rules for the rest.

Issue 12 item 6: registry addresses such as ``"a\\u0000b:80"``, ``"[zz]:80"``,
``"evil@127.0.0.1:80"``, ``"h#x?y:80"`` and labels ``__scheme__: gopher``,
``__scrape_interval__: 1ms`` were published, although Prometheus would refuse them.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from sdbridge import discovery
from sdbridge.config import parse_config
from sdbridge.discovery.exec import ExecSDConfig
from sdbridge.job import Job, MechanismRunner
from sdbridge.model import address_problem, reserved_label_problem, target_problem
from sdbridge.web.app import create_app
from sdbridge.web.registry_api import registry_routes
from tests.unit.fakes import group, make_job, running, until
from tests.unit.test_registry_api import URL, make_daemon

ISSUE_ADDRESSES = ["a\u0000b:80", "[zz]:80", "evil@127.0.0.1:80", "h#x?y:80"]
BAD_ADDRESSES = [
    *ISSUE_ADDRESSES,
    "h/x:80",
    "a b:80",
    "a\tb:80",
    "a\u00e9:80",  # not ASCII (an IDN goes in punycode)
    "::1:80",  # IPv6 without brackets
    "[::1:80",
    "[::g]:80",
    "999.0.0.1:80",
    "127.0.0.1:0",
    "127.0.0.1:65536",
    "127.0.0.1:+80",
    "127.0.0.1:\u0661",  # an Arabic-Indic digit
    "127.0.0.1",
    ":80",
    "x" * 254 + ":80",
]
GOOD_ADDRESSES = [
    "127.0.0.1:9100",
    "localhost:1",
    "node-1.example.org:65535",
    "my_host:80",
    "[::1]:9100",
    "[fe80::1%eth0]:9100",
    "[::ffff:127.0.0.1]:80",
]


@pytest.mark.parametrize("address", BAD_ADDRESSES)
def test_bad_addresses(address: str) -> None:
    assert address_problem(address) is not None


@pytest.mark.parametrize("address", GOOD_ADDRESSES)
def test_good_addresses(address: str) -> None:
    assert address_problem(address) is None


@given(st.text(max_size=40), st.integers(-5, 70000))
def test_an_accepted_address_is_a_plain_host_and_port(host: str, port: int) -> None:
    address = f"{host}:{port}"
    if address_problem(address) is not None:
        return
    assert 1 <= port <= 65535
    assert host.isascii()
    assert not set(host) & set("@/?#% \t\r\n\x00") or host.startswith("[")
    if host.startswith("["):
        ipaddress.IPv6Address(host[1:-1])


@pytest.mark.parametrize(
    ("labels", "strict", "problem"),
    [
        ({"__scheme__": "gopher"}, False, "must be http or https"),
        ({"__scheme__": "HTTP"}, False, "must be http or https"),
        ({"__scrape_interval__": "5 minutes"}, False, "not a valid duration"),
        ({"__scrape_interval__": "0s"}, False, "greater than 0"),
        ({"__scrape_timeout__": "1" + "0" * 400 + "s"}, False, "out of range"),
        ({"__scrape_interval__": "10s", "__scrape_timeout__": "20s"}, False, "must not exceed"),
        ({"__scrape_interval__": "1ms"}, True, "under 1s needs its own __scrape_timeout__"),
        ({"__param_": "x"}, True, "needs a parameter name"),
    ],
)
def test_reserved_labels(labels: dict[str, str], strict: bool, problem: str) -> None:
    found = reserved_label_problem(labels, strict=strict)
    assert found is not None
    assert problem in found[1]
    assert found[0] in labels or found[0] == "__param_"


@pytest.mark.parametrize(
    "labels",
    [
        {"__scheme__": "https", "__scrape_interval__": "30s", "__scrape_timeout__": "10s"},
        {"__scheme__": "", "__param_module": "http_2xx", "__metrics_path__": "/probe"},
        {"__scrape_interval__": "1ms"},  # Prometheus's twin rules: fine with a 1ms timeout
    ],
)
def test_reserved_labels_prometheus_accepts(labels: dict[str, str]) -> None:
    assert reserved_label_problem(labels) is None
    assert target_problem({"__address__": "127.0.0.1:80", **labels}) is None


def test_lenient_rules_keep_what_prometheus_discovers() -> None:
    # Hosts Prometheus would try to resolve are not sdbridge's to refuse for a twin.
    assert target_problem({"__address__": "999.0.0.1:80"}) is None
    assert target_problem({"__address__": "999.0.0.1:80"}, strict=True) is not None
    assert target_problem({"__address__": "a/b:80"}) is not None  # Prometheus refuses "/"


# --- the registry refuses with 400 ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [({"address": a}, "address") for a in BAD_ADDRESSES]
    + [
        ({"address": "127.0.0.1:80", "labels": {"__scheme__": "gopher"}}, "labels.__scheme__"),
        (
            {"address": "127.0.0.1:80", "labels": {"__scrape_interval__": "1ms"}},
            "labels.__scrape_interval__",
        ),
        (
            {"address": "127.0.0.1:80", "labels": {"__scrape_timeout__": "soon"}},
            "labels.__scrape_timeout__",
        ),
        ({"address": "127.0.0.1:80", "labels": {"__param_": "x"}}, "labels.__param_"),
    ],
)
async def test_registry_refuses_invalid_targets(
    tmp_path: Path, body: dict[str, Any], field: str
) -> None:
    daemon = make_daemon(tmp_path)
    app = create_app(daemon, route_hooks=[registry_routes(daemon)])
    async with TestClient(TestServer(app)) as client:
        response = await client.put(f"{URL}/web/a", data=orjson.dumps(body))
        assert response.status == 400
        error = await response.json()
        assert error["field"] == field
        listing = await (await client.get(URL)).json()
        assert listing["data"]["instances"] == []
        good = {"address": "127.0.0.1:80", "labels": {"__scheme__": "https"}}
        assert (await client.put(f"{URL}/web/a", data=orjson.dumps(good))).status == 201


# --- exec and plugins: skipped and counted; twins: Prometheus's rules -----------------------


def _invalid_count(job: str, mechanism: str = "exec") -> float:
    value = REGISTRY.get_sample_value(
        "sdbridge_invalid_targets_total", {"job": job, "mechanism": mechanism}
    )
    return value or 0.0


async def test_strict_sources_skip_and_count_invalid_targets() -> None:
    job, (fake,), _ = make_job(name="strict")
    assert job.runners[0].strict_targets  # an exec mechanism
    before = _invalid_count("strict")
    async with running(job):
        await fake.send(
            [
                group("good", "127.0.0.1:1"),
                group("userinfo", "evil@127.0.0.1:80"),
                group("zone", "[zz]:80"),
                group("gopher", "127.0.0.2:1", __scheme__="gopher"),
                group("fast", "127.0.0.3:1", __scrape_interval__="1ms"),
            ]
        )
        await until(lambda: job.snapshot is not None)
        assert job.snapshot is not None
        assert [e.labels["__address__"] for e in job.snapshot.entries] == ["127.0.0.1:1"]
    assert _invalid_count("strict") == before + 4


async def test_twins_publish_what_prometheus_could_scrape() -> None:
    job, (fake,), _ = make_job(name="twin")
    job.runners[0].strict_targets = False  # as for consul, etcd, zookeeper, docker
    before = _invalid_count("twin")
    async with running(job):
        await fake.send(
            [
                group("odd-host", "999.0.0.1:80"),  # Prometheus tries it: published
                group("fast", "127.0.0.3:1", __scrape_interval__="1ms"),  # with a 1ms timeout ok
                group("gopher", "127.0.0.2:1", __scheme__="gopher"),  # never scrapable: skipped
                group("slow", "127.0.0.4:1", __scrape_interval__="1s", __scrape_timeout__="2s"),
            ]
        )
        await until(lambda: job.snapshot is not None)
        assert job.snapshot is not None
        assert sorted(e.labels["__address__"] for e in job.snapshot.entries) == [
            "127.0.0.3:1",
            "999.0.0.1:80",
        ]
    assert _invalid_count("twin") == before + 2


def test_which_mechanisms_are_strict(tmp_path: Path) -> None:
    config = parse_config(
        {
            "jobs": [
                {
                    "name": "j",
                    "exec_sd_configs": [{"command": [sys.executable]}],
                    "registry_sd_configs": [{}],
                    "consul_sd_configs": [{"server": "127.0.0.1:1"}],
                }
            ]
        },
        base_dir=tmp_path,
    )
    job = Job(config.jobs[0], config.global_)
    assert {r.name: r.strict_targets for r in job.runners} == {
        "consul": False,
        "exec": True,
        "registry": True,
    }


class _PluginDiscoverer:
    """Stands for a third-party mechanism: its module is not under ``sdbridge.``."""

    def __init__(self, config: object, context: object) -> None:
        pass

    async def run(self, send: object) -> None:
        """Never sends."""


def test_plugins_are_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    discovery.mechanisms()  # load the built-ins first
    mechanism = discovery.Mechanism("someplugin", ExecSDConfig, _PluginDiscoverer)
    monkeypatch.setitem(discovery.MECHANISMS, "someplugin", mechanism)
    config = ExecSDConfig(command=["true"])
    global_config = parse_config({}).global_
    assert MechanismRunner("j", 0, "someplugin", config, global_config).strict_targets
