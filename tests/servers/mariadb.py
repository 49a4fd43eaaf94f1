"""A real MariaDB (Debian's ``mariadb-server``) for the sql_sd tests.

:class:`MariaDBServer` makes a data directory with ``mariadb-install-db`` in a temporary
directory and runs ``mariadbd`` on 127.0.0.1 on a free port, with TLS (a self-signed
certificate). ``--no-defaults`` keeps the machine's /etc/mysql out of it. Administration
goes through the ``mariadb`` client over the server's own unix socket as root; the code
under test connects over TCP as the users the tests create. When the tests run as root,
the server runs as the ``mysql`` user, which owns the data directory.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .common import ManagedProcess, free_port, require_binary, server_in_temp_dir, wait_until
from .tls import SelfSigned, self_signed


def _user_args() -> list[str]:
    return ["--user=mysql"] if os.geteuid() == 0 else []


def _give_to_mysql(*paths: Path) -> None:
    if os.geteuid() != 0:
        return
    user = pwd.getpwnam("mysql")
    for path in paths:
        os.chown(path, user.pw_uid, user.pw_gid)


class MariaDBServer:
    """One MariaDB server on 127.0.0.1."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.data = workdir / "data"
        self.data.mkdir()
        self.socket = workdir / "mariadbd.sock"
        self.tls: SelfSigned = self_signed(workdir, "mariadb")
        _give_to_mysql(workdir, self.data, self.tls.key, self.tls.cert)
        subprocess.run(
            [
                require_binary("mariadb-install-db"),
                "--no-defaults",
                f"--datadir={self.data}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
                *_user_args(),
            ],
            check=True,
            capture_output=True,
            timeout=180,
        )
        self.process: ManagedProcess | None = None
        self.start()

    @property
    def log_path(self) -> Path:
        """Where the server writes its log."""
        return self.workdir / "mariadbd.log"

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until it answers a ping."""
        self.process = ManagedProcess(
            [
                require_binary("mariadbd"),
                "--no-defaults",
                f"--datadir={self.data}",
                f"--socket={self.socket}",
                f"--pid-file={self.workdir / 'mariadbd.pid'}",
                "--skip-networking=0",
                "--bind-address=127.0.0.1",
                f"--port={self.port}",
                "--skip-name-resolve",
                f"--ssl-cert={self.tls.cert}",
                f"--ssl-key={self.tls.key}",
                "--innodb-buffer-pool-size=32M",
                "--innodb-log-file-size=16M",
                "--innodb-flush-log-at-trx-commit=0",
                "--skip-log-bin",
                *_user_args(),
            ],
            log_path=self.log_path,
        )
        wait_until(self.ready, timeout=timeout, what="MariaDB answering a ping")

    def ready(self) -> bool:
        """Whether the server answers ``mariadb-admin ping`` on its socket."""
        if self.process is None or not self.process.alive():
            raise AssertionError(f"mariadbd exited; see {self.log_path}")
        result = subprocess.run(
            [
                require_binary("mariadb-admin"),
                "--no-defaults",
                f"--socket={self.socket}",
                "-uroot",
                "ping",
            ],
            capture_output=True,
            timeout=10,
        )
        return result.returncode == 0

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        if self.process is not None:
            self.process.stop(timeout=30)
            self.process = None

    def dsn(self, user: str, password: str, database: str, params: str = "") -> str:
        """A ``mysql://`` DSN for this server over TCP."""
        query = f"?{params}" if params else ""
        return f"mysql://{user}:{password}@127.0.0.1:{self.port}/{database}{query}"

    def sql(self, sql: str, database: str = "") -> str:
        """Run ``sql`` as root over the socket with the mariadb client; return its output."""
        result = subprocess.run(
            [
                require_binary("mariadb"),
                "--no-defaults",
                f"--socket={self.socket}",
                "-uroot",
                "--batch",
                "--skip-column-names",
                *([database] if database else []),
                "-e",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise AssertionError(f"mariadb failed: {result.stderr.strip()}")
        return result.stdout.strip()


def mariadb_server() -> Iterator[MariaDBServer]:
    """A MariaDB in a temporary directory, removed with its data afterwards."""
    yield from server_in_temp_dir("sdbridge-mariadb-", MariaDBServer)


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDBServer]:
    """One MariaDB shared by the session; tests use their own databases, tables and users."""
    yield from mariadb_server()
