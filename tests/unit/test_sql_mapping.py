"""sql_sd's pure parts: rows to target groups, value rendering, DSN masking, the config."""

from __future__ import annotations

import datetime
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdbridge.config import parse_config
from sdbridge.discovery.sql import SQLSDConfig
from sdbridge.discovery.sql.drivers import MASK, Database, safe_dsn
from sdbridge.discovery.sql.mapping import RowMapper, map_rows, plan_columns, render_value
from sdbridge.errors import ConfigError, DiscoveryError


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        ("x", "x"),
        (True, "true"),
        (False, "false"),
        (42, "42"),
        (-7, "-7"),
        (2.5, "2.5"),
        (3.0, "3"),
        (1e20, "1e+20"),
        (float("nan"), "NaN"),
        (float("inf"), "+Inf"),
        (Decimal("10.50"), "10.50"),
        (Decimal("1E+2"), "100"),
        (datetime.datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05Z"),
        (
            datetime.datetime(
                2024, 1, 2, 4, 4, 5, 120000, tzinfo=datetime.timezone(datetime.timedelta(hours=1))
            ),
            "2024-01-02T03:04:05.120000Z",
        ),
        (datetime.date(2024, 1, 2), "2024-01-02"),
        (datetime.timedelta(minutes=1, seconds=30), "90"),
        (b"raw", "raw"),
        (b"\xff\x00", "ff00"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        ({"b": 1, "a": [True]}, '{"a":[true],"b":1}'),
    ],
)
def test_render_value(value: Any, text: str) -> None:
    assert render_value(value) == text


@pytest.mark.parametrize(
    ("columns", "error"),
    [
        (["name", "env"], "no address column, nor host and port columns (its columns: name, env)"),
        (["host", "env"], "no port column"),
        (["port"], "no host column"),
        (["address", "ADDRESS"], "two address columns"),
        (["address", "a-b", "a_b"], "'a-b' and 'a_b' both become the label __meta_sql_a_b"),
    ],
)
def test_plan_columns_refuses(columns: list[str], error: str) -> None:
    with pytest.raises(DiscoveryError, match=error.replace("(", r"\(").replace(")", r"\)")):
        plan_columns(columns)


def test_rows_map_to_targets_grouped_by_address() -> None:
    columns = plan_columns(["Host", "Port", "Labels", "Rack-No"])
    mapped = map_rows(
        columns,
        [
            ("2001:db8::1", 9100, '{"__scheme__": "https"}', 1),
            ("127.0.0.1", 80, None, 2),
            ("127.0.0.1", 80, None, 2),  # identical: one target
            ("127.0.0.1", 80, None, 3),  # same address, other labels: a second target
            ("127.0.0.1", None, None, 4),
            ("127.0.0.1", "http", None, 5),
            ("bad host", 80, None, 6),
            ("127.0.0.1", 81, '{"__address__": "x:1"}', 7),
            ("127.0.0.1", 82, "not json", 8),
        ],
    )
    groups = {g.source: g.targets for g in mapped.groups}
    assert groups["[2001:db8::1]:9100"] == (
        {
            "__meta_sql_host": "2001:db8::1",
            "__meta_sql_port": "9100",
            "__meta_sql_rack_no": "1",
            "__scheme__": "https",
            "__address__": "[2001:db8::1]:9100",
        },
    )
    assert [t["__meta_sql_rack_no"] for t in groups["127.0.0.1:80"]] == ["2", "3"]
    assert [(n, str(e)) for n, e in mapped.skipped] == [
        (5, "column Port is NULL"),
        (6, "column Port: 'http' is not a port (1-65535)"),
        (7, "column Host: 'bad host' is not a host name or address"),
        (
            8,
            "column Labels: __address__ comes from the address (or host and port) columns,"
            " not from labels",
        ),
        (9, "column Labels: not JSON (invalid literal, expected 'null': line 1 column 1 (char 0))"),
    ]


label_values = st.one_of(
    st.none(),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),  # drivers decode UTF-8
    st.integers(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.decimals(allow_nan=False, allow_infinity=False, places=2),
    st.datetimes(),
)


@given(
    rows=st.lists(
        st.tuples(st.integers(1, 3), st.integers(0, 70000), label_values, label_values),
        max_size=30,
    )
)
def test_mapping_keeps_every_valid_row_and_nothing_else(
    rows: list[tuple[int, int, Any, Any]],
) -> None:
    columns = plan_columns(["host", "port", "a", "b"])
    table = [(f"127.0.0.{h}", p, a, b) for h, p, a, b in rows]
    mapped = map_rows(columns, table)
    valid = [r for r in table if 0 < r[1] <= 65535]
    assert len(mapped.skipped) == len(table) - len(valid)
    found = {
        (t["__address__"], t["__meta_sql_a"], t["__meta_sql_b"])
        for g in mapped.groups
        for t in g.targets
    }
    expected = {(f"{h}:{p}", render_value(a), render_value(b)) for h, p, a, b in valid}
    assert found == expected
    assert len({g.source for g in mapped.groups}) == len(mapped.groups)  # one group per address


userinfo = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789!$&'()*+,;=-._~%:", min_size=1, max_size=20
)


@given(password=userinfo)
def test_safe_dsn_never_shows_the_password(password: str) -> None:
    from urllib.parse import quote

    encoded = quote(password, safe="")
    dsn = f"postgresql://app:{encoded}@127.0.0.1:5432/cmdb?sslmode=disable&password={encoded}"
    where = safe_dsn(dsn)
    assert where == f"postgresql://app:{MASK}@127.0.0.1:5432/cmdb?sslmode=disable&password={MASK}"
    database = Database(dsn, tls=None, connect_timeout=1, statement_timeout=1)
    message = str(database.error("failed", ValueError(f"the driver said {password} {encoded}")))
    assert message.startswith(where + ": ")
    said = message.removeprefix(where).replace(MASK, "")
    if len(password) > 3:  # a shorter one could be a piece of any word of the message
        assert password not in said
        assert encoded not in said


def config(**entry: Any) -> Any:
    return parse_config(
        {"jobs": [{"name": "cmdb", "sql_sd_configs": [entry]}]}, base_dir=Path("/etc/sdbridge")
    ).jobs[0]


def test_config_resolves_paths_and_masks_the_dsn() -> None:
    [entry] = config(dsn="sqlite:///inventory/cmdb.db", query="SELECT 1").sql_sd_configs
    assert entry.dsn.get_secret_value() == "sqlite:////etc/sdbridge/inventory/cmdb.db"
    [entry] = config(dsn_file="secrets/dsn", query="SELECT 1").sql_sd_configs
    assert entry.dsn_file == Path("/etc/sdbridge/secrets/dsn")
    secret = "postgresql://app:hunter2@127.0.0.1/cmdb"
    [entry] = config(dsn=secret, query="SELECT 1").sql_sd_configs
    assert "hunter2" not in entry.model_dump_json()
    assert isinstance(entry, SQLSDConfig)


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ({"query": "SELECT 1"}, "set one of dsn or dsn_file"),
        ({"dsn": "sqlite:///a", "dsn_file": "f", "query": "SELECT 1"}, "set one of dsn"),
        ({"dsn": "oracle://u:hunter2@h/db", "query": "SELECT 1"}, "unknown DSN scheme 'oracle'"),
        ({"dsn": "hunter2", "query": "SELECT 1"}, "a DSN is a URL"),
        ({"dsn": "sqlite:///a", "query": "  "}, "query must not be blank"),
        ({"dsn": "sqlite:///a", "query": "SELECT 1", "notify_channel": "c"}, "needs a postgresql"),
        ({"dsn": "sqlite:///a", "query": "SELECT 1", "tls_config": {}}, "does not apply"),
        ({"dsn": "sqlite:///a", "query": "SELECT 1", "max_rows": 0}, "max_rows"),
        ({"dsn": "sqlite:///a", "query": "SELECT 1", "change_interval": "0s"}, "greater than 0"),
    ],
)
def test_config_errors_never_quote_the_dsn(entry: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config(**entry)
    assert error in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert "sql_sd_configs[0]" in str(caught.value)


def test_a_mapper_reuses_unchanged_rows_and_maps_changed_ones() -> None:
    mapper = RowMapper()
    columns = plan_columns(["address", "env", "tags"])
    first = mapper.map(
        columns,
        [("127.0.0.1:1", "prod", None), ("127.0.0.1:2", "dev", None), ("127.0.0.1:3", "x", None)],
    )
    before = {g.source: g for g in first.groups}
    second = mapper.map(
        columns,
        [("127.0.0.1:1", "prod", None), ("127.0.0.1:2", "staging", None), ("bad", "x", None)],
    )
    after = {g.source: g for g in second.groups}
    assert after["127.0.0.1:1"] is before["127.0.0.1:1"]  # unchanged: the same group
    assert after["127.0.0.1:2"].targets[0]["__meta_sql_env"] == "staging"
    assert "127.0.0.1:3" not in after
    assert [(n, str(e)) for n, e in second.skipped] == [
        (3, "column address: 'bad' is not host:port")
    ]
    # An unhashable value (a PostgreSQL array) maps all the same, without reuse.
    third = mapper.map(columns, [("127.0.0.1:1", "prod", ["a", "b"])])
    assert third.groups[0].targets[0]["__meta_sql_tags"] == '["a","b"]'
    # New columns: nothing is reused from a result of other columns.
    other = plan_columns(["address", "env", "team"])
    fourth = mapper.map(other, [("127.0.0.1:1", "prod", None)])
    assert "__meta_sql_team" in fourth.groups[0].targets[0]
