"""sql_sd_configs against real PostgreSQL, MariaDB and SQLite: mapping, safety, changes, faults.

One server of each kind is shared by the session; each test makes its own tables (and the
module its own database and read-only role), and drops them. Most tests call
``refresh()`` directly; the NOTIFY, restart and change_query tests run a real Job with a
file output and record every snapshot it publishes, so a lost target or an empty publish
in between is seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from sdbridge.cli import main
from sdbridge.config import parse_config
from sdbridge.discovery.base import DiscoveryContext
from sdbridge.discovery.sql import SQLDiscoverer, SQLSDConfig
from sdbridge.errors import BackendError, DiscoveryError
from sdbridge.job import Job
from sdbridge.model import TargetGroup
from tests.servers.common import free_port
from tests.servers.mariadb import MariaDBServer, mariadb  # noqa: F401 - fixture
from tests.servers.postgres import PostgresServer, postgres  # noqa: F401 - fixture
from tests.unit.fakes import RecordingOutput, running, until

READER_PASSWORD = "reader-pw-Zq7!x"  # must never appear in a message
Targets = dict[str, list[dict[str, str]]]  # address -> the label sets of its targets


def unique(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def discoverer(**config: Any) -> SQLDiscoverer:
    """A discoverer for one sql_sd_configs entry (paths resolved against /)."""
    cfg = SQLSDConfig.model_validate(config).resolve_paths(Path("/"))
    return SQLDiscoverer(cfg, DiscoveryContext(job="sql", mechanism="sql"))


async def refresh(**config: Any) -> Targets:
    """One refresh, as address -> label sets (without __address__)."""
    sql = discoverer(**config)
    try:
        return by_address(await sql.refresh())
    finally:
        await sql.close()


def by_address(groups: list[TargetGroup]) -> Targets:
    found: Targets = {}
    for group in groups:
        for target in group.merged_targets():
            labels = {k: v for k, v in target.items() if k != "__address__"}
            found.setdefault(target["__address__"], []).append(labels)
    return found


async def refresh_error(**config: Any) -> str:
    """The message of the error one refresh raises."""
    sql = discoverer(**config)
    try:
        with pytest.raises(DiscoveryError) as caught:
            await sql.refresh()
    finally:
        await sql.close()
    message = str(caught.value)
    assert READER_PASSWORD not in message
    return message


def invalid_count() -> float:
    value = REGISTRY.get_sample_value(
        "sdbridge_invalid_targets_total", {"job": "sql", "mechanism": "sql"}
    )
    return value or 0.0


# The inventory every database holds, in its own types. Rows 3 to 5 are bad; rows 6 and 7
# share an address with row 1 (6 differs from 1, 7 repeats 6).
LABELS_1 = {
    "__metrics_path__": "/probe",
    "__scheme__": "https",
    "__param_module": "http_2xx",
    "__scrape_interval__": "15s",
    "team": "sre",
}
ROWS = [
    ("127.0.0.1", 9100, "prod", "1.50", True, "2024-01-02 03:04:05", json.dumps(LABELS_1)),
    ("::1", 9200, None, None, False, None, None),
    (None, 9300, "dev", "0", True, None, None),
    ("127.0.0.3", 70000, "dev", "0", True, None, None),
    ("127.0.0.4", 9400, "dev", "0", True, None, '{"a": 1}'),
    ("127.0.0.1", 9100, "staging", "2", False, None, None),
    ("127.0.0.1", 9100, "staging", "2", False, None, None),
]
SELECT = 'SELECT host, port, env, weight, up, seen, labels, "Rack-Name" FROM {table}'


def create_inventory(run: Callable[[str], str], columns: str, literal: Callable[[Any], str]) -> str:
    """A new table of ``columns`` holding ROWS (values written with ``literal``); its name."""
    table = unique("hosts")
    run(f"CREATE TABLE {table} ({columns})")
    values = ", ".join("(" + ", ".join(map(literal, row)) + ")" for row in ROWS)
    run(f"INSERT INTO {table} (host, port, env, weight, up, seen, labels) VALUES {values}")
    return table


def check_inventory(found: Targets, *, true: str, false: str, time: str) -> None:
    """The mapping rules on ROWS, with the database's own spelling of booleans and times."""
    assert set(found) == {"127.0.0.1:9100", "[::1]:9200"}
    first = {
        "__meta_sql_host": "127.0.0.1",
        "__meta_sql_port": "9100",
        "__meta_sql_env": "prod",
        "__meta_sql_weight": "1.50" if time.endswith("Z") else "1.5",
        "__meta_sql_up": true,
        "__meta_sql_seen": time,
        "__meta_sql_rack_name": "r1",
        **LABELS_1,
    }
    staging = {
        **{k: v for k, v in first.items() if k.startswith("__meta_")},
        "__meta_sql_env": "staging",
        "__meta_sql_weight": "2" if not time.endswith("Z") else "2.00",
        "__meta_sql_up": false,
        "__meta_sql_seen": "",
    }
    assert sorted(found["127.0.0.1:9100"], key=str) == sorted([first, staging], key=str)
    assert found["[::1]:9200"] == [
        {
            "__meta_sql_host": "::1",
            "__meta_sql_port": "9200",
            "__meta_sql_env": "",
            "__meta_sql_weight": "",
            "__meta_sql_up": false,
            "__meta_sql_seen": "",
            "__meta_sql_rack_name": "r1",
        }
    ]


async def check_bad_rows_reported(caplog: pytest.LogCaptureFixture, **config: Any) -> None:
    before = invalid_count()
    with caplog.at_level(logging.WARNING, logger="sdbridge.discovery.sql"):
        await refresh(**config)
    assert invalid_count() - before == 3
    text = caplog.text
    assert "row 3: column host is NULL or empty" in text
    assert "row 4: column port: 70000 is not a port" in text
    assert "row 5: column labels: the value of a is 1, not a string" in text


# --- PostgreSQL ---------------------------------------------------------------------------


class PG:
    """The module's database on the shared server, with a read-only role."""

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self.database = unique("sdbridge")
        self.reader = unique("reader")
        server.psql(f"CREATE DATABASE {self.database}")
        server.psql(f"CREATE ROLE {self.reader} LOGIN PASSWORD '{READER_PASSWORD}'")
        server.psql(f"GRANT pg_read_all_data TO {self.reader}")
        # The session's time zone must not leak into the labels (they are UTC).
        server.psql(f"ALTER ROLE {self.reader} SET timezone = 'Asia/Tokyo'")
        server.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", self.database)

    def dsn(self, params: str = "sslmode=disable") -> str:
        return self.server.dsn(self.reader, READER_PASSWORD, self.database, params)

    def sql(self, statement: str) -> str:
        return self.server.psql(statement, self.database)

    def drop(self) -> None:
        self.server.psql(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")
        self.server.psql(f"DROP ROLE IF EXISTS {self.reader}")


@pytest.fixture(scope="module")
def pg(postgres: PostgresServer) -> Iterator[PG]:  # noqa: F811 - the fixture
    database = PG(postgres)
    yield database
    database.drop()


def pg_inventory(pg: PG) -> str:
    return create_inventory(
        pg.sql,
        "id serial, host text, port int, env text, weight numeric(5,2), up boolean,"
        " seen timestamptz, labels jsonb, \"Rack-Name\" text DEFAULT 'r1'",
        lambda v: "NULL" if v is None else f"'{v}'",
    )


@pytest.mark.postgres
async def test_postgres_mapping(pg: PG, caplog: pytest.LogCaptureFixture) -> None:
    table = pg_inventory(pg)
    found = await refresh(dsn=pg.dsn(), query=SELECT.format(table=table))
    check_inventory(found, true="true", false="false", time="2024-01-02T03:04:05Z")
    await check_bad_rows_reported(caplog, dsn=pg.dsn(), query=SELECT.format(table=table))
    # An address column wins over host and port; IPv6 hosts are bracketed.
    found = await refresh(
        dsn=pg.dsn(),
        query="SELECT '127.0.0.9:80' AS address, 'h' AS host, 1 AS port, 2.5::float8 AS f,"
        " interval '90 seconds' AS i, '{\"b\": [1]}'::json AS j, 10000000000::bigint AS big",
    )
    assert found == {
        "127.0.0.9:80": [
            {
                "__meta_sql_host": "h",
                "__meta_sql_port": "1",
                "__meta_sql_f": "2.5",
                "__meta_sql_i": "90",
                "__meta_sql_j": '{"b": [1]}',
                "__meta_sql_big": "10000000000",
            }
        ]
    }


@pytest.mark.postgres
async def test_postgres_refuses_writes_and_limits(pg: PG) -> None:
    table = pg_inventory(pg)
    message = await refresh_error(
        dsn=pg.dsn(),
        query=f"WITH gone AS (DELETE FROM {table} RETURNING host, port) SELECT * FROM gone",
    )
    assert "query failed" in message
    assert "read-only transaction" in message
    assert pg.sql(f"SELECT count(*) FROM {table}") == str(len(ROWS))
    message = await refresh_error(
        dsn=pg.dsn(),
        query="SELECT pg_sleep(5), '127.0.0.1:1' AS address",
        statement_timeout="300ms",
    )
    assert "statement_timeout (0.3s)" in message
    message = await refresh_error(
        dsn=pg.dsn(),
        query="SELECT '127.0.0.1:' || g AS address FROM generate_series(1, 11) g",
        max_rows=10,
    )
    assert "more than max_rows (10)" in message
    found = await refresh(
        dsn=pg.dsn(),
        query="SELECT '127.0.0.1:' || g AS address FROM generate_series(1, 10) g",
        max_rows=10,
    )
    assert len(found) == 10


@pytest.mark.postgres
async def test_postgres_bad_input_names_what(pg: PG, tmp_path: Path) -> None:
    message = await refresh_error(dsn=pg.dsn(), query="SELEC host FROM nowhere")
    assert "query failed" in message
    assert "syntax error" in message
    message = await refresh_error(dsn=pg.dsn(), query="SELECT 'x' AS host, 'y' AS name")
    assert "the query's result has no port column (its columns: host, name)" in message
    wrong = pg.server.dsn(pg.reader, "not-the-password", pg.database, "sslmode=disable")
    message = await refresh_error(dsn=wrong, query="SELECT 1")
    assert "authentication failed" in message
    assert "not-the-password" not in message
    assert f"{pg.reader}:<secret>@127.0.0.1" in message
    refused = f"postgresql://{pg.reader}:{READER_PASSWORD}@127.0.0.1:{free_port()}/x"
    message = await refresh_error(dsn=refused, query="SELECT 1", connect_timeout="2s")
    assert "cannot reach the server" in message
    # dsn_file: the password stays out of the config.
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(pg.dsn() + "\n")
    found = await refresh(dsn_file=str(dsn_file), query="SELECT '127.0.0.1:5' AS address")
    assert set(found) == {"127.0.0.1:5"}


@pytest.mark.postgres
async def test_postgres_server_going_away_mid_query(pg: PG) -> None:
    marker = unique("slow")
    task = asyncio.create_task(
        refresh(dsn=pg.dsn(), query=f"SELECT pg_sleep(30), '127.0.0.1:1' AS address, '{marker}'")
    )
    await until(
        lambda: (
            pg.sql(
                f"SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%{marker}%'"
                " AND pid <> pg_backend_pid()"
            )
            == "1"
        ),
        within=20,
        what="the query running",
    )
    pg.sql(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%{marker}%'"
        " AND pid <> pg_backend_pid()"
    )
    with pytest.raises(BackendError) as caught:
        await task
    assert "lost the connection" in str(caught.value) or "terminat" in str(caught.value)
    assert READER_PASSWORD not in str(caught.value)


@pytest.mark.postgres
async def test_postgres_tls_off_and_on(pg: PG) -> None:
    query = "SELECT '127.0.0.1:1' AS address, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    found = await refresh(dsn=pg.dsn("sslmode=disable"), query=query)
    assert found["127.0.0.1:1"][0]["__meta_sql_ssl"] == "false"
    found = await refresh(
        dsn=pg.dsn(""), query=query, tls_config={"ca_file": str(pg.server.tls.cert)}
    )
    assert found["127.0.0.1:1"][0]["__meta_sql_ssl"] == "true"
    # A certificate that does not verify is refused, not silently accepted.
    message = await refresh_error(
        dsn=pg.dsn(""), query=query, tls_config={"ca_file": "/etc/ssl/certs/ca-certificates.crt"}
    )
    assert "certificate" in message.lower()


# --- a real Job: NOTIFY, restart, change_query -------------------------------------------------


@contextlib.asynccontextmanager
async def running_job(
    tmp_path: Path, **sd_config: Any
) -> AsyncIterator[tuple[Job, RecordingOutput]]:
    config = parse_config(
        {
            "global": {
                "data_dir": str(tmp_path / "data"),
                "publish_delay": {"min": "0s", "max": "0s"},
            },
            "jobs": [
                {
                    "name": "sql",
                    "sql_sd_configs": [sd_config],
                    "output": {"file": str(tmp_path / "targets.json")},
                    "guard": {"enabled": False},
                }
            ],
        },
        base_dir=tmp_path,
    )
    recording = RecordingOutput()
    job = Job(config.jobs[0], config.global_, extra_outputs=[recording])
    async with running(job):
        yield job, recording


def file_addresses(tmp_path: Path) -> set[str]:
    path = tmp_path / "targets.json"
    if not path.exists():
        return set()
    return {t for g in json.loads(path.read_bytes()) for t in g["targets"]}


def published(recording: RecordingOutput) -> list[set[str]]:
    return [{e.labels["__address__"] for e in s.entries} for s in recording.snapshots]


def statements_run(pg: PG, marker: str) -> int:
    """How many times a statement containing ``marker`` ran (pg_stat_statements)."""
    text = pg.sql(
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"
        f" WHERE query LIKE '%{marker}%' AND query NOT LIKE '%pg_stat_statements%'"
    )
    return int(text)


@pytest.mark.postgres
async def test_postgres_notify_and_restart(pg: PG, tmp_path: Path) -> None:
    table, channel = unique("hosts"), unique("changes")
    pg.sql(f"CREATE TABLE {table} (address text PRIMARY KEY)")
    pg.sql(
        f"CREATE FUNCTION {table}_notify() RETURNS trigger LANGUAGE plpgsql AS"
        f" $$ BEGIN PERFORM pg_notify('{channel}', ''); RETURN NULL; END $$"
    )
    pg.sql(
        f"CREATE TRIGGER {table}_changed AFTER INSERT OR UPDATE OR DELETE ON {table}"
        f" FOR EACH STATEMENT EXECUTE FUNCTION {table}_notify()"
    )
    pg.sql(f"INSERT INTO {table} VALUES ('127.0.0.1:1')")
    async with running_job(
        tmp_path,
        dsn=pg.dsn(),
        query=f"SELECT address FROM {table}",
        notify_channel=channel,
        refresh_interval="1h",  # only a NOTIFY (or a reconnect) can refresh in time
    ) as (_job, recording):
        await until(lambda: file_addresses(tmp_path) == {"127.0.0.1:1"}, within=20)
        pg.sql(f"INSERT INTO {table} VALUES ('127.0.0.1:2')")
        await until(lambda: file_addresses(tmp_path) == {"127.0.0.1:1", "127.0.0.1:2"}, within=20)

        # Restart PostgreSQL under sdbridge; a row added while it is down arrives after.
        pg.server.stop()
        await asyncio.sleep(0.5)
        pg.server.start()
        pg.sql(f"ALTER TABLE {table} DISABLE TRIGGER {table}_changed")
        pg.sql(f"INSERT INTO {table} VALUES ('127.0.0.1:3')")  # no NOTIFY for this one
        pg.sql(f"ALTER TABLE {table} ENABLE TRIGGER {table}_changed")
        want = {"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}
        await until(lambda: file_addresses(tmp_path) == want, within=60, what="the resync")
        # LISTEN is back: a NOTIFY after the restart reaches the file.
        pg.sql(f"INSERT INTO {table} VALUES ('127.0.0.1:4')")
        await until(lambda: "127.0.0.1:4" in file_addresses(tmp_path), within=20)
        history = published(recording)
    assert all(history), history  # never an empty publish
    for before, after in itertools.pairwise(history):
        assert before <= after, (before, after)  # no target ever lost


@pytest.mark.postgres
async def test_postgres_change_query_at_idle(pg: PG, tmp_path: Path) -> None:
    table = unique("hosts")
    marker = unique("full")
    pg.sql(f"CREATE TABLE {table} (address text, updated_at timestamptz DEFAULT now())")
    pg.sql(f"INSERT INTO {table} (address) VALUES ('127.0.0.1:1')")
    async with running_job(
        tmp_path,
        dsn=pg.dsn(),
        query=f"SELECT address, 1 AS {marker} FROM {table}",  # aliases survive normalizing
        change_query=f"SELECT max(updated_at), count(*) FROM {table}",
        change_interval="100ms",
        refresh_interval="1h",
    ) as (_job, _):
        await until(lambda: file_addresses(tmp_path) == {"127.0.0.1:1"}, within=20)
        change_marker = f"max(updated_at), count(*) FROM {table}"
        await until(lambda: statements_run(pg, change_marker) >= 10, within=30, what="10 polls")
        assert statements_run(pg, marker) == 1  # idle: the full query ran once, at the start
        pg.sql(f"INSERT INTO {table} (address) VALUES ('127.0.0.1:2')")
        await until(lambda: file_addresses(tmp_path) == {"127.0.0.1:1", "127.0.0.1:2"}, within=20)
        assert statements_run(pg, marker) == 2


# --- MariaDB -------------------------------------------------------------------------------


class Maria:
    """The module's database on the shared MariaDB, with a read-only user."""

    def __init__(self, server: MariaDBServer) -> None:
        self.server = server
        self.database = unique("sdbridge")
        self.reader = unique("reader")
        server.sql(f"CREATE DATABASE {self.database}")
        server.sql(f"CREATE USER '{self.reader}'@'%' IDENTIFIED BY '{READER_PASSWORD}'")
        server.sql(f"GRANT SELECT ON {self.database}.* TO '{self.reader}'@'%'")
        self.writer = unique("writer")  # a user allowed to write: read-only is sdbridge's doing
        server.sql(f"CREATE USER '{self.writer}'@'%' IDENTIFIED BY '{READER_PASSWORD}'")
        server.sql(f"GRANT ALL ON {self.database}.* TO '{self.writer}'@'%'")

    def dsn(self, user: str | None = None) -> str:
        return self.server.dsn(user or self.reader, READER_PASSWORD, self.database)

    def sql(self, statement: str) -> str:
        return self.server.sql(statement, self.database)

    def drop(self) -> None:
        self.server.sql(f"DROP DATABASE IF EXISTS {self.database}")
        self.server.sql(f"DROP USER IF EXISTS '{self.reader}'@'%', '{self.writer}'@'%'")


@pytest.fixture(scope="module")
def maria(mariadb: MariaDBServer) -> Iterator[Maria]:  # noqa: F811 - the fixture
    database = Maria(mariadb)
    yield database
    database.drop()


def maria_inventory(maria: Maria) -> str:
    return create_inventory(
        maria.sql,
        "id serial, host text, port int, env text, weight decimal(5,2), up boolean,"
        " seen datetime, labels json, `Rack-Name` text DEFAULT 'r1'",
        lambda v: "NULL" if v is None else str(int(v)) if isinstance(v, bool) else f"'{v}'",
    )


@pytest.mark.mariadb
async def test_mariadb_mapping_and_safety(maria: Maria, caplog: pytest.LogCaptureFixture) -> None:
    table = maria_inventory(maria)
    query = SELECT.format(table=table).replace('"Rack-Name"', "`Rack-Name`")
    found = await refresh(dsn=maria.dsn(), query=query)
    check_inventory(found, true="1", false="0", time="2024-01-02T03:04:05Z")
    await check_bad_rows_reported(caplog, dsn=maria.dsn(), query=query)
    # Read-only even for a user who may write.
    message = await refresh_error(
        dsn=maria.dsn(maria.writer), query=f"DELETE FROM {table} RETURNING host, port"
    )
    assert "query failed" in message
    assert "READ ONLY" in message
    assert maria.sql(f"SELECT count(*) FROM {table}") == str(len(ROWS))
    message = await refresh_error(
        dsn=maria.dsn(),
        query="SELECT SLEEP(5), '127.0.0.1:1' AS address",
        statement_timeout="500ms",
    )
    assert "statement_timeout (0.5s)" in message
    message = await refresh_error(
        dsn=maria.dsn(), query=f"SELECT concat(host, ':1') AS address FROM {table}", max_rows=3
    )
    assert "more than max_rows (3)" in message
    message = await refresh_error(dsn=maria.dsn(), query="SELEC 1")
    assert "query failed" in message
    assert "SQL syntax" in message
    wrong = maria.server.dsn(maria.reader, "not-the-password", maria.database)
    message = await refresh_error(dsn=wrong, query="SELECT 1")
    assert "authentication failed" in message
    assert "not-the-password" not in message


@pytest.mark.mariadb
async def test_mariadb_tls_and_change_query(maria: Maria, tmp_path: Path) -> None:
    query = "SELECT '127.0.0.1:1' AS address, VARIABLE_VALUE AS cipher FROM"
    query += " information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher'"
    found = await refresh(dsn=maria.dsn(), query=query)
    assert found["127.0.0.1:1"][0]["__meta_sql_cipher"] == ""
    found = await refresh(
        dsn=maria.dsn(), query=query, tls_config={"ca_file": str(maria.server.tls.cert)}
    )
    assert found["127.0.0.1:1"][0]["__meta_sql_cipher"] != ""
    table = unique("hosts")
    maria.sql(f"CREATE TABLE {table} (address varchar(64), updated_at timestamp(6) DEFAULT now(6))")
    maria.sql(f"INSERT INTO {table} (address) VALUES ('127.0.0.1:1')")
    async with running_job(
        tmp_path,
        dsn=maria.dsn(),
        query=f"SELECT address FROM {table}",
        change_query=f"SELECT max(updated_at), count(*) FROM {table}",
        change_interval="100ms",
        refresh_interval="1h",
    ):
        await until(lambda: file_addresses(tmp_path) == {"127.0.0.1:1"}, within=20)
        maria.sql(f"INSERT INTO {table} (address) VALUES ('127.0.0.1:2')")
        await until(lambda: file_addresses(tmp_path) == {"127.0.0.1:1", "127.0.0.1:2"}, within=20)


# --- SQLite --------------------------------------------------------------------------------


def sqlite_inventory(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(
            "CREATE TABLE hosts (host text, port int, env text, weight real, up boolean,"
            " seen text, labels text, \"Rack-Name\" text DEFAULT 'r1')"
        )
        conn.executemany(
            "INSERT INTO hosts (host, port, env, weight, up, seen, labels) VALUES (?,?,?,?,?,?,?)",
            [
                (h, p, e, None if w is None else float(w), u, s, lab)
                for h, p, e, w, u, s, lab in ROWS
            ],
        )
        conn.commit()


async def test_sqlite_mapping_and_safety(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sqlite_inventory(tmp_path / "cmdb.db")
    dsn = f"sqlite:///{tmp_path}/cmdb.db"
    found = await refresh(dsn=dsn, query=SELECT.format(table="hosts"))
    check_inventory(found, true="1", false="0", time="2024-01-02 03:04:05")
    await check_bad_rows_reported(caplog, dsn=dsn, query=SELECT.format(table="hosts"))
    message = await refresh_error(dsn=dsn, query="DELETE FROM hosts RETURNING host, port")
    assert "readonly database" in message
    endless = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n)"
        " SELECT '127.0.0.1:1' AS address, max(i) FROM n"
    )
    message = await refresh_error(dsn=dsn, query=endless, statement_timeout="300ms")
    assert "statement_timeout (0.3s)" in message
    message = await refresh_error(dsn=dsn, query="SELECT host, port FROM hosts", max_rows=2)
    assert "more than max_rows (2)" in message
    message = await refresh_error(dsn=f"sqlite:///{tmp_path}/missing.db", query="SELECT 1")
    assert "cannot open" in message


async def test_sqlite_relative_paths_and_dsn_file(tmp_path: Path) -> None:
    sqlite_inventory(tmp_path / "cmdb.db")
    (tmp_path / "dsn").write_text("sqlite:///cmdb.db\n")
    query = "SELECT host || ':' || port AS address FROM hosts WHERE host = '127.0.0.1'"
    async with running_job(tmp_path, dsn="sqlite:///cmdb.db", query=query):
        await until(lambda: file_addresses(tmp_path) == {"127.0.0.1:9100"}, within=20)
    (tmp_path / "targets.json").unlink()
    async with running_job(tmp_path, dsn_file="dsn", query=query):
        await until(lambda: file_addresses(tmp_path) == {"127.0.0.1:9100"}, within=20)


def test_check_connect_reports_a_missing_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sqlite_inventory(tmp_path / "cmdb.db")
    config = tmp_path / "sdbridge.yml"
    config.write_text(
        "jobs:\n  - name: cmdb\n    sql_sd_configs:\n"
        "      - dsn: sqlite:///cmdb.db\n        query: SELECT host, env FROM hosts\n"
    )
    assert main(["check", str(config)]) == 0  # without --check.connect: not reached
    assert main(["check", "--check.connect", str(config)]) == 1
    err = capsys.readouterr().err
    assert "cmdb" in err
    assert "sql_sd_configs[0]" in err
    assert "port column" in err


async def test_a_failing_query_keeps_the_last_good_targets(tmp_path: Path) -> None:
    sqlite_inventory(tmp_path / "cmdb.db")
    query = "SELECT host || ':' || port AS address FROM hosts WHERE host = '127.0.0.1'"
    async with running_job(
        tmp_path, dsn="sqlite:///cmdb.db", query=query, refresh_interval="100ms"
    ) as (job, recording):
        await until(lambda: file_addresses(tmp_path) == {"127.0.0.1:9100"}, within=20)
        with contextlib.closing(sqlite3.connect(tmp_path / "cmdb.db")) as conn:
            conn.execute("ALTER TABLE hosts RENAME TO gone")
            conn.commit()
        await until(lambda: job.status().mechanisms[0].health.last_error is not None, within=20)
        status = job.status().mechanisms[0]
        assert "query failed: no such table: hosts" in (status.health.last_error or "")
        assert status.config["dsn"] == "**********"
        assert file_addresses(tmp_path) == {"127.0.0.1:9100"}  # stale beats incomplete
    assert all(published(recording))


@pytest.mark.mariadb
async def test_mariadb_refused_and_server_going_away(maria: Maria) -> None:
    refused = f"mysql://{maria.reader}:{READER_PASSWORD}@127.0.0.1:{free_port()}/x"
    message = await refresh_error(dsn=refused, query="SELECT 1", connect_timeout="2s")
    assert "cannot reach the server" in message
    marker = unique("slow")
    task = asyncio.create_task(
        refresh(
            dsn=maria.dsn(),
            query=f"SELECT SLEEP(30), '127.0.0.1:1' AS address, '{marker}'",
            statement_timeout="1m",
        )
    )
    find = f"SELECT id FROM information_schema.PROCESSLIST WHERE info LIKE '%{marker}%' AND info NOT LIKE '%PROCESSLIST%'"
    await until(lambda: maria.server.sql(find) != "", within=20, what="the query running")
    maria.server.sql(f"KILL CONNECTION {maria.server.sql(find)}")
    with pytest.raises(BackendError) as caught:
        await task
    assert "lost the connection" in str(caught.value)
    assert READER_PASSWORD not in str(caught.value)
