"""The ZooKeeper layouts' parsers and the zookeeper_sd_configs model (no server needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from sdbridge.discovery.zookeeper import (
    ZookeeperSDConfig,
    java_url_decode,
    parse_curator_instance,
    parse_dubbo_provider,
    parse_serverset_member,
)
from sdbridge.discovery.zookeeper.session import client_options
from sdbridge.errors import InvalidTargetError


def java_url_encode(text: str) -> str:
    """Java's ``URLEncoder.encode(s, "UTF-8")`` (see tests/integration/test_zookeeper.py)."""
    return quote_plus(text, safe="*").replace("~", "%7E")


# --- serverset (labels as Prometheus's parseServersetMember) ----------------------------

SERVERSET_CASES: list[tuple[str, dict[str, Any], dict[str, str]]] = [
    (
        "full member",
        {
            "serviceEndpoint": {"host": "127.0.0.1", "port": 8080},
            "additionalEndpoints": {"admin-http": {"host": "127.0.0.1", "port": 9990}},
            "status": "ALIVE",
            "shard": 3,
        },
        {
            "__address__": "127.0.0.1:8080",
            "__meta_serverset_endpoint_host": "127.0.0.1",
            "__meta_serverset_endpoint_port": "8080",
            "__meta_serverset_endpoint_host_admin_http": "127.0.0.1",
            "__meta_serverset_endpoint_port_admin_http": "9990",
            "__meta_serverset_status": "ALIVE",
            "__meta_serverset_shard": "3",
        },
    ),
    (
        "Go matches field names case-insensitively; shard defaults to 0",
        {"ServiceEndpoint": {"Host": "h", "PORT": 1}, "Status": "DEAD"},
        {
            "__address__": "h:1",
            "__meta_serverset_endpoint_host": "h",
            "__meta_serverset_endpoint_port": "1",
            "__meta_serverset_status": "DEAD",
            "__meta_serverset_shard": "0",
        },
    ),
    (
        "an IPv6 host is bracketed, as net.JoinHostPort does",
        {"serviceEndpoint": {"host": "::1", "port": 80}},
        {
            "__address__": "[::1]:80",
            "__meta_serverset_endpoint_host": "::1",
            "__meta_serverset_endpoint_port": "80",
            "__meta_serverset_status": "",
            "__meta_serverset_shard": "0",
        },
    ),
]


@pytest.mark.parametrize(
    ("member", "expected"), [c[1:] for c in SERVERSET_CASES], ids=[c[0] for c in SERVERSET_CASES]
)
def test_serverset_member(member: dict[str, Any], expected: dict[str, str]) -> None:
    labels = parse_serverset_member(json.dumps(member).encode(), "/s/member_1")
    assert labels == {"__meta_serverset_path": "/s/member_1", **expected}


@pytest.mark.parametrize(
    "data",
    [b"not json", b"[1]", b'"text"', b'{"serviceEndpoint": {"port": "80"}}', b"\xff\xfe"],
)
def test_serverset_rejects(data: bytes) -> None:
    with pytest.raises(InvalidTargetError, match="/s/member_1"):
        parse_serverset_member(data, "/s/member_1")


# --- curator -----------------------------------------------------------------------------


def curator(**fields: Any) -> bytes:
    instance = {
        "name": "web",
        "id": "i1",
        "address": "127.0.0.1",
        "port": 8080,
        "sslPort": None,
        "payload": None,
        "registrationTimeUTC": 1,
        "serviceType": "DYNAMIC",
        "uriSpec": None,
    }
    instance.update(fields)
    return json.dumps(instance).encode()


def test_curator_host_name_and_payload() -> None:
    payload = {
        "@class": "org.apache.dubbo.registry.zookeeper.ZookeeperInstance",
        "id": "127.0.0.1:20880",
        "name": "demo",
        "metadata": {"dubbo.metadata.revision": "abc", "nested": {"x": 1}},
    }
    labels = parse_curator_instance(
        curator(address="web-1.example.internal", payload=payload), "/services/web/i1"
    )
    assert labels["__address__"] == "web-1.example.internal:8080"
    assert labels["__meta_zookeeper_curator_payload_class"] == payload["@class"]
    assert labels["__meta_zookeeper_curator_payload_metadata_dubbo_metadata_revision"] == "abc"
    assert "__meta_zookeeper_curator_payload_metadata_nested" not in labels
    assert labels["__meta_zookeeper_curator_enabled"] == "true"


def test_curator_ssl_port_ipv6_enabled_and_uri_spec() -> None:
    spec = {"parts": [{"value": "https", "variable": False}, {"value": "://", "variable": False}]}
    labels = parse_curator_instance(
        curator(address="::1", port=None, sslPort=8443, enabled=False, uriSpec=spec), "/p"
    )
    assert labels["__address__"] == "[::1]:8443"
    assert labels["__meta_zookeeper_curator_port"] == ""
    assert labels["__meta_zookeeper_curator_ssl_port"] == "8443"
    assert labels["__meta_zookeeper_curator_enabled"] == "false"
    assert labels["__meta_zookeeper_curator_uri_spec"] == "https://"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\x00\x01", "not a Curator ServiceInstance"),
        (b"[]", "JSON object"),
        (curator(address=None), "no address"),
        (curator(port=None), "no port"),
        (curator(port="80"), "port must be an integer"),
        (curator(port=True), "port must be an integer"),
    ],
)
def test_curator_rejects(data: bytes, message: str) -> None:
    with pytest.raises(InvalidTargetError, match=message):
        parse_curator_instance(data, "/services/web/i1")


# --- dubbo -------------------------------------------------------------------------------


def test_dubbo_provider() -> None:
    url = (
        "dubbo://127.0.1.5:20880/org.apache.dubbo.demo.DemoService?anyhost=true"
        "&application=demo-provider&interface=org.apache.dubbo.demo.DemoService"
        "&methods=sayHello,sayHelloAsync&side=provider&version=1.0.0&group=g&default.timeout=3000"
        "&bare"
    )
    labels = parse_dubbo_provider(java_url_encode(url), "/dubbo/x/providers/y")
    assert labels["__address__"] == "127.0.1.5:20880"
    assert labels["__meta_zookeeper_dubbo_protocol"] == "dubbo"
    assert labels["__meta_zookeeper_dubbo_interface"] == "org.apache.dubbo.demo.DemoService"
    assert labels["__meta_zookeeper_dubbo_application"] == "demo-provider"
    assert labels["__meta_zookeeper_dubbo_version"] == "1.0.0"
    assert labels["__meta_zookeeper_dubbo_group"] == "g"
    assert labels["__meta_zookeeper_dubbo_side"] == "provider"
    assert labels["__meta_zookeeper_dubbo_param_default_timeout"] == "3000"
    assert labels["__meta_zookeeper_dubbo_param_bare"] == "bare"  # Dubbo reads "k" as k=k


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("tri://[::1]:50051/a.B?side=provider", "[::1]:50051"),
        ("dubbo://admin:secret@127.0.0.1:1/a.B", "127.0.0.1:1"),
        ("rest://host-name:8080", "host-name:8080"),
    ],
)
def test_dubbo_addresses(url: str, address: str) -> None:
    labels = parse_dubbo_provider(java_url_encode(url), "/p")
    assert labels["__address__"] == address
    assert labels["__meta_zookeeper_dubbo_interface"] == labels["__meta_zookeeper_dubbo_path"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("dubbo%3A%2F%2F127.0.0.1%3A1%2Fa%3Fx%3D%zz", "malformed"),
        ("dubbo%3A%2F%2F127.0.0.1%3A1%2Fa%3Fx%3D%2", "malformed"),
        ("dubbo%3A%2F%2F127.0.0.1%3A1%2Fa%3Fx%3D%FF", "not UTF-8"),
        ("just-a-name", "not a Dubbo provider URL"),
        (java_url_encode("dubbo://127.0.0.1/a.B"), "not host:port"),
        (java_url_encode("dubbo://127.0.0.1:0/a.B"), "not host:port"),
        (java_url_encode("dubbo://127.0.0.1:70000/a.B"), "not host:port"),
    ],
)
def test_dubbo_rejects(name: str, message: str) -> None:
    with pytest.raises(InvalidTargetError, match=message):
        parse_dubbo_provider(name, "/dubbo/a.B/providers/x")


@given(st.text())
def test_java_url_decode_inverts_java_url_encode(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return  # lone surrogates cannot be sent in a znode name either
    assert java_url_decode(java_url_encode(text), "x") == text


_SAFE = st.text(
    alphabet=st.characters(blacklist_characters="&=?#%", blacklist_categories=("Cs", "Cc")),
    min_size=1,
    max_size=12,
)


@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), _SAFE))
def test_dubbo_parameters_round_trip(params: dict[str, str]) -> None:
    query = "&".join(f"{k}={v}" for k, v in sorted(params.items()))
    labels = parse_dubbo_provider(java_url_encode(f"dubbo://127.0.0.1:1/a.B?{query}"), "/p")
    for key, value in params.items():
        assert labels[f"__meta_zookeeper_dubbo_param_{key}"] == value


# --- config ------------------------------------------------------------------------------


def config(**fields: Any) -> ZookeeperSDConfig:
    base: dict[str, Any] = {"servers": ["127.0.0.1:2181"], "paths": ["/dubbo"], "layout": "dubbo"}
    base.update(fields)
    return ZookeeperSDConfig.model_validate(base)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"layout": "nacos"}, "layout"),
        ({"paths": ["dubbo"]}, "must start with '/'"),
        ({"paths": ["/dubbo/"]}, "not end with one"),
        ({"paths": ["/a", "/a/b"]}, "lies under"),
        ({"paths": ["/a", "/a"]}, "distinct"),
        ({"paths": []}, "at least 1"),
        ({"servers": ["a:1,b:2"]}, "one per list entry"),
        ({"timeout": "0s"}, "greater than 0"),
        ({"tls_config": {"cert_file": "c.pem"}}, "go together"),
        ({"unknown": 1}, "Extra inputs"),
    ],
)
def test_config_rejects(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        config(**fields)


def test_config_defaults_and_secrets() -> None:
    cfg = config(digest_auth={"username": "sd", "password": "hunter2"})
    assert cfg.timeout == 10.0
    assert cfg.watch is True
    assert "hunter2" not in json.dumps(cfg.model_dump(mode="json"))
    assert client_options(cfg)["auth_data"] == [("digest", "sd:hunter2")]


def test_tls_options_and_relative_paths(tmp_path: Path) -> None:
    cfg = config(
        tls_config={
            "ca_file": "ca.pem",
            "cert_file": "/etc/c.pem",
            "key_file": "k.pem",
            "key_password": "pw",
        }
    ).resolve_paths(tmp_path)
    options = client_options(cfg)
    assert options["use_ssl"] is True
    assert options["verify_certs"] is True
    assert options["ca"] == str(tmp_path / "ca.pem")
    assert options["certfile"] == "/etc/c.pem"
    assert options["keyfile"] == str(tmp_path / "k.pem")
    assert options["keyfile_password"] == "pw"
