"""Parsers of Nacos's instance shapes: labels, sanitizing, and bad input as BackendError."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdbridge.discovery.nacos.labels import (
    Reader,
    ServiceKey,
    Skips,
    format_weight,
    parse_instance,
    parse_service_detail,
    split_grouped,
    valid_host,
)
from sdbridge.errors import BackendError
from sdbridge.model import TargetGroup, is_valid_label_name

KEY = ServiceKey("public", "DEFAULT_GROUP", "svc")


def keep_all(cluster: str, healthy: bool) -> bool:
    return True


def parse(raw: dict[str, Any], skips: Skips | None = None) -> dict[str, str] | None:
    return parse_instance(
        Reader("test"), raw, KEY, at="hosts[0]", keep=keep_all, skips=skips or Skips([])
    )


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_weight_reads_back_and_prints_as_go(weight: float) -> None:
    text = format_weight(weight)
    assert float(text) == weight
    assert not text.endswith(".0")


@given(st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=5))
def test_metadata_keys_become_valid_label_names(metadata: dict[str, str]) -> None:
    labels = parse({"ip": "127.0.0.1", "port": 80, "metadata": metadata})
    assert labels is not None
    assert all(is_valid_label_name(name) for name in labels)
    TargetGroup(source=KEY.source, targets=(labels,))  # a valid target


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
FIELDS = st.sampled_from(
    [
        "ip",
        "port",
        "weight",
        "healthy",
        "enabled",
        "ephemeral",
        "clusterName",
        "metadata",
        "instanceId",
    ]
)


@given(st.dictionaries(FIELDS, JSON, max_size=9))
def test_any_instance_json_is_labels_none_or_backend_error(raw: dict[str, Any]) -> None:
    try:
        labels = parse(raw)
    except BackendError:
        return
    if labels is not None:
        TargetGroup(source=KEY.source, targets=(labels,))


DETAIL = st.fixed_dictionaries(
    {},
    optional={
        "serviceName": JSON,
        "groupName": JSON,
        "clusterMap": st.dictionaries(
            st.text(max_size=5),
            st.fixed_dictionaries({}, optional={"hosts": st.lists(st.dictionaries(FIELDS, JSON))}),
            max_size=2,
        ),
    },
)


@given(DETAIL)
def test_any_service_detail_json_is_parsed_or_backend_error(raw: dict[str, Any]) -> None:
    with contextlib.suppress(BackendError):
        parse_service_detail(Reader("t"), raw, "public", at="d", keep=keep_all, skips=Skips([]))


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ({"ip": "127.0.0.1", "port": 0}, "port 0"),
        ({"ip": "127.0.0.1", "port": 70000}, "port 70000"),
        ({"ip": "300.1.1.1", "port": 80}, "'300.1.1.1'"),
        ({"ip": "", "port": 80}, "''"),
        ({"ip": "a b", "port": 80}, "'a b'"),
    ],
)
def test_bad_addresses_are_skipped_and_named(raw: dict[str, Any], why: str) -> None:
    skips = Skips([])
    assert parse(raw, skips) is None
    assert len(skips.items) == 1
    assert why in skips.items[0]
    assert KEY.source in skips.items[0]


def test_disabled_and_filtered_instances_are_not_skips() -> None:
    skips = Skips([])
    assert parse({"ip": "127.0.0.1", "port": 80, "enabled": False}, skips) is None
    assert skips.items == []


def test_hosts_and_groups() -> None:
    assert valid_host("10.0.0.1")
    assert valid_host("fe80::1")
    assert valid_host("app-1.svc.cluster.local")
    assert not valid_host("10.0.0.256")
    assert not valid_host("under_score")
    assert split_grouped("G@@svc", "DEFAULT_GROUP") == ("G", "svc")
    assert split_grouped("svc", "G2") == ("G2", "svc")


def test_wrong_types_are_backend_errors_naming_where() -> None:
    with pytest.raises(BackendError, match=r"hosts\[0\].port is not a number"):
        parse({"ip": "127.0.0.1", "port": "80"})
    with pytest.raises(BackendError, match=r"hosts\[0\].metadata is not an object"):
        parse({"ip": "127.0.0.1", "port": 80, "metadata": [1]})
