# ruff: noqa: PT017  (fuzz targets check the message of whatever they raise)
"""Fuzzing: the config loader and every parser of backend data, on hypothesis-made input.

Each parser may only succeed or raise its documented error, and every error names its
input (the config file, or the backend object it came from). Example counts are stated
with each test (``FUZZ_EXAMPLES``); the suite runs them all in a few seconds.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdbridge.config import load_config, parse_config
from sdbridge.discovery import consul, etcd, zookeeper
from sdbridge.discovery.exec import parse_exec_output
from sdbridge.errors import BackendError, ConfigError, InvalidTargetError
from sdbridge.model import parse_file_sd

FUZZ_EXAMPLES = 300  # per parser test
CONFIG_EXAMPLES = 300  # parse_config; load_config runs FILE_EXAMPLES files
FILE_EXAMPLES = 150

# Real keys and values, so generated configs get deep into validation, not just "unknown key".
KEYS = [
    "global", "data_dir", "publish_delay", "min", "max", "web", "listen_address", "jobs",
    "name", "exec_sd_configs", "command", "refresh_interval", "timeout", "env",
    "relabel_configs", "source_labels", "regex", "action", "target_label", "replacement",
    "modulus", "separator", "guard", "enabled", "max_drop_ratio", "confirmations",
    "hold_for", "output", "file", "file_mode", "pretty", "consul_sd_configs", "server",
    "services", "tags", "etcd_sd_configs", "zookeeper_sd_configs", "targets", "labels",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.sampled_from(
        [
            "30s",
            "1h30m",
            "0",
            "-1s",
            "",
            "web",
            "replace",
            "hashmod",
            "keep",
            "(.*)",
            "$1",
            "(unclosed",
            "0644",
            "999",
            "x.json",
            "x.txt",
            "127.0.0.1:9099",
            "a-b",
            "__x",
            "\x00",
        ]
    ),
    st.text(max_size=12),
)
yamlish = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), children, max_size=5
        ),
    ),
    max_leaves=30,
)
config_like = st.fixed_dictionaries(
    {},
    optional={
        "global": yamlish,
        "web": yamlish,
        "jobs": st.lists(
            st.dictionaries(st.sampled_from(KEYS), yamlish, max_size=6)
            | st.fixed_dictionaries(
                {"name": st.sampled_from(["j", "a-b", "", "x y"]), "exec_sd_configs": yamlish},
                optional={"relabel_configs": yamlish, "guard": yamlish, "output": yamlish},
            ),
            max_size=3,
        ),
    },
)


def assert_names(errors: list[str], origin: str) -> None:
    """Each error (one per problem found) starts with the file it is about."""
    assert errors
    for error in errors:
        assert error.startswith(origin), f"error does not name {origin!r}: {error!r}"


@settings(max_examples=CONFIG_EXAMPLES)
@given(data=st.one_of(config_like, yamlish))
def test_fuzz_parse_config(data: Any) -> None:
    try:
        parse_config(data, origin="fuzz.yml")
    except ConfigError as exc:
        assert_names(exc.errors, "fuzz.yml")


@settings(max_examples=FILE_EXAMPLES, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.one_of(
        st.text(max_size=200),
        config_like.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
        st.binary(max_size=100).map(lambda b: b.decode("latin-1")),
    )
)
def test_fuzz_load_config_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "sdbridge.yml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        load_config(path)
    except ConfigError as exc:
        assert_names(exc.errors, str(path))


file_sd_like = st.one_of(
    yamlish,
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "targets": st.lists(
                    st.sampled_from(
                        [
                            "127.0.0.1:9100",
                            "h:1",
                            "[::1]:80",
                            "no-port",
                            "h:0",
                            "h:99999",
                            "",
                            "a b:1",
                        ]
                    )
                    | st.text(max_size=10),
                    max_size=3,
                )
                | yamlish,
                "labels": st.dictionaries(
                    st.sampled_from(["a", "__address__", "1x", "", "é"]) | st.text(max_size=5),
                    st.text(max_size=5) | yamlish,
                    max_size=3,
                )
                | yamlish,
                "extra": yamlish,
            },
        ),
        max_size=4,
    ),
)


@settings(max_examples=FUZZ_EXAMPLES)
@given(data=file_sd_like)
def test_fuzz_parse_file_sd(data: Any) -> None:
    try:
        groups = parse_file_sd(data, origin="backend.json")
    except InvalidTargetError as exc:
        assert str(exc).startswith("backend.json"), str(exc)
    else:
        assert all(g.source.isdigit() for g in groups)


@settings(max_examples=FUZZ_EXAMPLES)
@given(
    stdout=st.one_of(
        st.binary(max_size=200),
        file_sd_like.map(lambda d: json.dumps(d).encode()),
        file_sd_like.map(lambda d: yaml.safe_dump(d, allow_unicode=True).encode()),
        st.text(max_size=100).map(str.encode),
    )
)
def test_fuzz_exec_output(stdout: bytes) -> None:
    origin = "output of ./list-targets.sh"
    try:
        parse_exec_output(stdout, origin=origin)
    except InvalidTargetError as exc:
        assert str(exc).startswith(origin), str(exc)


# --- the mechanisms' own parsers --------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(
        st.sampled_from(
            ["Node", "Service", "Address", "Port", "ID", "Tags", "Meta", "Checks", "Status",
             "CheckID", "ServiceName", "ServiceID", "Datacenter", "TaggedAddresses",
             "Addr", "Op", "Metadata", "name", "id", "endpoints", "nodes", "address",
             "host", "port", "serviceEndpoint", "status", "sslPort", "payload"]
        )
        | st.text(max_size=5),
        children,
        max_size=5,
    ),
    max_leaves=25,
)  # fmt: skip


@settings(max_examples=FUZZ_EXAMPLES)
@given(data=json_values)
def test_fuzz_consul_answers(data: Any) -> None:
    where = "GET /v1/health/service/web"
    try:
        consul.parse_service_nodes(data, service="web", tag_separator=",", where=where)
    except (BackendError, InvalidTargetError) as exc:
        assert "/v1/health/service/web" in str(exc), str(exc)
    for parse in (consul.parse_catalog, consul.parse_checks, consul.parse_nodes):
        with contextlib.suppress(BackendError, InvalidTargetError):
            parse(data)


etcd_values = st.one_of(
    st.binary(max_size=100),
    json_values.map(lambda d: json.dumps(d).encode()),
)


@settings(max_examples=FUZZ_EXAMPLES)
@given(key=st.text(max_size=20), value=etcd_values)
def test_fuzz_etcd_layouts(key: str, value: bytes) -> None:
    # The caller adds the key to the message; these only need to fail cleanly.
    for parse in (etcd.parse_endpoints, etcd.parse_kratos, etcd.parse_go_zero, etcd.parse_go_micro):
        with contextlib.suppress(InvalidTargetError):
            parse(key, value)
    with contextlib.suppress(InvalidTargetError):
        etcd.parse_coredns("/skydns/local/x/" + key, value, "/skydns")


@settings(max_examples=FUZZ_EXAMPLES)
@given(data=etcd_values, name=st.text(max_size=60))
def test_fuzz_zookeeper_nodes(data: bytes, name: str) -> None:
    path = "/services/web/member_0001"
    for parse in (zookeeper.parse_serverset_member, zookeeper.parse_curator_instance):
        try:
            parse(data, path)
        except InvalidTargetError as exc:
            assert path in str(exc), str(exc)
    try:
        zookeeper.parse_dubbo_provider(name, "/dubbo/com.foo.Bar/providers/" + name)
    except InvalidTargetError as exc:
        assert "/dubbo/com.foo.Bar/providers/" in str(exc), str(exc)
