"""A real PostgreSQL (Debian's ``postgresql``) for the sql_sd tests and benchmark.

:class:`PostgresServer` runs a cluster made by ``initdb`` in a temporary directory,
listening on 127.0.0.1 on a free port with TLS (a self-signed certificate) and
``pg_stat_statements`` loaded, so tests can count the statements sdbridge sends.
When the tests run as root, ``initdb`` and the server run as the ``postgres`` user
(PostgreSQL refuses root), and the directories are made writable by it.

The server runs in the foreground (not daemonized by ``pg_ctl``), in its own process
group, so it is killed with everything it started however the session ends; ``stop()``
asks for a fast shutdown first (SIGINT), which ends open sessions at once instead of
waiting for them as SIGTERM's "smart" mode does.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from .common import ManagedProcess, free_port, require_binary, server_in_temp_dir, wait_until
from .tls import SelfSigned, self_signed

SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "superuser-secret-1"  # only on this throwaway loopback cluster


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if not found:
        pytest.fail("PostgreSQL is not installed; run scripts/install-system-deps")
    return Path(found[-1]).parent


def _version_key(path: str) -> int:
    return int(Path(path).parent.parent.name)


def _as_postgres() -> list[str]:
    """A prefix that runs a command as ``postgres`` when we are root, nothing otherwise."""
    if os.geteuid() != 0:
        return []
    return [require_binary("setpriv"), "--reuid=postgres", "--regid=postgres", "--init-groups"]


def _give_to_postgres(*paths: Path) -> None:
    if os.geteuid() != 0:
        return
    user = pwd.getpwnam("postgres")
    for path in paths:
        os.chown(path, user.pw_uid, user.pw_gid)


class PostgresServer:
    """One PostgreSQL cluster; ``stop()`` and ``start()`` keep its port and data."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.bindir = _bindir()
        self.port = free_port()
        self.data = workdir / "data"
        self.sockets = workdir / "sockets"
        self.sockets.mkdir()
        self.tls: SelfSigned = self_signed(workdir, "postgres")
        os.chmod(self.tls.key, 0o600)  # the server refuses a key others can read
        password_file = workdir / "superuser-password"
        password_file.write_text(SUPERUSER_PASSWORD + "\n")
        _give_to_postgres(workdir, self.sockets, self.tls.key, self.tls.cert, password_file)
        subprocess.run(
            [
                *_as_postgres(),
                str(self.bindir / "initdb"),
                f"--pgdata={self.data}",
                f"--username={SUPERUSER}",
                f"--pwfile={password_file}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        self.process: ManagedProcess | None = None
        self.start()

    @property
    def log_path(self) -> Path:
        """Where the server writes its log."""
        return self.workdir / "postgres.log"

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until it accepts connections."""
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.sockets),
            "shared_preload_libraries": "pg_stat_statements",
            "pg_stat_statements.track": "all",
            "ssl": "on",
            "ssl_cert_file": str(self.tls.cert),
            "ssl_key_file": str(self.tls.key),
            "fsync": "off",  # a throwaway cluster: durability only costs time
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "50",
            "shared_buffers": "32MB",
        }
        argv = [*_as_postgres(), str(self.bindir / "postgres"), f"-D{self.data}"]
        argv += [f"-c{name}={value}" for name, value in settings.items()]
        self.process = ManagedProcess(argv, log_path=self.log_path)
        wait_until(self.ready, timeout=timeout, what="PostgreSQL accepting connections")

    def ready(self) -> bool:
        """Whether the server accepts connections (pg_isready)."""
        if self.process is None or not self.process.alive():
            raise AssertionError(f"PostgreSQL exited; see {self.log_path}")
        result = subprocess.run(
            [str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True,
            timeout=10,
        )
        return result.returncode == 0

    def stop(self) -> None:
        """Fast shutdown (SIGINT ends open sessions), then SIGKILL if it lingers."""
        if self.process is not None:
            self.process.signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.proc.wait(20)
            self.process.stop()
            self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port and data."""
        self.stop()
        self.start()

    def dsn(
        self,
        user: str = SUPERUSER,
        password: str = SUPERUSER_PASSWORD,
        database: str = "postgres",
        params: str = "",
    ) -> str:
        """A ``postgresql://`` DSN for this server over TCP."""
        query = f"?{params}" if params else ""
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}{query}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` as the superuser over TCP with psql; return its unaligned output."""
        result = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-X",
                "-A",
                "-t",
                "-c",
                sql,
            ],
            env={**os.environ, "PGPASSWORD": SUPERUSER_PASSWORD, "PGSSLMODE": "disable"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise AssertionError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def psql_many(self, statements: Sequence[str], database: str = "postgres") -> None:
        """Run several statements, each in its own psql -c (so DDL and COPY mix freely)."""
        for sql in statements:
            self.psql(sql, database)


def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster in a temporary directory, removed with its data afterwards."""
    yield from server_in_temp_dir("sdbridge-postgres-", PostgresServer)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL shared by the session; tests use their own databases, tables and roles."""
    yield from postgres_server()
