"""Shared helpers for managing real server processes in tests.

Every server listens on 127.0.0.1 on a free port, keeps its data in a temporary
directory, runs in its own process group and is killed (group and all) on exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import pytest


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# Set (by tests/conftest.py) when pytest runs the fast tier, ``-m "not server"``.
FAST_TIER_ENV = "SDBRIDGE_FAST_TIER"

# The binaries of real servers (and of root-only tools) that the fast tier never starts.
SERVER_BINARIES = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "etcd": "etcd",
    "etcdctl": "etcd",
    "java": "zookeeper",
    "dockerd": "docker",
    "docker": "docker",
    "docker-compose": "docker",
    "vmagent": "vmagent",
    "mariadbd": "mariadb",
    "mariadb-install-db": "mariadb",
    "initdb": "postgres",
    "chromium": "browser",
    "chromedriver": "browser",
    "mmdebstrap": "docker",
}


def require_binary(name: str) -> str:
    """The path of ``name``; fail (not skip) when it is missing: scripts/test installs it.

    In the fast tier a server's binary is refused: the test that asked lacks its marker.
    """
    marker = SERVER_BINARIES.get(name)
    if marker is not None and os.environ.get(FAST_TIER_ENV):
        pytest.fail(f"this test starts {name}: mark it @pytest.mark.{marker}")
    path = shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if os.path.exists(p)), None
    )
    if path is None:
        pytest.fail(f"{name} is not installed; run scripts/install-system-deps")
    return path


def wait_until(
    condition: Callable[[], bool], *, timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> None:
    """Poll ``condition`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if condition():
                return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether GET ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


class ManagedProcess:
    """A child process in its own process group, killed with its children on stop()."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        """The process id (also its process group id)."""
        return self.proc.pid

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.proc.poll() is None

    def log_text(self) -> str:
        """Everything the process wrote so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the group, then SIGKILL it if it lingers; return the exit status."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(timeout)
        # Children that ignored SIGTERM die with the group.
        self.signal(signal.SIGKILL)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


@contextlib.contextmanager
def managed(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[ManagedProcess]:
    """Run ``argv`` for the duration of a with-block."""
    process = ManagedProcess(argv, log_path=log_path, env=env, cwd=cwd)
    try:
        yield process
    finally:
        process.stop()


class Stoppable(Protocol):
    """A server that stops (its processes) on ``stop()``."""

    def stop(self) -> None:
        """Stop the server."""


S = TypeVar("S", bound=Stoppable)


def server_in_temp_dir(prefix: str, start: Callable[[Path], S]) -> Iterator[S]:
    """``start(workdir)`` in a fresh temporary directory (readable by the service users the
    server may run as); stop it and remove the directory with its data afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(workdir, 0o755)
    server: S | None = None
    try:
        server = start(workdir)
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
