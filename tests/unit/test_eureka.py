"""eureka_sd: decoding as Prometheus's Go decoder does, labels, and the delta merge.

The merge is checked against the Eureka double's own registry model (in process, no
HTTP): whatever happens on the server, a full copy plus the deltas that follow equals a
fresh full copy, and the reconcile hash code agrees.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sdbridge.discovery.eureka import (
    EurekaSDConfig,
    apply_delta,
    full_copy,
    hash_code,
    instance_labels,
    parse_json,
    parse_xml,
)
from sdbridge.errors import BackendError
from tests.doubles.eureka_double import EurekaDouble, instance, reconcile_hash_code

M = "__meta_eureka_app_instance_"


def one(body: str) -> tuple[str, Any]:
    apps = parse_xml(body.encode(), "eureka test/apps")
    [(name, [raw])] = apps.apps
    return name, raw


def labels_of(xml_instance: str) -> dict[str, str]:
    name, raw = one(
        f"<applications><application><name>WEB</name>{xml_instance}</application></applications>"
    )
    return instance_labels(name, raw)


def test_a_spring_cloud_instance() -> None:
    labels = labels_of(
        "<instance><instanceId>h1:web:8080</instanceId><hostName>h1</hostName>"
        "<ipAddr>127.0.0.1</ipAddr><status>UP</status>"
        '<port enabled="true">8080</port><securePort enabled="false">443</securePort>'
        "<countryId>1</countryId>"
        '<dataCenterInfo class="com.netflix.appinfo.AmazonInfo"><name>Amazon</name>'
        "<metadata><ami-id>ami-1</ami-id><instance-id>i-1</instance-id></metadata></dataCenterInfo>"
        "<metadata><management.port>8081</management.port><prometheus.path>/m</prometheus.path>"
        "</metadata><vipAddress>web</vipAddress></instance>"
    )
    assert labels == {
        "__address__": "h1:8080",
        "instance": "h1:web:8080",
        "__meta_eureka_app_name": "WEB",
        M + "hostname": "h1",
        M + "ip_addr": "127.0.0.1",
        M + "status": "UP",
        M + "port": "8080",
        M + "port_enabled": "true",
        M + "secure_port": "443",
        M + "secure_port_enabled": "false",
        M + "country_id": "1",
        M + "id": "h1:web:8080",
        M + "vip_address": "web",
        M + "datacenterinfo_name": "Amazon",
        M + "datacenterinfo_metadata_ami_id": "ami-1",
        M + "datacenterinfo_metadata_instance_id": "i-1",
        M + "metadata_management_port": "8081",
        M + "metadata_prometheus_path": "/m",
    }


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        # No <port>: port 80 and no port labels (eureka.go targetsForApp).
        ("<hostName>h</hostName>", {"__address__": "h:80", M + "country_id": "0"}),
        # Go's strconv: spaces trimmed, an empty number is 0, a sign is allowed.
        (
            "<hostName>h</hostName><port> 9090 </port><countryId>+7</countryId>",
            {
                "__address__": "h:9090",
                M + "port": "9090",
                M + "port_enabled": "false",
                M + "country_id": "7",
            },
        ),
        (
            '<hostName>::1</hostName><port enabled="1">9</port>',
            {"__address__": "[::1]:9", M + "port_enabled": "true"},
        ),
        # Metadata values are the raw inner XML (Go's ,innerxml): entities stay escaped.
        (
            "<hostName>h</hostName><metadata><a>x &amp; y</a><b><c>1</c></b><d/><e></e></metadata>",
            {M + "metadata_a": "x &amp; y", M + "metadata_b": "<c>1</c>"},
        ),
        # The start tag ends at the first ">" outside quotes; CDATA and comments are raw.
        (
            '<hostName>h</hostName><metadata><a x="1>2">v</a><b><![CDATA[<&>]]></b>'
            "<c>1<!-- c -->2</c></metadata>",
            {
                M + "metadata_a": "v",
                M + "metadata_b": "<![CDATA[<&>]]>",
                M + "metadata_c": "1<!-- c -->2",
            },
        ),
        # Local names (a namespace prefix is dropped), sanitized; later duplicates win.
        (
            "<hostName>h</hostName><metadata><p:k-1>1</p:k-1><k.1>2</k.1></metadata>",
            {M + "metadata_k_1": "2"},
        ),
        # A text field is the element's own character data, children skipped.
        ("<hostName>h<x>ignored</x>1</hostName>", {"__address__": "h1:80", M + "hostname": "h1"}),
        ("<hostName>h</hostName><instanceId></instanceId>", {"__address__": "h:80"}),
    ],
)
def test_decoding_as_go_does(xml: str, expected: dict[str, str]) -> None:
    labels = labels_of(f"<instance>{xml}</instance>")
    for name, value in expected.items():
        assert labels.get(name) == value, name
    assert "instance" not in labels or labels["instance"]
    if "<instanceId>" not in xml:
        assert "instance" not in labels
        assert M + "id" not in labels
    if "<port" not in xml:
        assert M + "port" not in labels


@pytest.mark.parametrize(
    ("xml", "problem"),
    [
        ("<hostName>h</hostName><port>0</port>", "not a valid host:port"),
        ("<hostName>h</hostName><port>70000</port>", "not a valid host:port"),
        ("<hostName></hostName><port>80</port>", "not a valid host:port"),
        ("<hostName>h</hostName><port>80a</port>", "port '80a' is not a number"),
        ('<hostName>h</hostName><port enabled="yes">80</port>', "port enabled 'yes'"),
        ("<hostName>h</hostName><countryId>x</countryId>", "countryId 'x'"),
    ],
)
def test_instances_go_cannot_decode_are_refused(xml: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        labels_of(f"<instance>{xml}</instance>")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "eureka test/apps: empty answer"),
        (b"<html><body>Service Unavailable", "answer is <html>, not Eureka's"),
        (b"<applications><application", "not well-formed XML"),
        (b"<applications><application><name>A</name><instance>", "not well-formed XML"),
        (b'<!DOCTYPE a [<!ENTITY x "y">]><applications/>', "DTD is not allowed"),
        (b"{}", "not well-formed XML"),
        (b"<html><body>Bad gateway</body></html>", "answer is <html>, not Eureka's"),
    ],
)
def test_answers_that_are_not_eureka_xml_fail_naming_where(body: bytes, message: str) -> None:
    with pytest.raises(BackendError, match=message) as error:
        parse_xml(body, "eureka test/apps")
    assert str(error.value).startswith("eureka test/apps")


def test_json_shape() -> None:
    body = (
        b'{"applications":{"apps__hashcode":"UP_1_","application":{"name":"WEB","instance":'
        b'{"hostName":"h","instanceId":"i","status":"UP","countryId":1,'
        b'"port":{"$":8080,"@enabled":"true"},"securePort":{"$":"443","@enabled":false},'
        b'"dataCenterInfo":{"@class":"x","name":"MyOwn"},'
        b'"metadata":{"@class":"java.util.Collections$EmptyMap"}}}}}'
    )
    apps = parse_json(body, "w")
    assert apps.hash_code == "UP_1_"
    [(name, [raw])] = apps.apps
    labels = instance_labels(name, raw)
    assert labels["__address__"] == "h:8080"
    assert labels[M + "port_enabled"] == "true"
    assert labels[M + "secure_port"] == "443"
    assert labels[M + "secure_port_enabled"] == "false"
    assert not any(k.startswith(M + "metadata_") for k in labels)


@pytest.mark.parametrize("body", [b"<applications/>", b"{", b'{"applications": []}', b"[]"])
def test_json_answers_that_are_not_eureka_json_fail(body: bytes) -> None:
    with pytest.raises(BackendError, match=r"^w: answer"):
        parse_json(body, "w")


def test_config_as_prometheus_validates_it() -> None:
    config = EurekaSDConfig(server="http://127.0.0.1:8761/eureka/")
    assert config.server == "http://127.0.0.1:8761/eureka"
    assert config.refresh_interval == 30.0
    assert config.delta
    for bad in ("", "127.0.0.1:8761", "ftp://h/eureka", "http://"):
        with pytest.raises(ValidationError, match="eureka_sd"):
            EurekaSDConfig(server=bad)
    # The common HTTP client config's own rules (inherited).
    with pytest.raises(ValidationError, match="at most one of basic_auth and authorization"):
        EurekaSDConfig.model_validate(
            {
                "server": "http://h",
                "basic_auth": {"username": "u", "password": "p"},
                "authorization": {"credentials": "t"},
            }
        )


# --- property-based: decoding and merging against the double's registry ----------------

_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=8)
_keys = st.sampled_from(["prometheus.path", "management.port", "rack-id", "Team", "zone", "ünï"])
_statuses = st.sampled_from(["UP", "DOWN", "STARTING", "OUT_OF_SERVICE", "UNKNOWN"])


@st.composite
def records(draw: st.DrawFn, app: str | None = None) -> dict[str, Any]:
    host = f"127.0.0.{draw(st.integers(1, 9))}"
    return instance(
        app or draw(st.sampled_from(["web", "api", "db"])),
        host,
        draw(st.one_of(st.none(), st.integers(1, 65535))),
        instance_id=draw(st.sampled_from([None, "", f"{host}-x"])),
        status=draw(_statuses),
        metadata=draw(st.dictionaries(_keys, _text, max_size=3)),
        secure_port=draw(st.one_of(st.none(), st.integers(1, 65535))),
        port_enabled=draw(st.booleans()),
        datacenter=draw(st.sampled_from(["MyOwn", "Amazon"])),
        datacenter_metadata=draw(
            st.one_of(st.none(), st.dictionaries(st.sampled_from(["ami-id", "zone"]), _text))
        ),
        country_id=draw(st.integers(0, 99)),
    )


def _xml_escape(value: str) -> str:
    return (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&apos;")
    )


def expected_labels(record: dict[str, Any], *, xml: bool) -> dict[str, str]:
    """What Prometheus labels a record with, written from eureka.go, not from our code."""
    port = record["port"]
    labels = {
        "__address__": f"{record['hostName']}:{port if port is not None else 80}",
        "instance": record["instanceId"],
        "__meta_eureka_app_name": record["app"],
        M + "hostname": record["hostName"],
        M + "homepage_url": record["homePageUrl"],
        M + "statuspage_url": record["statusPageUrl"],
        M + "healthcheck_url": record["healthCheckUrl"],
        M + "ip_addr": record["ipAddr"],
        M + "vip_address": record["vipAddress"],
        M + "secure_vip_address": record["secureVipAddress"],
        M + "status": record["status"],
        M + "country_id": str(record["countryId"]),
        M + "id": record["instanceId"],
        M + "datacenterinfo_name": record["dataCenterInfo"]["name"],
    }
    if port is not None:
        labels[M + "port"] = str(port)
        labels[M + "port_enabled"] = str(record["portEnabled"]).lower()
    if record["securePort"] is not None:
        labels[M + "secure_port"] = str(record["securePort"])
        labels[M + "secure_port_enabled"] = str(record["securePortEnabled"]).lower()
    meta = {
        "metadata_": record["metadata"],
        "datacenterinfo_metadata_": record["dataCenterInfo"]["metadata"] or {},
    }
    for prefix, items in meta.items():
        for key, value in items.items():
            name = "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in key)
            labels[M + prefix + name] = _xml_escape(value) if xml else value
    return {k: v for k, v in labels.items() if v}


@settings(max_examples=40)
@given(batch=st.lists(records(), max_size=6), as_json=st.booleans())
def test_decoding_the_doubles_answers(batch: list[dict[str, Any]], as_json: bool) -> None:
    double = EurekaDouble()
    double.load(batch)
    body = double.render("apps", json=as_json)
    answer = parse_json(body, "w") if as_json else parse_xml(body, "w")
    assert answer.hash_code == double.hash_code()
    ours = sorted(
        (instance_labels(name, raw) for name, raws in answer.apps for raw in raws),
        key=lambda labels: sorted(labels.items()),
    )
    theirs = sorted(
        (expected_labels(r, xml=not as_json) for r in double.instances()),
        key=lambda labels: sorted(labels.items()),
    )
    assert ours == theirs


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """Registry changes, with the client fetching (full or delta) in between."""
    ops: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["register", "cancel", "status", "metadata", "fetch"]))
        ops.append((kind, draw(records()) if kind == "register" else draw(st.integers(0, 50))))
    return ops


@settings(max_examples=50)
@given(ops=operations(), as_json=st.booleans())
def test_a_full_copy_plus_deltas_is_the_registry(ops: list[tuple[str, Any]], as_json: bool) -> None:
    now = itertools.count()
    double = EurekaDouble(clock=lambda: float(next(now)))  # every change 1 "second" apart
    parse = parse_json if as_json else parse_xml
    local = full_copy(parse(double.render("apps", json=as_json), "w"))
    for kind, argument in ops:
        keys = [(r["app"], r["instanceId"] or r["hostName"]) for r in double.instances()]
        if kind == "register":
            double.register(argument)
        elif keys and kind == "cancel":
            double.cancel(*keys[argument % len(keys)])
        elif keys and kind == "status":
            double.set_status(*keys[argument % len(keys)], ["DOWN", None][argument % 2])
        elif keys and kind == "metadata":
            double.update_metadata(*keys[argument % len(keys)], {"gen": str(argument)})
        elif kind == "fetch":
            delta = parse(double.render("delta", json=as_json), "w")
            local, _ = apply_delta(local, delta)
            # Within the delta window, the merge never needs a reconcile.
            assert hash_code(local) == delta.hash_code == double.hash_code()
    delta = parse(double.render("delta", json=as_json), "w")
    local, touched = apply_delta(local, delta)
    assert local == full_copy(parse(double.render("apps", json=as_json), "w"))
    assert touched <= {r["app"] for r in double.instances()} | {name for name, _ in delta.apps}


def test_apply_delta_leaves_the_old_copy_alone() -> None:
    double = EurekaDouble()
    key = double.register(instance("web", "127.0.0.1"))
    before = full_copy(parse_xml(double.render(), "w"))
    double.cancel("WEB", key)
    after, touched = apply_delta(before, parse_xml(double.render("delta"), "w"))
    assert after == {}
    assert touched == {"WEB"}
    assert before["WEB"][key].status == "UP"


def test_reconcile_hash_code_is_eurekas() -> None:
    assert reconcile_hash_code(["UP", "DOWN", "UP", "UP"]) == "DOWN_1_UP_3_"
    double = EurekaDouble()
    for n, status in enumerate(["UP", "DOWN", "UP", "OUT_OF_SERVICE"]):
        double.register(instance("web", f"127.0.0.{n + 1}", status=status))
    assert hash_code(full_copy(parse_xml(double.render(), "w"))) == "DOWN_1_OUT_OF_SERVICE_1_UP_2_"


def _sample_xml() -> bytes:
    double = EurekaDouble()
    double.register(instance("web", "127.0.0.1", 8080, metadata={"a": "x&y"}))
    double.register(instance("api", "127.0.0.2", None, datacenter="Amazon"))
    return double.render()


_SAMPLE_XML = _sample_xml()  # truncated anywhere below
# orjson encodes integers within 64 bits only (as Go does); wider ones are no JSON a server sends.
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)
_fields = st.sampled_from(
    [
        "hostName",
        "instanceId",
        "port",
        "securePort",
        "metadata",
        "dataCenterInfo",
        "countryId",
        "status",
        "actionType",
    ]
)


@settings(max_examples=100)
@given(
    body=st.one_of(
        st.binary(max_size=200),
        st.builds(
            lambda cut, body: body[:cut],
            st.integers(0, 2000),
            st.just(_SAMPLE_XML),
        ),
        st.builds(
            lambda instance: orjson.dumps(
                {"applications": {"application": {"name": "A", "instance": instance}}}
            ),
            st.dictionaries(_fields, _json_values, max_size=5) | _json_values,
        ),
    )
)
def test_any_answer_decodes_or_fails_cleanly(body: bytes) -> None:
    """Whatever the server sends, decoding gives instances or a BackendError, and an
    instance gives a target or a ValueError: nothing else escapes."""
    failures = []
    for parse in (parse_xml, parse_json):
        try:
            answer = parse(body, "w")
        except BackendError as error:
            failures.append(str(error))
            continue
        for name, raws in answer.apps:
            for raw in raws:
                raw.key()
                with contextlib.suppress(ValueError):
                    instance_labels(name, raw)
    assert all(message.startswith("w: ") for message in failures)
