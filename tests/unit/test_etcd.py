"""etcd_sd_configs without a server: layout parsers, field paths, config validation."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdbridge.config import parse_config
from sdbridge.discovery.etcd import (
    JSONFields,
    coredns_domain,
    get_field,
    metadata_labels,
    parse_coredns,
    parse_endpoints,
    parse_field_path,
    parse_go_micro,
    parse_go_zero,
    parse_json,
    parse_kratos,
    prefix_range_end,
)
from sdbridge.errors import ConfigError, InvalidTargetError
from sdbridge.model import is_valid_label_name
from tests.servers.etcd import (
    coredns_record,
    go_micro_instance,
    go_zero_instance,
    kratos_instance,
    naming_endpoint,
)

# --- layouts, fed with what the frameworks write ---------------------------------------


def test_endpoints_reads_the_naming_update() -> None:
    key, value = naming_endpoint("svc/grpc", "a", "127.0.0.1:50051", {"zone": "z", "n": 1.5})
    assert parse_endpoints(key, value.encode()) == [
        {
            "__address__": "127.0.0.1:50051",
            "__meta_etcd_service": "svc/grpc",
            "__meta_etcd_metadata_n": "1.5",
            "__meta_etcd_metadata_zone": "z",
        }
    ]


def test_endpoints_metadata_that_is_not_an_object_is_kept_as_json() -> None:
    _, value = naming_endpoint("t", "a", "h:1", ["x", 1])
    assert parse_endpoints("t/a", value.encode())[0]["__meta_etcd_metadata"] == '["x",1]'


def test_endpoints_op_delete_is_no_instance() -> None:
    assert parse_endpoints("t/a", b'{"Op":1,"Addr":"h:1","Metadata":null}') == []


def test_kratos_gives_one_target_per_endpoint() -> None:
    key, value = kratos_instance(
        "shop", "id1", ["grpc://h:9000?isSecure=true", "http://h:8000"], version="v2"
    )
    targets = parse_kratos(key, value.encode())
    assert [(t["__address__"], t["__meta_etcd_endpoint_scheme"]) for t in targets] == [
        ("h:9000", "grpcs"),  # Kratos < 2.3.1 marked TLS with isSecure=true
        ("h:8000", "http"),
    ]
    assert targets[0]["__meta_etcd_instance_id"] == "id1"
    assert targets[0]["__meta_etcd_version"] == "v2"


def test_go_zero_splits_service_and_lease() -> None:
    key, value = go_zero_instance("user.rpc", 7587864068988009477, "127.0.0.5:8080")
    assert parse_go_zero(key, value.encode()) == [
        {
            "__address__": "127.0.0.5:8080",
            "__meta_etcd_service": "user.rpc",
            "__meta_etcd_instance_id": "7587864068988009477",
        }
    ]


def test_go_micro_node_metadata_overrides_service_metadata() -> None:
    key, value = go_micro_instance(
        "go.micro.srv.greeter",
        "n1",
        "[::1]:50000",
        metadata={"owner": "svc", "region": "a"},
        node_metadata={"region": "b"},
    )
    assert key == "/micro/registry/go.micro.srv.greeter/n1"
    (target,) = parse_go_micro(key, value.encode())
    assert target["__address__"] == "[::1]:50000"
    assert target["__meta_etcd_metadata_owner"] == "svc"
    assert target["__meta_etcd_metadata_region"] == "b"


def test_coredns_reverses_the_key_into_a_name() -> None:
    key, value = coredns_record("service.staging.skydns.local", "127.0.0.7", 80, weight=5)
    assert key == "/skydns/local/skydns/staging/service"
    assert parse_coredns(key, value.encode(), "/skydns") == [
        {
            "__address__": "127.0.0.7:80",
            "__meta_etcd_service": "service.staging.skydns.local",
            "__meta_etcd_dns_weight": "5",
        }
    ]
    assert coredns_domain("/dns/prod/a/", "/dns/prod") == "a"


def test_coredns_ipv6_host_is_bracketed() -> None:
    _, value = coredns_record("a.local", "::1", 53)
    assert parse_coredns("/skydns/local/a", value.encode(), "/skydns")[0]["__address__"] == (
        "[::1]:53"
    )


@pytest.mark.parametrize(
    ("parse", "value", "error"),
    [
        (parse_endpoints, b"\xff\xfe", "not JSON"),
        (parse_endpoints, b"[]", "not a naming endpoint JSON object"),
        (parse_endpoints, b'{"Op":2,"Addr":"h:1"}', "unknown Op 2"),
        (parse_endpoints, b'{"Op":0}', "Addr None is not host:port"),
        (parse_endpoints, b'{"Addr":"h:0"}', "is not host:port"),
        (parse_kratos, b'{"name":"a","endpoints":[]}', "non-empty list"),
        (parse_kratos, b'{"endpoints":["http://h:1"]}', "'name'"),
        (parse_kratos, b'{"name":"a","endpoints":["h:1"]}', "not host:port"),
        (parse_kratos, b'{"name":"a","metadata":[1],"endpoints":["http://h:1"]}', "metadata"),
        (parse_go_zero, b"\xff", "not UTF-8"),
        (parse_go_zero, b"127.0.0.1", "not host:port"),
        (parse_go_micro, b'{"name":"a","nodes":null}', "'nodes'"),
        (parse_go_micro, b'{"name":"a","nodes":[{"address":"x"}]}', "not host:port"),
        (parse_go_micro, b'{"name":"a","nodes":[1]}', "not an object"),
        (lambda k, v: parse_coredns(k, v, "/skydns"), b'{"host":"h"}', "'port'"),
        (lambda k, v: parse_coredns(k, v, "/skydns"), b'{"port":1}', "'host'"),
        (
            lambda k, v: parse_coredns("/other/x", v, "/skydns"),
            b'{"host":"h","port":1}',
            "not under",
        ),
    ],
)
def test_bad_values_raise_naming_the_problem(parse: Any, value: bytes, error: str) -> None:
    with pytest.raises(InvalidTargetError, match=re.escape(error)):
        parse("/skydns/local/x", value)


# --- the json layout's field paths ------------------------------------------------------


def test_field_paths() -> None:
    assert parse_field_path("a.b[0][2].c") == ("a", "b", 0, 2, "c")
    assert parse_field_path("[1]") == (1,)
    data = {"a": {"b": [[0, 1, {"c": "x"}]]}}
    assert get_field(data, parse_field_path("a.b[0][2].c")) == "x"
    assert get_field(data, parse_field_path("a.z")) is not None  # the missing sentinel


@pytest.mark.parametrize("path", ["", "a..b", "a[x]", "a[0", "a]"])
def test_malformed_field_paths_are_rejected(path: str) -> None:
    with pytest.raises(ValueError):
        parse_field_path(path)


names = st.text(st.characters(blacklist_characters=".[]"), min_size=1, max_size=8)


@given(st.lists(st.tuples(names, st.lists(st.integers(0, 99), max_size=2)), min_size=1))
def test_field_paths_round_trip(segments: list[tuple[str, list[int]]]) -> None:
    text = ".".join(name + "".join(f"[{i}]" for i in idx) for name, idx in segments)
    expected = tuple(part for name, idx in segments for part in (name, *idx))
    assert parse_field_path(text) == expected


def test_json_host_port_and_labels() -> None:
    fields = JSONFields(host="n.ip", port="n.port", labels={"dc": "dc", "absent": "nope"})
    assert parse_json(b'{"n":{"ip":"::1","port":"9"},"dc":3}', fields) == [
        {"__address__": "[::1]:9", "__meta_etcd_json_dc": "3"}
    ]
    with pytest.raises(InvalidTargetError, match=re.escape("no field 'n.ip'")):
        parse_json(b'{"m":1}', fields)


@given(st.dictionaries(st.text(max_size=12), st.one_of(st.text(), st.integers(), st.none())))
def test_metadata_keys_always_make_valid_label_names(metadata: dict[str, Any]) -> None:
    for name, value in metadata_labels(metadata).items():
        assert is_valid_label_name(name)
        assert value  # empty values are left out, as Prometheus treats them as absent


@given(st.binary(max_size=6))
def test_prefix_range_end_covers_exactly_the_prefix(prefix: bytes) -> None:
    end = prefix_range_end(prefix)
    if prefix.rstrip(b"\xff"):
        assert prefix < end
        assert (prefix + b"\xff" * 8) < end
        assert not end.startswith(prefix)
    else:
        assert end == b"\0"  # every key


# --- config ----------------------------------------------------------------------------


def _config(**entry: Any) -> Any:
    data = {"endpoints": ["127.0.0.1:2379"], "prefix": "/p/", "layout": "go-zero", **entry}
    return parse_config({"jobs": [{"name": "j", "etcd_sd_configs": [data]}]})


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ({"layout": "nacos"}, "layout: expected one of 'endpoints'"),
        ({"layout": "json"}, "layout json needs fields"),
        ({"fields": {"address": "a"}}, "fields applies to layout json only"),
        ({"layout": "json", "fields": {"address": "a", "host": "h"}}, "either address"),
        ({"layout": "json", "fields": {"host": "h"}}, "host and port"),
        ({"layout": "json", "fields": {"address": "a..b"}}, "invalid field path"),
        ({"layout": "json", "fields": {"address": "a", "labels": {"a-b": "x"}}}, "label"),
        ({"username": "u"}, "username and password"),
        ({"endpoints": ["ftp://x:1"]}, "must be http"),
        ({"layout": "coredns", "prefix": "/elsewhere/"}, "not under coredns_path"),
        ({"tls_config": {"cert_file": "c.pem"}}, "together"),
        ({"page_size": 0}, "page_size"),
        ({"bogus": 1}, "unknown key"),
    ],
)
def test_config_errors_name_the_path(entry: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match="etcd_sd_configs") as info:
        _config(**entry)
    assert error in str(info.value)


def test_password_is_masked_and_tls_paths_resolved(tmp_path: Any) -> None:
    config = parse_config(
        {
            "jobs": [
                {
                    "name": "j",
                    "etcd_sd_configs": [
                        {
                            "endpoints": ["127.0.0.1:2379"],
                            "prefix": "/p/",
                            "layout": "kratos",
                            "username": "root",
                            "password": "s3cret",
                            "tls_config": {"ca_file": "ca.pem"},
                        }
                    ],
                }
            ]
        },
        base_dir=tmp_path,
    )
    (_, entry) = config.jobs[0].mechanism_configs()[0]
    dumped = entry.model_dump(mode="json")
    assert dumped["password"] == "**********"
    assert dumped["tls_config"]["ca_file"] == str(tmp_path / "ca.pem")
    assert entry.urls() == ["https://127.0.0.1:2379"]


# --- no value, however odd, escapes as anything but InvalidTargetError --------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
# Values shaped like each layout's, with any JSON in each field.
shaped = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional=dict.fromkeys(
            (
                "Op",
                "Addr",
                "Metadata",
                "id",
                "name",
                "version",
                "metadata",
                "endpoints",
                "nodes",
                "host",
                "port",
                "priority",
                "text",
            ),
            json_values,
        ),
    ),
    st.fixed_dictionaries(
        {
            "name": st.text(max_size=4),
            "nodes": st.lists(
                st.dictionaries(st.sampled_from(["id", "address", "metadata"]), json_values),
                max_size=2,
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "name": st.text(max_size=4),
            "endpoints": st.lists(
                st.text(max_size=12)
                | st.sampled_from(["http://h:1", "grpc://[::1]:9?isSecure=true", "x://:0"]),
                max_size=3,
            ),
        }
    ),
)


@given(shaped)
def test_parsers_only_ever_raise_invalid_target(value: object) -> None:
    raw = json.dumps(value).encode()
    fields = JSONFields(host="host", port="port", labels={"n": "name", "m": "metadata"})
    parsers = [
        parse_endpoints,
        parse_kratos,
        parse_go_zero,
        parse_go_micro,
        lambda k, v: parse_coredns(k, v, "/skydns"),
        lambda k, v: parse_json(v, fields),
    ]
    for parse in parsers:
        try:
            targets = parse("/skydns/local/a", raw)
        except InvalidTargetError:
            continue
        for target in targets:
            assert all(is_valid_label_name(name) for name in target)
            assert all(isinstance(v, str) for v in target.values())
