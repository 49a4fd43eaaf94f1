"""Label-name and address validation, TargetGroup, and file_sd parsing (as strict as Prometheus)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdbridge.errors import InvalidTargetError
from sdbridge.model import (
    TargetGroup,
    is_valid_address,
    is_valid_label_name,
    join_host_port,
    join_list,
    parse_file_sd,
    sanitize_label_name,
)

PROMETHEUS_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("a", True),
        ("_", True),
        ("__address__", True),
        ("__meta_consul_service", True),
        ("job2", True),
        ("A_b_C", True),
        ("1abc", False),
        ("", False),
        ("a-b", False),
        ("a.b", False),
        ("a b", False),
        ("é", False),
        ("a\n", False),
    ],
)
def test_label_names(name: str, valid: bool) -> None:
    assert is_valid_label_name(name) is valid


@given(st.text(max_size=12))
def test_label_name_rule_is_prometheus_rule(name: str) -> None:
    assert is_valid_label_name(name) == bool(PROMETHEUS_LABEL_NAME.fullmatch(name))


@given(st.text(max_size=12))
def test_sanitized_names_are_valid_unless_they_start_with_a_digit(name: str) -> None:
    sanitized = sanitize_label_name(name)
    assert len(sanitized) == len(name)
    if sanitized and not sanitized[0].isdigit():
        assert is_valid_label_name(sanitized)


def test_join_list() -> None:
    assert join_list(["a", "b"]) == ",a,b,"
    assert join_list([]) == ",,"


@pytest.mark.parametrize(
    ("address", "valid"),
    [
        ("127.0.0.1:9100", True),
        ("localhost:80", True),
        ("host.example:65535", True),
        ("[::1]:9100", True),
        ("[fe80::1%eth0]:9100", True),
        ("127.0.0.1", False),
        ("127.0.0.1:", False),
        ("127.0.0.1:0", False),
        ("127.0.0.1:65536", False),
        ("127.0.0.1:http", False),
        (":9100", False),
        ("::1:9100", False),
        ("http://h:1", False),
        ("a b:1", False),
        ("", False),
    ],
)
def test_addresses(address: str, valid: bool) -> None:
    assert is_valid_address(address) is valid


def test_join_host_port_brackets_ipv6() -> None:
    assert join_host_port("127.0.0.1", 80) == "127.0.0.1:80"
    assert join_host_port("fd00::1", 9100) == "[fd00::1]:9100"
    assert join_host_port("fe80::1", 2) == "[fe80::1]:2"
    assert join_host_port("example.org", "8080") == "example.org:8080"


def test_group_validates_and_freezes_targets() -> None:
    g = TargetGroup(source="s", targets=[{"__address__": "127.0.0.1:1"}], labels={"a": "b"})  # type: ignore[arg-type]
    assert isinstance(g.targets, tuple)
    assert g.merged_targets() == [{"a": "b", "__address__": "127.0.0.1:1"}]


def test_target_labels_override_group_labels() -> None:
    g = TargetGroup(
        source="s",
        targets=({"__address__": "127.0.0.1:1", "env": "prod"}, {"__address__": "127.0.0.1:2"}),
        labels={"env": "dev", "team": "x"},
    )
    assert g.merged_targets() == [
        {"__address__": "127.0.0.1:1", "env": "prod", "team": "x"},
        {"__address__": "127.0.0.1:2", "env": "dev", "team": "x"},
    ]


def test_group_address_may_come_from_group_labels() -> None:
    g = TargetGroup(source="s", targets=({"a": "1"},), labels={"__address__": "127.0.0.1:1"})
    assert g.merged_targets() == [{"__address__": "127.0.0.1:1", "a": "1"}]


@pytest.mark.parametrize(
    ("targets", "labels", "message"),
    [
        (({"__address__": "127.0.0.1:1", "1abc": "x"},), {}, "invalid label name '1abc'"),
        (({"__address__": "127.0.0.1:1"},), {"a-b": "x"}, "invalid label name 'a-b'"),
        (({"__address__": "127.0.0.1:1", "a": 1},), {}, "non-string value 1"),
        (({"a": "b"},), {}, "no __address__"),
        (({"__address__": "nope"},), {}, "'nope' is not host:port"),
        (("127.0.0.1:1",), {}, "must be a label set"),
        (({"__address__": "127.0.0.1:1", "a": "\udcff"},), {}, "not valid UTF-8"),
    ],
)
def test_invalid_groups_name_source_and_value(
    targets: tuple[object, ...], labels: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidTargetError) as info:
        TargetGroup(source="svc/7", targets=targets, labels=labels)  # type: ignore[arg-type]
    assert "'svc/7'" in str(info.value)
    assert message in str(info.value)


def test_source_must_be_a_string() -> None:
    with pytest.raises(InvalidTargetError, match="not a string"):
        TargetGroup(source=7)  # type: ignore[arg-type]


def test_empty_group_is_valid() -> None:
    assert TargetGroup(source="gone").targets == ()


# --- file_sd parsing --------------------------------------------------------------------


def test_parse_file_sd() -> None:
    data = [
        {"targets": ["127.0.0.1:1", "127.0.0.2:1"], "labels": {"env": "dev"}},
        {"targets": ["127.0.0.3:1"]},
        {"labels": {"only": "labels"}},
        {"targets": None, "labels": None},
    ]
    groups = parse_file_sd(data, origin="f")
    assert [g.source for g in groups] == ["0", "1", "2", "3"]
    assert groups[0].targets == ({"__address__": "127.0.0.1:1"}, {"__address__": "127.0.0.2:1"})
    assert groups[0].labels == {"env": "dev"}
    assert groups[1].labels == {}
    assert groups[2].targets == ()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"targets": []}, "expected a list of target groups, got dict"),
        ("garbage", "expected a list of target groups, got str"),
        (None, "expected a list of target groups, got NoneType"),
        ([None], "group 0: expected a mapping, got None"),
        ([{"targets": ["127.0.0.1:1"]}, None], "group 1: expected a mapping"),
        ([{"targets": [], "extra": 1}], "group 0: unknown field(s) 'extra'"),
        ([{"target": ["127.0.0.1:1"]}], "unknown field(s) 'target'"),
        ([{"targets": "127.0.0.1:1"}], "targets must be a list of strings"),
        ([{"targets": [1]}], "targets must be a list of strings"),
        ([{"targets": [], "labels": ["a"]}], "labels must be a mapping"),
        ([{"targets": ["127.0.0.1:1"], "labels": {"1abc": "x"}}], "invalid label name '1abc'"),
        ([{"targets": ["127.0.0.1:1"], "labels": {"a": 1}}], "non-string value 1"),
        ([{"targets": ["127.0.0.1"]}], "is not host:port"),
        ([{"targets": [], "labels": {"__address__": "127.0.0.1:1"}}], "belongs in targets"),
    ],
)
def test_parse_file_sd_rejects_what_prometheus_rejects(data: object, message: str) -> None:
    with pytest.raises(InvalidTargetError) as info:
        parse_file_sd(data, origin="output of ./x")
    assert str(info.value).startswith("output of ./x: ")
    assert message in str(info.value)


label_names = st.from_regex(PROMETHEUS_LABEL_NAME, fullmatch=True).filter(
    lambda n: n != "__address__"
)
label_sets = st.dictionaries(label_names, st.text(max_size=8), max_size=4)
addresses = st.builds("127.0.0.{}:{}".format, st.integers(1, 254), st.integers(1, 65535))


@given(
    st.lists(
        st.fixed_dictionaries({"targets": st.lists(addresses, max_size=3), "labels": label_sets}),
        max_size=5,
    )
)
def test_parse_file_sd_keeps_everything_valid(data: list[dict[str, object]]) -> None:
    groups = parse_file_sd(data, origin="f")
    assert len(groups) == len(data)
    for g, entry in zip(groups, data, strict=True):
        assert [t["__address__"] for t in g.targets] == entry["targets"]
        assert g.labels == entry["labels"]


def test_a_null_label_value_is_empty_as_in_prometheus() -> None:
    [g] = parse_file_sd([{"targets": ["127.0.0.1:1"], "labels": {"a": None, "b": "x"}}], origin="f")
    assert g.labels == {"a": "", "b": "x"}
