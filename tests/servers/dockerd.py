"""A real Docker Engine (Debian's docker.io) in swarm mode, with a locally built image.

The session fixture :func:`docker_engine` uses the dockerd on ``/var/run/docker.sock`` if
one answers, and otherwise starts one (``--iptables=false --bridge=none``, its own data
and exec roots in a temporary directory). If swarm mode is inactive it runs a
single-node ``swarm init`` on 127.0.0.1, and if the test image is missing it builds it
with an image import of a tarball holding only Debian's static ``/bin/busybox`` (nothing
can be pulled from a registry). At the end it undoes exactly what it did: removes the
image it built, leaves the swarm it created, stops the dockerd it started.

Tests create their objects through :class:`DockerEngine` helpers that remove them
again, and name them with a unique prefix. Nothing ever connects to a container or
overlay address: everything is read through the API socket.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode

import pytest

from .common import ManagedProcess, free_port, require_binary, wait_until
from .tls import SelfSigned, self_signed

SOCKET = Path("/var/run/docker.sock")
IMAGE = "sdbridge-test-busybox:latest"
BUSYBOX = Path("/bin/busybox")
API = "v1.41"  # Debian 12's docker.io; every call here exists since 1.25


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class EngineAPIError(Exception):
    """The engine answered with an HTTP error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def api(
    method: str,
    path: str,
    *,
    sock: Path = SOCKET,
    params: dict[str, Any] | None = None,
    body: Any = None,
    raw: bytes | None = None,
    timeout: float = 60.0,
    versioned: bool = True,
) -> Any:
    """One Engine API call over the unix socket; returns decoded JSON (or None)."""
    connection = _UnixHTTPConnection(sock, timeout)
    url = (f"/{API}" if versioned else "") + path
    if params:
        url += "?" + urlencode(params)
    headers = {}
    data: bytes | None = raw
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    elif raw is not None:
        headers["Content-Type"] = "application/x-tar"
    try:
        connection.request(method, url, body=data, headers=headers)
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    if response.status >= 400:
        try:
            message = json.loads(payload).get("message", payload.decode())
        except ValueError:
            message = payload.decode(errors="replace")
        raise EngineAPIError(response.status, message)
    if not payload.strip():
        return None
    try:
        return json.loads(payload)
    except ValueError:
        return payload.decode(errors="replace")


def ping(sock: Path = SOCKET) -> bool:
    """Whether a Docker Engine answers on ``sock``."""
    try:
        return api("GET", "/_ping", sock=sock, timeout=2, versioned=False) == "OK"
    except (OSError, EngineAPIError, http.client.HTTPException):
        return False


def busybox_tarball() -> bytes:
    """A root filesystem holding only /bin/busybox (Debian's busybox-static)."""
    if not BUSYBOX.exists():
        pytest.fail(f"{BUSYBOX} is missing; run scripts/install-system-deps (busybox-static)")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("bin")
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
        tar.add(str(BUSYBOX), arcname="bin/busybox")
    return buffer.getvalue()


class DockerEngine:
    """A reachable engine plus helpers that create and always remove test objects."""

    def __init__(self, sock: Path = SOCKET) -> None:
        self.sock = sock
        self.host = f"unix://{sock}"
        self.image = IMAGE
        self.docker = _docker_cli()
        self.run_id = uuid.uuid4().hex[:8]

    # --- raw access ----------------------------------------------------------------------

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """An Engine API call on this engine."""
        return api(method, path, sock=self.sock, **kwargs)

    def cli(self, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> str:
        """Run the docker CLI against this engine; fail the test on a non-zero exit."""
        result = subprocess.run(
            [self.docker, "-H", self.host, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, **env} if env else None,
        )
        if result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def name(self, what: str) -> str:
        """A unique object name for this test run."""
        return f"sdbt-{self.run_id}-{what}-{uuid.uuid4().hex[:4]}"

    def swarm_state(self) -> str:
        """``inactive``, ``active``, ``pending``, ``error`` or ``locked``."""
        return str(self.api("GET", "/info")["Swarm"]["LocalNodeState"])

    # --- objects, removed on exit --------------------------------------------------------

    @contextlib.contextmanager
    def network(self, *args: str, driver: str = "overlay") -> Iterator[str]:
        """``docker network create`` with ``args``; yields its name."""
        name = self.name("net")
        self.cli("network", "create", "--driver", driver, *args, name)
        try:
            yield name
        finally:
            self._remove_network(name)

    def _remove_network(self, name: str) -> None:
        # A network is busy until the tasks that used it are gone; retry a little.
        deadline = time.monotonic() + 60
        while True:
            try:
                self.api("DELETE", f"/networks/{name}")
                return
            except EngineAPIError as exc:
                if exc.status == 404:
                    return
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.5)

    @contextlib.contextmanager
    def service(self, *args: str, command: tuple[str, ...] = ()) -> Iterator[str]:
        """``docker service create -d`` with ``args``; yields its name; waits for removal."""
        name = self.name("svc")
        cmd = command or ("/bin/busybox", "httpd", "-f", "-p", "8080")
        # busybox as PID 1 ignores SIGTERM: stop with SIGKILL instead of a 10 s grace period.
        self.cli(
            "service", "create", "-d", "--quiet", "--name", name, "--stop-signal=SIGKILL",
            *args, self.image, *cmd,
        )  # fmt: skip
        try:
            yield name
        finally:
            self.remove_service(name)

    def remove_service(self, name: str, *, wait: bool = False) -> None:
        """Remove a service; with ``wait``, until its task containers are gone too.

        Swarm removes the containers in the background; a network the service used
        stays busy until then, and :meth:`network` retries its removal for that.
        """
        with contextlib.suppress(EngineAPIError):
            self.api("DELETE", f"/services/{name}")
        if wait:
            filters = json.dumps({"label": [f"com.docker.swarm.service.name={name}"]})
            wait_until(
                lambda: (
                    not self.api("GET", "/containers/json", params={"all": 1, "filters": filters})
                ),
                timeout=60,
                what=f"containers of service {name} to be removed",
            )

    @contextlib.contextmanager
    def container(self, *args: str, command: tuple[str, ...] = ()) -> Iterator[str]:
        """``docker run -d`` with ``args``; yields its ID; removes it (forcefully)."""
        name = self.name("ctr")
        cmd = command or ("/bin/busybox", "httpd", "-f", "-p", "8080")
        cid = self.cli(
            "run", "-d", "--name", name, "--stop-signal=SIGKILL", *args, self.image, *cmd
        )
        try:
            yield cid
        finally:
            with contextlib.suppress(EngineAPIError):
                self.api("DELETE", f"/containers/{cid}", params={"force": 1})

    def tasks(self, service: str) -> list[dict[str, Any]]:
        """The tasks of one service."""
        filters = json.dumps({"service": [service]})
        return list(self.api("GET", "/tasks", params={"filters": filters}))

    def wait_tasks_settled(self, service: str, *, running: int | None = None) -> None:
        """Wait until no task of ``service`` is on its way up or down.

        A task that cannot be placed (pending on "no suitable node") counts as settled.
        """

        def settled() -> bool:
            tasks = self.tasks(service)
            for task in tasks:
                state, desired = task["Status"]["State"], task["DesiredState"]
                stuck = state == "pending" and task["Status"].get("Err")
                if desired == "running" and state not in ("running", "complete") and not stuck:
                    return False
                if desired != "running" and state == "running":
                    return False
            up = sum(1 for t in tasks if t["Status"]["State"] == "running")
            return running is None or up == running

        wait_until(settled, timeout=90, interval=0.3, what=f"tasks of {service} to settle")


def _docker_cli() -> str:
    # Debian's own client first; another docker on PATH works too (it negotiates).
    if Path("/usr/bin/docker").exists():
        return "/usr/bin/docker"
    return require_binary("docker")


# --- starting and owning a daemon -------------------------------------------------------


class Dockerd:
    """A dockerd this process started; stop() stops it and its containerd."""

    def __init__(
        self,
        root: Path,
        sock: Path,
        *,
        storage_driver: str | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.root = root
        self.sock = sock
        self.argv = [
            require_binary("dockerd"),
            "--iptables=false",
            "--bridge=none",
            f"--data-root={root / 'data'}",
            f"--exec-root={root / 'exec'}",
            f"--pidfile={root / 'docker.pid'}",
            f"--host=unix://{sock}",
        ]
        if storage_driver:
            self.argv.append(f"--storage-driver={storage_driver}")
        self.argv.extend(extra)
        self.process: ManagedProcess | None = None

    def start(self, timeout: float = 60) -> None:
        """Start dockerd and wait until it answers /_ping; fail with its log if it dies."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.process = ManagedProcess(self.argv, log_path=self.root / "dockerd.log")
        deadline = time.monotonic() + timeout
        while not ping(self.sock):
            if not self.process.alive():
                log = self.process.log_text()[-3000:]
                self.process.stop()
                raise RuntimeError(f"dockerd exited: {log}")
            if time.monotonic() > deadline:
                log = self.process.log_text()[-3000:]
                self.process.stop()
                raise RuntimeError(f"dockerd did not answer /_ping within {timeout}s: {log}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop dockerd (SIGTERM lets it stop its containers and containerd cleanly)."""
        if self.process is not None:
            self.process.stop(timeout=60)
            self.process = None


def remove_root(root: Path) -> None:
    """Delete a stopped dockerd's directory, unmounting what it left mounted there.

    dockerd leaves an nsfs mount at ``<exec-root>/netns/default`` behind.
    """
    prefix = f"{root}/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
        subprocess.run(["umount", mount], check=False, capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def start_dockerd(root: Path, sock: Path, extra: Sequence[str] = ()) -> Dockerd:
    """Start a dockerd with overlay2, falling back to vfs where overlay cannot mount."""
    try:
        daemon = Dockerd(root, sock, extra=extra)
        daemon.start()
    except RuntimeError as first:
        if "overlay" not in str(first):
            pytest.fail(f"cannot start dockerd: {first}")
        shutil.rmtree(root / "data", ignore_errors=True)
        daemon = Dockerd(root, sock, storage_driver="vfs", extra=extra)
        try:
            daemon.start()
        except RuntimeError as second:
            pytest.fail(f"cannot start dockerd with overlay2 ({first}) nor vfs ({second})")
    return daemon


def swarm_init(engine: DockerEngine, listen: str = "127.0.0.1:2377") -> None:
    """A single-node swarm advertised on 127.0.0.1."""
    engine.api(
        "POST",
        "/swarm/init",
        body={"ListenAddr": listen, "AdvertiseAddr": "127.0.0.1", "ForceNewCluster": False},
    )
    wait_until(lambda: engine.swarm_state() == "active", timeout=60, what="swarm active")


def ensure_image(engine: DockerEngine) -> bool:
    """Build the test image if it is missing; return whether it was built."""
    try:
        engine.api("GET", f"/images/{engine.image}/json")
        return False
    except EngineAPIError as exc:
        if exc.status != 404:
            raise
    repo, tag = engine.image.split(":")
    engine.api(
        "POST",
        "/images/create",
        params={"fromSrc": "-", "repo": repo, "tag": tag},
        raw=busybox_tarball(),
    )
    engine.api("GET", f"/images/{engine.image}/json")
    return True


# Several pytest sessions (engineers running the suite side by side) may share the one
# engine on /var/run/docker.sock. Setting it up or tearing it down happens under an
# exclusive setup lock; each session holds a shared "in use" lock while it runs, and a
# session that must undo something (stop the dockerd it started, leave the swarm it
# created, remove the image it built) first waits for every other session to let go.
GWBRIDGE = Path("/sys/class/net/docker_gwbridge")
SETUP_LOCK = Path(tempfile.gettempdir()) / "sdbridge-dockerd.setup.lock"
USE_LOCK = Path(tempfile.gettempdir()) / "sdbridge-dockerd.use.lock"


class _Session:
    """What the fixture did, so that the last user undoes exactly that."""

    def __init__(self) -> None:
        self.users = 0
        self.engine: DockerEngine | None = None
        self.daemon: Dockerd | None = None
        self.root: Path | None = None
        self.swarm_created = False
        self.image_built = False
        self._use: IO[bytes] | None = None
        self.gwbridge_existed = True

    def acquire(self) -> DockerEngine:
        self.users += 1
        if self.engine is not None:
            return self.engine
        require_binary("dockerd")
        with SETUP_LOCK.open("ab") as setup:
            fcntl.flock(setup, fcntl.LOCK_EX)
            if not ping(SOCKET):
                self.gwbridge_existed = GWBRIDGE.exists()
                self.root = Path(tempfile.mkdtemp(prefix="sdbridge-dockerd-"))
                self.daemon = start_dockerd(self.root, SOCKET)
            engine = DockerEngine(SOCKET)
            state = engine.swarm_state()
            if state == "inactive":
                swarm_init(engine)
                self.swarm_created = True
            elif state != "active":
                pytest.fail(f"the Docker Engine's swarm is {state!r}; tests need it active")
            self.image_built = ensure_image(engine)
            self._use = USE_LOCK.open("ab")
            fcntl.flock(self._use, fcntl.LOCK_SH)
        self.engine = engine
        return engine

    def release(self) -> None:
        self.users -= 1
        if self.users > 0 or self.engine is None:
            return
        engine, self.engine = self.engine, None
        owns = self.image_built or self.swarm_created or self.daemon is not None
        with SETUP_LOCK.open("ab") as setup:
            if owns:
                fcntl.flock(setup, fcntl.LOCK_EX)
            assert self._use is not None
            fcntl.flock(self._use, fcntl.LOCK_UN)
            if owns:
                fcntl.flock(self._use, fcntl.LOCK_EX)  # waits for the other sessions
                self._undo(engine)
            self._use.close()
            self._use = None

    def _undo(self, engine: DockerEngine) -> None:
        if self.image_built:
            with contextlib.suppress(EngineAPIError):
                engine.api("DELETE", f"/images/{engine.image}")
        if self.swarm_created and self.daemon is None:
            engine.api("POST", "/swarm/leave", params={"force": 1})
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None
            if self.root is not None:
                remove_root(self.root)
            if not self.gwbridge_existed and GWBRIDGE.exists():
                # swarm init made it; like any Linux bridge it outlives dockerd.
                subprocess.run(["ip", "link", "delete", "docker_gwbridge"], check=False)


_session = _Session()


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """The Docker Engine on /var/run/docker.sock, in swarm mode, with the test image.

    Imported by several test modules, each import makes its own fixture; a shared
    reference count makes the last one to finish undo what the first one did.
    """
    engine = _session.acquire()
    try:
        yield engine
    finally:
        _session.release()


@contextlib.contextmanager
def _private(extra: Sequence[str] = ()) -> Iterator[tuple[Dockerd, DockerEngine]]:
    require_binary("dockerd")
    root = Path(tempfile.mkdtemp(prefix="sdbridge-dockerd-private-"))
    sock = root / "docker.sock"
    daemon = start_dockerd(root, sock, extra)
    engine = DockerEngine(sock)
    try:
        ensure_image(engine)
        yield daemon, engine
    finally:
        if ping(sock):
            for container in engine.api("GET", "/containers/json", params={"all": 1}) or []:
                with contextlib.suppress(EngineAPIError):
                    engine.api("DELETE", f"/containers/{container['Id']}", params={"force": 1})
            # A bridge network's Linux bridge outlives dockerd: remove the networks first.
            for network in engine.api("GET", "/networks") or []:
                if network["Name"] not in ("bridge", "host", "none"):
                    with contextlib.suppress(EngineAPIError):
                        engine.api("DELETE", f"/networks/{network['Id']}")
        daemon.stop()
        remove_root(root)


@pytest.fixture
def private_dockerd() -> Iterator[tuple[Dockerd, DockerEngine]]:
    """A second dockerd of the test's own on its own socket (no swarm), to stop and restart.

    It shares the machine with the session's engine: its own data, exec root and socket.
    """
    with _private() as found:
        yield found


@dataclass(frozen=True)
class TLSEngine:
    """A private dockerd that also listens on 127.0.0.1 with TLS and client certificates."""

    daemon: Dockerd
    engine: DockerEngine  # its plain unix socket, for the test's own setup
    address: str  # 127.0.0.1:<port>
    server: SelfSigned  # the server certificate (also the CA a client must trust)
    client: SelfSigned  # the client certificate dockerd requires


@pytest.fixture
def private_dockerd_tls(tmp_path: Path) -> Iterator[TLSEngine]:
    """A private dockerd with ``--tlsverify`` on a free loopback port (and its unix socket)."""
    server = self_signed(tmp_path, "server")
    client = self_signed(tmp_path, "client")
    address = f"127.0.0.1:{free_port()}"
    extra = [
        f"--host=tcp://{address}",
        "--tlsverify",
        f"--tlscacert={client.cert}",
        f"--tlscert={server.cert}",
        f"--tlskey={server.key}",
    ]
    with _private(extra) as (daemon, engine):
        yield TLSEngine(daemon, engine, address, server, client)
