"""A real ZooKeeper server (Debian's ``zookeeper`` 3.8 package) for tests and benchmarks.

The server runs standalone (``ZooKeeperServerMain``) on 127.0.0.1 and a free port, with a
temporary data directory, a small heap, and the admin server off. Java starts in well
under a second, but it is still started once per test session; :class:`ZooKeeperServer`
can be stopped (gently or with SIGKILL) and started again on the same port and data
directory, so sessions and persistent znodes survive a restart as they would in production.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .common import ManagedProcess, free_port, require_binary, wait_until
from .tls import SelfSigned

ZOOKEEPER_JAR = "/usr/share/java/zookeeper.jar"
# zookeeper.jar's manifest lists its dependencies; slf4j-simple gives it a log to read, and
# the Netty connection factory (needed for TLS) also needs two jars the manifest misses.
EXTRA_JARS = (
    "/usr/share/java/slf4j-simple.jar",
    "/usr/share/java/netty-codec.jar",
    "/usr/share/java/netty-resolver.jar",
)
MAIN_CLASS = "org.apache.zookeeper.server.ZooKeeperServerMain"


def four_letter_word(port: int, word: str, timeout: float = 2.0) -> str:
    """Send a four-letter command (``ruok``, ``srvr``, ``mntr``) and return the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(word.encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


class ZooKeeperServer:
    """A standalone ZooKeeper on 127.0.0.1 that can be stopped and started again."""

    def __init__(
        self, workdir: Path, *, port: int | None = None, tls: SelfSigned | None = None
    ) -> None:
        self.java = require_binary("java")
        if not os.path.exists(ZOOKEEPER_JAR):
            pytest.fail(f"{ZOOKEEPER_JAR} is missing; run scripts/install-system-deps")
        self.workdir = workdir
        self.port = port if port is not None else free_port()
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "zoo.cfg"
        self.config_path.write_text(
            "\n".join(
                [
                    "tickTime=500",
                    f"dataDir={self.data_dir}",
                    "clientPortAddress=127.0.0.1",
                    f"clientPort={self.port}",
                    # Sessions between 1 s and 60 s (2 to 120 ticks): tests use short ones.
                    "minSessionTimeout=1000",
                    "maxSessionTimeout=60000",
                    "admin.enableServer=false",
                    "4lw.commands.whitelist=ruok,srvr,mntr,cons,wchs",
                    "maxClientCnxns=0",
                    "snapCount=100000",
                    *self._tls_lines(tls),
                    "",
                ]
            )
        )
        self.process: ManagedProcess | None = None
        self.starts = 0

    def _tls_lines(self, tls: SelfSigned | None) -> list[str]:
        """A TLS port next to the plain one (which stays, for ``ruok``), PEM key material."""
        self.secure_port: int | None = None
        if tls is None:
            return []
        self.secure_port = free_port()
        keystore = self.workdir / "keystore.pem"  # ZooKeeper's PEM keystore: key, then cert
        keystore.write_bytes(tls.key.read_bytes() + tls.cert.read_bytes())
        return [
            f"secureClientPort={self.secure_port}",
            "secureClientPortAddress=127.0.0.1",
            "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory",
            f"ssl.keyStore.location={keystore}",
            "ssl.keyStore.type=PEM",
            f"ssl.trustStore.location={tls.cert}",
            "ssl.trustStore.type=PEM",
            "ssl.clientAuth=none",
        ]

    @property
    def secure_hosts(self) -> str:
        """The connect string of the TLS port."""
        assert self.secure_port is not None, "started without tls"
        return f"127.0.0.1:{self.secure_port}"

    @property
    def hosts(self) -> str:
        """The connect string for clients, ``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until it answers ``ruok``."""
        assert self.process is None or not self.process.alive(), "already running"
        classpath = ":".join([ZOOKEEPER_JAR, *(j for j in EXTRA_JARS if os.path.exists(j))])
        argv = [
            self.java,
            "-Xmx128m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",  # quicker start-up; throughput is not the point here
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
            "-Dzookeeper.admin.enableServer=false",
            "-cp",
            classpath,
            MAIN_CLASS,
            str(self.config_path),
        ]
        self.starts += 1
        self.process = ManagedProcess(argv, log_path=self.workdir / f"zookeeper.{self.starts}.log")
        process = self.process

        def ready() -> bool:
            if not process.alive():
                pytest.fail(f"ZooKeeper exited:\n{process.log_text()[-4000:]}")
            return four_letter_word(self.port, "ruok") == "imok"

        wait_until(ready, timeout=timeout, what=f"ZooKeeper on {self.hosts}")

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGKILL when ``kill``, else SIGTERM (then SIGKILL if it lingers)."""
        if self.process is None:
            return
        if kill:
            self.process.signal(signal.SIGKILL)
        self.process.stop()
        self.process = None

    def restart(self, *, kill: bool = True) -> None:
        """Stop and start again on the same port and data directory."""
        self.stop(kill=kill)
        self.start()

    def alive(self) -> bool:
        """Whether the server process runs."""
        return self.process is not None and self.process.alive()


@contextlib.contextmanager
def zookeeper_server(*, tls: SelfSigned | None = None) -> Iterator[ZooKeeperServer]:
    """A running server in a temporary directory, removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="sdbridge-zk-"))
    server = ZooKeeperServer(workdir, tls=tls)
    try:
        server.start()
        yield server
    finally:
        server.stop(kill=True)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def zookeeper() -> Iterator[ZooKeeperServer]:
    """One ZooKeeper for the whole test session; tests use their own znode prefixes."""
    with zookeeper_server() as server:
        yield server
