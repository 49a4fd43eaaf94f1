"""One read-only, time-limited, row-limited transaction per call, for each database.

sql_sd speaks to three databases through their own well-kept asyncio drivers: asyncpg
(``postgresql://``), aiomysql (``mysql://``, MySQL and MariaDB) and aiosqlite
(``sqlite:///``). Each :class:`Database` promises the same thing: :meth:`Database.read`
runs its statements in one read-only transaction (so a change query and the full query
see the same snapshot), each under the statement timeout (the database's own setting,
spelled differently by each: PostgreSQL ``statement_timeout``, MariaDB
``max_statement_time``, MySQL ``max_execution_time``, SQLite a progress handler), and
fetches at most ``max_rows + 1`` rows, so a result over the limit is refused without
being read whole. Every failure is a :class:`~sdbridge.errors.BackendError` that names
the database by its DSN with the password taken out; the password never appears in a
message even when a driver repeats what it was given.

PostgreSQL also offers :meth:`PostgresDatabase.listen`: a connection of its own that
LISTENs on a channel and calls back on every NOTIFY, until the connection is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import ssl
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import aiomysql
import aiosqlite
import asyncpg
import pymysql

from ...errors import BackendError, DiscoveryError
from ...masking import MASK, mask_text

# Query parameters that carry a secret in some driver's DSN (asyncpg: password, sslpassword).
_SECRET_PARAMS = ("password", "sslpassword", "passfile")
# A statement the server does not stop in time is abandoned this much later by the client.
_CLIENT_GRACE = 5.0

POSTGRES_SCHEMES = ("postgresql", "postgres")
MYSQL_SCHEMES = ("mysql", "mariadb")
SQLITE_SCHEMES = ("sqlite",)
SCHEMES = POSTGRES_SCHEMES + MYSQL_SCHEMES + SQLITE_SCHEMES


def dsn_scheme(dsn: str) -> str:
    """The scheme of ``dsn``, lower-cased; ValueError (without the DSN) if it has none."""
    scheme, sep, _ = dsn.partition("://")
    if not sep or not scheme:
        raise ValueError(f"a DSN is a URL: {' or '.join(s + '://...' for s in SCHEMES[::2])}")
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"unknown DSN scheme {scheme!r} (known: {', '.join(SCHEMES)})")
    return scheme


def safe_dsn(dsn: str) -> str:
    """``dsn`` as it may be shown: its password (user info, ``password=``) masked."""
    return mask_text(dsn)


def _secrets_of(dsn: str) -> list[str]:
    """Every secret the DSN holds, as it may appear in a driver's message."""
    parts = urlsplit(dsn)
    secrets = []
    if parts.password:
        secrets += [parts.password, unquote(parts.password)]
    for name, value in parse_qsl(parts.query):
        if name.lower() in _SECRET_PARAMS and value:
            secrets.append(value)
    return [s for s in secrets if s]


@dataclass(frozen=True)
class Result:
    """The column names and the rows of one statement."""

    columns: tuple[str, ...]
    rows: Sequence[Sequence[Any]]


@dataclass(frozen=True)
class Statement:
    """A statement to run and the most rows it may return."""

    sql: str
    max_rows: int
    what: str  # "query", "change_query": named in errors
    # Fetch through a cursor, so rows past max_rows are never read. A small answer (a
    # change query) alone skips it: one statement per poll instead of BEGIN, it, COMMIT.
    cursor: bool = True


class Database:
    """A database reached through one DSN; subclasses are the drivers."""

    schemes: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        dsn: str,
        *,
        tls: ssl.SSLContext | None,
        connect_timeout: float,
        statement_timeout: float,
    ) -> None:
        self._dsn = dsn
        self.where = safe_dsn(dsn)
        self._secrets = _secrets_of(dsn)
        self.tls = tls
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout

    async def read(self, statements: Sequence[Statement]) -> list[Result]:
        """Run ``statements`` in one read-only transaction; raise BackendError on failure."""
        raise NotImplementedError

    async def close(self) -> None:
        """Close every connection; the database may be used again afterwards."""

    # --- shared by the drivers ---------------------------------------------------------

    def scrub(self, text: str) -> str:
        """``text`` with every secret of the DSN masked."""
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    def error(self, message: str, exc: BaseException | None = None) -> BackendError:
        """A BackendError naming the database; the driver's text is scrubbed of secrets."""
        said = str(exc) or type(exc).__name__
        detail = f": {mask_text(self.scrub(said))}" if exc is not None else ""
        return BackendError(f"{self.where}: {message}{detail}")

    def too_many_rows(self, statement: Statement) -> DiscoveryError:
        """The error of a result over ``max_rows``."""
        return DiscoveryError(
            f"{statement.what} returned more than max_rows ({statement.max_rows}) rows;"
            " raise max_rows or narrow the query"
        )

    def timed_out(self, statement: Statement) -> BackendError:
        """The error of a statement stopped by the statement timeout."""
        return self.error(
            f"{statement.what} ran longer than statement_timeout"
            f" ({self.statement_timeout:g}s) and was cancelled"
        )

    def client_deadline(self, statements: int = 1) -> float:
        """How long the client waits for a whole call before giving up on the server."""
        return self.connect_timeout + statements * self.statement_timeout + _CLIENT_GRACE


# --- PostgreSQL ---------------------------------------------------------------------------


class PostgresDatabase(Database):
    """PostgreSQL through asyncpg: a pool of at most two connections, made on demand."""

    schemes = POSTGRES_SCHEMES

    def __init__(self, dsn: str, **options: Any) -> None:
        super().__init__(dsn, **options)
        self._pool: asyncpg.Pool | None = None

    def _settings(self) -> dict[str, str]:
        # Set when each connection starts: no statement of ours per transaction.
        return {
            "application_name": "sdbridge",
            "statement_timeout": str(int(self.statement_timeout * 1000)),
            "default_transaction_read_only": "on",
        }

    def _connect_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "timeout": self.connect_timeout,
            "server_settings": self._settings(),
        }
        if self.tls is not None:
            options["ssl"] = self.tls
        return options

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            try:
                self._pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=0,
                    max_size=2,
                    reset=_keep_session,
                    **self._connect_options(),
                )
            except (ValueError, TypeError, asyncpg.PostgresError) as exc:  # a bad DSN
                raise self.error("invalid DSN", exc) from None
        return self._pool

    async def read(self, statements: Sequence[Statement]) -> list[Result]:
        """Run ``statements`` in one read-only REPEATABLE READ transaction."""
        pool = await self._get_pool()
        statement = statements[0]
        try:
            async with (
                asyncio.timeout(self.client_deadline(len(statements))),
                pool.acquire() as conn,
            ):
                if len(statements) == 1 and not statement.cursor:
                    # Read-only all the same: default_transaction_read_only is on.
                    prepared = await conn.prepare(statement.sql)
                    rows = await prepared.fetch()
                    if len(rows) > statement.max_rows:
                        raise self.too_many_rows(statement)
                    columns = tuple(a.name for a in prepared.get_attributes())
                    return [Result(columns, rows)]
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    return await self._read(conn, statements)
        except asyncpg.QueryCanceledError:
            raise self.timed_out(statement) from None
        except asyncpg.InvalidPasswordError as exc:
            raise self.error("authentication failed", exc) from None
        except asyncpg.PostgresError as exc:
            raise self.error(f"{statement.what} failed", exc) from None
        except TimeoutError:
            raise self.error("no answer in time; the server may be down") from None
        except (OSError, asyncpg.InterfaceError) as exc:
            raise self.error("cannot reach the server or lost the connection", exc) from None
        except ValueError as exc:  # the DSN, parsed at the first connect
            raise self.error("invalid DSN", exc) from None

    async def _read(
        self, conn: asyncpg.Connection, statements: Sequence[Statement]
    ) -> list[Result]:
        results = []
        for statement in statements:
            prepared = await conn.prepare(statement.sql)
            columns = tuple(a.name for a in prepared.get_attributes())
            cursor = await prepared.cursor()
            rows = await cursor.fetch(statement.max_rows + 1)
            if len(rows) > statement.max_rows:
                raise self.too_many_rows(statement)
            results.append(Result(columns, rows))
        return results

    async def close(self) -> None:
        """Close the pool's connections."""
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                async with asyncio.timeout(5):
                    await pool.close()
            except (TimeoutError, OSError, asyncpg.InterfaceError):
                pool.terminate()

    async def listen(
        self, channel: str, *, on_ready: Callable[[], None], on_notify: Callable[[], None]
    ) -> None:
        """LISTEN on ``channel``, call ``on_notify`` per NOTIFY; raise when the link is lost.

        ``on_ready`` is called once the LISTEN is in place. The connection is checked
        every ``statement_timeout`` at the latest, so a silently dead link is noticed.
        """
        try:
            conn = await asyncpg.connect(self._dsn, **self._connect_options())
        except asyncpg.InvalidPasswordError as exc:
            raise self.error("authentication failed", exc) from None
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise self.error("cannot open the LISTEN connection", exc) from None
        except ValueError as exc:
            raise self.error("invalid DSN", exc) from None
        lost = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(channel, lambda *_: on_notify())
            on_ready()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(self.statement_timeout, 1.0)):
                        await lost.wait()
                if not lost.is_set():
                    async with asyncio.timeout(self.connect_timeout):
                        await conn.execute("SELECT 1")
            raise self.error(f"the LISTEN connection for {channel!r} was closed")
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise self.error(f"lost the LISTEN connection for {channel!r}", exc) from None
        finally:
            conn.terminate()


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """The pool's reset: nothing to undo (no SET, LISTEN, lock or cursor outlives a read),
    so no ``RESET ALL; UNLISTEN *; ...`` round trip after every poll."""


# --- MySQL and MariaDB ----------------------------------------------------------------------

_MYSQL_PARAMS = ("charset",)
_MARIADB_TIMEOUT_ERROR = 1969  # ER_STATEMENT_TIMEOUT: max_statement_time exceeded
_MYSQL_TIMEOUT_ERROR = 3024  # ER_QUERY_TIMEOUT: max_execution_time exceeded
_MYSQL_ACCESS_DENIED = (1044, 1045, 1698)
_MYSQL_CLIENT_ERRORS = 2000  # codes from 2000 on are the client's (CR_CONNECTION_ERROR...)


class MySQLDatabase(Database):
    """MySQL or MariaDB through aiomysql: a pool of at most two connections, made on demand."""

    schemes = MYSQL_SCHEMES

    def __init__(self, dsn: str, **options: Any) -> None:
        super().__init__(dsn, **options)
        self._pool: aiomysql.Pool | None = None
        self._configured: weakref.WeakSet[aiomysql.Connection] = weakref.WeakSet()

    def _connect_options(self) -> dict[str, Any]:
        parts = urlsplit(self._dsn)
        params = dict(parse_qsl(parts.query))
        unknown = sorted(set(params) - set(_MYSQL_PARAMS))
        if unknown:
            raise self.error(
                f"unknown DSN parameter(s) {', '.join(unknown)} (known: {', '.join(_MYSQL_PARAMS)};"
                " TLS is set with tls_config)"
            )
        try:
            port = parts.port or 3306
        except ValueError as exc:
            raise self.error("invalid DSN", exc) from None
        return {
            "host": parts.hostname or "127.0.0.1",
            "port": port,
            "user": unquote(parts.username or ""),
            "password": unquote(parts.password or ""),
            "db": unquote(parts.path.lstrip("/")) or None,
            "charset": params.get("charset", "utf8mb4"),
            "connect_timeout": self.connect_timeout,
            "ssl": self.tls,
            "autocommit": True,
        }

    async def _get_pool(self) -> aiomysql.Pool:
        if self._pool is None:
            self._pool = await aiomysql.create_pool(
                minsize=0, maxsize=2, pool_recycle=3600, **self._connect_options()
            )
        return self._pool

    async def _configure(self, conn: aiomysql.Connection) -> None:
        """Once per connection: read-only transactions and the statement timeout."""
        if conn in self._configured:
            return
        async with conn.cursor() as cur:
            if "mariadb" in conn.get_server_info().lower():
                await cur.execute(f"SET SESSION max_statement_time = {self.statement_timeout:g}")
            else:
                ms = int(self.statement_timeout * 1000)
                await cur.execute(f"SET SESSION max_execution_time = {ms}")
            await cur.execute("SET SESSION TRANSACTION READ ONLY")
        self._configured.add(conn)

    async def read(self, statements: Sequence[Statement]) -> list[Result]:
        """Run ``statements`` in one read-only transaction with a consistent snapshot."""
        statement = statements[0]
        try:
            async with asyncio.timeout(self.client_deadline(len(statements))):
                pool = await self._get_pool()
                async with pool.acquire() as conn:
                    await self._configure(conn)
                    return await self._read(conn, statements)
        except pymysql.err.MySQLError as exc:
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
            if code in (_MARIADB_TIMEOUT_ERROR, _MYSQL_TIMEOUT_ERROR):
                raise self.timed_out(statement) from None
            if code in _MYSQL_ACCESS_DENIED:
                raise self.error("authentication failed", exc) from None
            if code >= _MYSQL_CLIENT_ERRORS:  # CR_*: the client's own (connect, lost, ...)
                raise self.error("cannot reach the server or lost the connection", exc) from None
            raise self.error(f"{statement.what} failed", exc) from None
        except TimeoutError:
            raise self.error("no answer in time; the server may be down") from None
        except OSError as exc:
            raise self.error("cannot reach the server", exc) from None

    async def _read(
        self, conn: aiomysql.Connection, statements: Sequence[Statement]
    ) -> list[Result]:
        results = []
        async with conn.cursor() as cur:
            snapshot = " WITH CONSISTENT SNAPSHOT," if len(statements) > 1 else ""
            await cur.execute(f"START TRANSACTION{snapshot} READ ONLY")
        try:
            for statement in statements:
                # Unbuffered: rows past max_rows are never read.
                cur = await conn.cursor(aiomysql.SSCursor)
                await cur.execute(statement.sql)
                if cur.description is None:
                    raise self.error(f"{statement.what} returned no rows and no columns")
                columns = tuple(str(d[0]) for d in cur.description)
                rows = await cur.fetchmany(statement.max_rows + 1)
                if len(rows) > statement.max_rows:
                    conn.close()  # dropping it is cheaper than reading the rest
                    raise self.too_many_rows(statement)
                await cur.close()
                results.append(Result(columns, rows))
        finally:
            if not conn.closed:
                await conn.rollback()
        return results

    async def close(self) -> None:
        """Close the pool's connections."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            try:
                async with asyncio.timeout(5):
                    await pool.wait_closed()
            except TimeoutError:
                pool.terminate()


# --- SQLite -----------------------------------------------------------------------------

_PROGRESS_STEPS = 10_000  # SQLite VM steps between two looks at the clock


def sqlite_path(dsn: str) -> Path:
    """The file of a ``sqlite:///path`` DSN (``sqlite:////abs/path`` is absolute)."""
    parts = urlsplit(dsn)
    if parts.netloc:
        raise ValueError("a SQLite DSN has no host: write sqlite:///relative or sqlite:////abs")
    path = unquote(parts.path)
    if not path.startswith("/") or path == "/":
        raise ValueError("a SQLite DSN needs a path: sqlite:///relative or sqlite:////abs")
    return Path(path[1:])


class SQLiteDatabase(Database):
    """A SQLite file through aiosqlite, opened read-only for every call."""

    schemes = SQLITE_SCHEMES

    def __init__(self, dsn: str, **options: Any) -> None:
        super().__init__(dsn, **options)
        try:
            self.path = sqlite_path(dsn)
        except ValueError as exc:
            raise self.error("invalid DSN", exc) from None

    async def read(self, statements: Sequence[Statement]) -> list[Result]:
        """Open the file read-only and run ``statements`` in one transaction."""
        statement = statements[0]
        # Checked first: aiosqlite leaves a stray callback behind when a connect fails.
        if not self.path.is_file():
            raise self.error(f"cannot open {self.path} read-only: no such file")
        uri = f"file:{quote(str(self.path))}?mode=ro"
        deadline = 0.0
        try:
            async with (
                asyncio.timeout(self.client_deadline(len(statements))),
                aiosqlite.connect(
                    uri, uri=True, timeout=self.connect_timeout, isolation_level=None
                ) as conn,
            ):
                await conn.execute("PRAGMA query_only = ON")
                await conn.set_progress_handler(
                    lambda: time.monotonic() > deadline, _PROGRESS_STEPS
                )
                await conn.execute("BEGIN")  # one snapshot for every statement
                results = []
                for statement in statements:
                    deadline = time.monotonic() + self.statement_timeout
                    async with conn.execute(statement.sql) as cur:
                        if cur.description is None:
                            raise self.error(f"{statement.what} returned no rows and no columns")
                        columns = tuple(str(d[0]) for d in cur.description)
                        rows = list(await cur.fetchmany(statement.max_rows + 1))
                    if len(rows) > statement.max_rows:
                        raise self.too_many_rows(statement)
                    results.append(Result(columns, rows))
                await conn.execute("ROLLBACK")
                return results
        except sqlite3.OperationalError as exc:
            if "interrupted" in str(exc):
                raise self.timed_out(statement) from None
            if "unable to open" in str(exc):
                raise self.error(f"cannot open {self.path} read-only", exc) from None
            raise self.error(f"{statement.what} failed", exc) from None
        except sqlite3.Error as exc:
            raise self.error(f"{statement.what} failed", exc) from None
        except TimeoutError:
            raise self.error("no answer in time; the file may be locked") from None


_DRIVERS: tuple[type[Database], ...] = (PostgresDatabase, MySQLDatabase, SQLiteDatabase)


def open_database(
    dsn: str, *, tls: ssl.SSLContext | None, connect_timeout: float, statement_timeout: float
) -> Database:
    """The :class:`Database` for ``dsn``'s scheme (no connection is made yet)."""
    scheme = dsn_scheme(dsn)
    driver = next(d for d in _DRIVERS if scheme in d.schemes)
    return driver(
        dsn, tls=tls, connect_timeout=connect_timeout, statement_timeout=statement_timeout
    )
