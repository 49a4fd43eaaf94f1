"""``sql_sd_configs``: targets from a table (a CMDB, an inventory) in PostgreSQL, MySQL/MariaDB or SQLite.

Prometheus's answer to "discover targets from my database" has been "write a file_sd
generator"; this is that generator, with sdbridge's guarantees: the query runs in a
read-only transaction with a statement timeout and a row limit, and a refresh that fails
anywhere (the database, the query, the limit) keeps the last good targets.

Reacting fast without hammering the database:

- ``notify_channel`` (PostgreSQL): a connection of its own LISTENs, and every NOTIFY
  (from a trigger on the inventory table) refreshes at once. A lost connection is
  re-established with backoff, re-LISTENs and refreshes fully, since NOTIFYs sent while
  it was away are lost.
- ``change_query`` (any database): a cheap statement (``SELECT max(updated_at), count(*)
  FROM hosts``) runs every ``change_interval``; the full query runs only when its result
  changes, and at the latest every ``refresh_interval``. A full refresh runs the change
  query in the same snapshot, so the result it remembers matches the targets it read.

The package: :mod:`.mapping` turns rows into target groups (no driver in sight),
:mod:`.drivers` runs statements on each database, and this module is the mechanism.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from ... import metrics
from ...durations import Duration
from ...errors import BackendError, DiscoveryError
from ...model import TargetGroup
from .. import register
from .._http import TLSConfig, read_secret
from ..base import (
    Backoff,
    DiscoveryContext,
    RefreshConfig,
    RefreshDiscoverer,
    Send,
    require_positive,
    resolve_path,
)
from .drivers import (
    POSTGRES_SCHEMES,
    SQLITE_SCHEMES,
    Database,
    PostgresDatabase,
    Result,
    Statement,
    dsn_scheme,
    open_database,
    sqlite_path,
)
from .mapping import META, Mapped, RowMapper, plan_columns

__all__ = ["META", "SQLDiscoverer", "SQLSDConfig"]

_MAX_REPORTED_ROWS = 10  # skipped rows logged one by one per refresh; the rest are counted
_LISTEN_BACKOFF = (1.0, 30.0)


class SQLSDConfig(RefreshConfig):
    """One ``sql_sd_configs`` entry."""

    dsn: SecretStr | None = Field(
        None, description="postgresql://, mysql:// or sqlite:///path; shown masked"
    )
    dsn_file: Path | None = Field(None, description="a file holding the DSN (read at connect)")
    query: str = Field(min_length=1, description="a read-only SELECT; one target per row")
    change_query: str | None = Field(
        None, description="a cheap SELECT whose result changes when the targets change"
    )
    change_interval: Duration = Field(5.0, description="how often change_query runs")
    notify_channel: str | None = Field(
        None, description="PostgreSQL: LISTEN on this channel and refresh on every NOTIFY"
    )
    refresh_interval: Duration = Field(60.0, description="the full query runs at least this often")
    statement_timeout: Duration = Field(10.0, description="each statement is cancelled after")
    connect_timeout: Duration = Field(10.0, description="give up connecting after this long")
    max_rows: int = Field(100_000, ge=1, description="more rows than this fail the refresh")
    tls_config: TLSConfig | None = Field(None, description="TLS to the server (not SQLite)")

    @field_validator("change_interval", "statement_timeout", "connect_timeout")
    @classmethod
    def _positive_durations(cls, value: float, info: ValidationInfo) -> float:
        return require_positive(value, str(info.field_name))

    @field_validator("query", "change_query")
    @classmethod
    def _not_blank(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not value.strip():
            raise ValueError(f"{info.field_name} must not be blank")
        return value

    @field_validator("notify_channel")
    @classmethod
    def _channel(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("notify_channel must not be blank")
        return value

    @model_validator(mode="after")
    def _one_dsn(self) -> Self:
        if (self.dsn is None) == (self.dsn_file is None):
            raise ValueError("set one of dsn or dsn_file")
        if self.dsn is not None:
            # The messages never quote the DSN: it may hold a password.
            scheme = dsn_scheme(self.dsn.get_secret_value())
            self._check_scheme(scheme)
            if scheme in SQLITE_SCHEMES:
                sqlite_path(self.dsn.get_secret_value())
        return self

    def _check_scheme(self, scheme: str) -> None:
        if self.notify_channel is not None and scheme not in POSTGRES_SCHEMES:
            raise ValueError("notify_channel needs a postgresql:// DSN (LISTEN/NOTIFY)")
        if self.tls_config is not None and scheme in SQLITE_SCHEMES:
            raise ValueError("tls_config does not apply to a sqlite DSN")

    def resolve_paths(self, base_dir: Path) -> Self:
        """Resolve dsn_file, and a relative SQLite path, against the config file's directory."""
        config = super().resolve_paths(base_dir)
        if config.dsn_file is not None:
            return config.model_copy(update={"dsn_file": resolve_path(config.dsn_file, base_dir)})
        assert config.dsn is not None
        dsn = absolute_sqlite_dsn(config.dsn.get_secret_value(), base_dir)
        return config.model_copy(update={"dsn": SecretStr(dsn)})

    def read_dsn(self) -> str:
        """The DSN, from the config or from dsn_file (read on every call)."""
        if self.dsn is not None:
            return self.dsn.get_secret_value()
        assert self.dsn_file is not None
        dsn = read_secret(self.dsn_file, "dsn_file")
        try:
            self._check_scheme(dsn_scheme(dsn))
            # A relative SQLite path in a DSN file is relative to the file.
            return absolute_sqlite_dsn(dsn, self.dsn_file.parent)
        except ValueError as exc:
            raise DiscoveryError(f"dsn_file {self.dsn_file}: {exc}") from None


def absolute_sqlite_dsn(dsn: str, base_dir: Path) -> str:
    """``dsn`` with a relative SQLite path made absolute against ``base_dir``; others as is."""
    if dsn_scheme(dsn) not in SQLITE_SCHEMES:
        return dsn
    path = sqlite_path(dsn)
    if path.is_absolute():
        return dsn
    return "sqlite:///" + quote(str(resolve_path(path, base_dir)))


def _change_token(result: Result) -> tuple[Any, ...]:
    return (result.columns, tuple(tuple(row) for row in result.rows))


@register("sql", SQLSDConfig)
class SQLDiscoverer(RefreshDiscoverer[SQLSDConfig]):
    """Runs ``query`` every ``refresh_interval``, or sooner on a NOTIFY or a changed change_query."""

    def __init__(self, config: SQLSDConfig, context: DiscoveryContext) -> None:
        super().__init__(config, context)
        self._database: Database | None = None
        self._query = Statement(config.query, config.max_rows, "query")
        self._change = (
            Statement(config.change_query, config.max_rows, "change_query", cursor=False)
            if config.change_query is not None
            else None
        )
        self._mapper = RowMapper()
        self._change_token: tuple[Any, ...] | None = None  # as last read by a full refresh
        self._last_refresh_start: float | None = None
        self._listener_settled = asyncio.Event()  # the first LISTEN attempt is over
        self._last_skipped: list[tuple[str, str]] = []
        self._invalid_rows = metrics.INVALID_TARGETS.labels(
            job=context.job, mechanism=context.mechanism
        )

    def database(self) -> Database:
        """The database, opened (reading dsn_file) on first use or after a failure."""
        if self._database is None:
            cfg = self.config
            dsn = cfg.read_dsn()
            tls: ssl.SSLContext | None = None
            if cfg.tls_config is not None:
                try:
                    tls = cfg.tls_config.ssl_context()
                except (OSError, ssl.SSLError) as exc:
                    raise DiscoveryError(f"tls_config: {exc}") from exc
            self._database = open_database(
                dsn,
                tls=tls,
                connect_timeout=cfg.connect_timeout,
                statement_timeout=cfg.statement_timeout,
            )
        return self._database

    async def close(self) -> None:
        """Close every connection (the next refresh opens them again)."""
        database, self._database = self._database, None
        if database is not None:
            await database.close()

    async def run(self, send: Send) -> None:
        """Refresh (and watch) until cancelled; close every connection at the end."""
        try:
            await super().run(send)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.close())

    async def refresh(self) -> list[TargetGroup]:
        """Run the query (and change_query, in the same snapshot); map its rows."""
        if self.config.notify_channel is not None and not self._listener_settled.is_set():
            # Start listening before reading, so no NOTIFY falls between the two.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.connect_timeout):
                    await self._listener_settled.wait()
        self._last_refresh_start = time.monotonic()
        statements = [self._query] if self._change is None else [self._change, self._query]
        results = await self._read(statements)
        columns = plan_columns(results[-1].columns)
        mapped = self._mapper.map(columns, results[-1].rows)
        self._report_skipped(mapped)
        if self._change is not None:
            self._change_token = _change_token(results[0])
        return mapped.groups

    async def check(self) -> None:
        """Run the query once and check its columns (``sdbridge check --check.connect``)."""
        try:
            result = (await self._read([self._query]))[-1]
            plan_columns(result.columns)
        finally:
            await self.close()

    async def _read(self, statements: Sequence[Statement]) -> list[Result]:
        database = self.database()
        self.context.count_request()
        try:
            return await database.read(statements)
        except BackendError:
            if self.config.dsn_file is not None:
                # Maybe the password was rotated: read the file again next time.
                await self.close()
            raise

    def _report_skipped(self, mapped: Mapped) -> None:
        messages = [(f"row {number}", str(error)) for number, error in mapped.skipped]
        if messages == self._last_skipped:  # the same bad rows as last time: count only
            self._invalid_rows.inc(len(messages))
            return
        self._last_skipped = messages
        for row, error in messages[:_MAX_REPORTED_ROWS]:
            self.context.record_invalid(row, error)
        rest = len(messages) - _MAX_REPORTED_ROWS
        if rest > 0:
            self._invalid_rows.inc(rest)
            self.log.warning("skipping %d more invalid rows", rest)

    # --- reacting to changes ---------------------------------------------------------

    async def watch(self) -> None:
        """Follow NOTIFYs and/or poll change_query, requesting refreshes as they say."""
        async with asyncio.TaskGroup() as tasks:
            if self.config.notify_channel is not None:
                tasks.create_task(self._listen(self.config.notify_channel))
            if self._change is not None:
                tasks.create_task(self._poll_changes(self._change))
            await asyncio.Event().wait()

    async def _poll_changes(self, change: Statement) -> None:
        failing: str | None = None
        while True:
            await asyncio.sleep(self.config.change_interval)
            if self._change_token is None:
                continue  # no full refresh yet: the refresh loop is on it
            try:
                [result] = await self._read([change])
            except DiscoveryError as exc:
                if str(exc) != failing:
                    self.log.warning("change_query failed: %s", exc)
                failing = str(exc)
                continue
            if failing is not None:
                self.log.info("change_query works again")
                failing = None
            if _change_token(result) != self._change_token:
                self.request_refresh()

    async def _listen(self, channel: str) -> None:
        backoff = Backoff(*_LISTEN_BACKOFF)
        failing: str | None = None

        def ready() -> None:
            nonlocal failing
            backoff.reset()
            if failing is not None:
                self.log.info("listening on %r again", channel)
                failing = None
            self._listener_settled.set()
            # NOTIFYs sent while no one listened are lost: read everything again.
            if self._last_refresh_start is not None:
                self.request_refresh()

        while True:
            try:
                database = self.database()
                if not isinstance(database, PostgresDatabase):  # a dsn_file of another kind
                    raise DiscoveryError("notify_channel needs a postgresql:// DSN")
                await database.listen(channel, on_ready=ready, on_notify=self.request_refresh)
            except DiscoveryError as exc:
                if str(exc) != failing:
                    self.log.warning("not listening on %r: %s", channel, exc)
                failing = str(exc)
            self._listener_settled.set()
            await asyncio.sleep(backoff.next_delay())
