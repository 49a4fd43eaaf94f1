"""A real etcd (Debian's ``etcd-server`` 3.4) for tests and benchmarks, and framework writers.

:class:`EtcdServer` runs a single member on 127.0.0.1 with free client and peer ports and a
temporary data directory; it can be stopped and started again on the same ports and data
(the restart fault test). Its small client speaks the v3 JSON gateway with urllib, so tests
can write keys while the code under test runs on the event loop.

The ``*_instance`` functions write keys and values byte for byte as each framework does;
each links to the framework code that defines its layout. Go's ``encoding/json`` writes
struct fields in declaration order, map keys sorted, no spaces, and escapes ``<``, ``>``
and ``&``: :func:`go_json` does the same.
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import ssl
import tempfile
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from .common import ManagedProcess, free_port, require_binary, wait_until
from .tls import SelfSigned, self_signed


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


class EtcdServer:
    """One etcd member; ``stop()`` and ``start()`` keep its ports and data.

    Alone by default; :class:`EtcdCluster` passes ``name``, its ports and ``initial_cluster``
    (and ``start=False``, since a member of a new cluster only turns healthy with a quorum).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        extra_args: Sequence[str] = (),
        tls: SelfSigned | None = None,
        name: str = "sdbridge-test",
        ports: tuple[int, int] | None = None,
        initial_cluster: str | None = None,
        start: bool = True,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        if ports is None:
            ports = _two_ports()
        self.client_port, self.peer_port = ports
        self.peer_url = f"http://127.0.0.1:{self.peer_port}"
        self.initial_cluster = initial_cluster or f"{name}={self.peer_url}"
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.client_port}"
        self.extra_args = list(extra_args)
        self.ssl_context: ssl.SSLContext | None = None
        if tls is not None:
            self.extra_args += [f"--cert-file={tls.cert}", f"--key-file={tls.key}"]
            self.ssl_context = ssl.create_default_context(cafile=str(tls.cert))
        self.process: ManagedProcess | None = None
        self.token: str | None = None  # set by enable_auth()
        if start:
            self.start()

    def start(self, timeout: float = 60.0, *, wait: bool = True) -> None:
        """Start etcd and (unless ``wait`` is false) wait until it reports healthy."""
        peer = self.peer_url
        self.process = ManagedProcess(
            [
                require_binary("etcd"),
                f"--name={self.name}",
                f"--data-dir={self.workdir / 'data'}",
                f"--listen-client-urls={self.url}",
                f"--advertise-client-urls={self.url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster={self.initial_cluster}",
                "--initial-cluster-token=sdbridge-test",
                # Short enough that a test sees progress notifications.
                "--experimental-watch-progress-notify-interval=1s",
                *self.extra_args,
            ],
            log_path=self.workdir / "etcd.log",
        )
        if wait:
            wait_until(self.healthy, timeout=timeout, what=f"etcd {self.name} healthy")

    def healthy(self) -> bool:
        """Whether etcd answers /health with a healthy status."""
        try:
            with urllib.request.urlopen(
                f"{self.url}/health", timeout=2, context=self.ssl_context
            ) as response:
                return bool(json.load(response).get("health") == "true")
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        """Stop etcd (SIGTERM, then SIGKILL)."""
        if self.process is not None:
            self.process.stop()
            self.process = None

    def restart(self) -> None:
        """Stop and start again on the same ports and data directory."""
        self.stop()
        self.start()

    def kill(self) -> None:
        """``kill -9`` the member: no shutdown, its data stays for :meth:`start`."""
        if self.process is not None:
            self.process.signal(signal.SIGKILL)
            self.process.stop()  # reaps it and closes the log
            self.process = None

    # --- the v3 JSON gateway ---------------------------------------------------------

    def call(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST ``body`` to a gateway path and return the decoded answer."""
        headers = {"Authorization": self.token} if self.token else {}
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=30, context=self.ssl_context) as response:
            answer: dict[str, Any] = json.load(response)
        return answer

    def put(self, key: str | bytes, value: str | bytes, *, lease: int = 0) -> int:
        """Put one key; return the new revision."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = lease
        return int(self.call("/v3/kv/put", body)["header"]["revision"])

    def put_many(self, items: Sequence[tuple[str, str | bytes]], *, batch: int = 128) -> int:
        """Put many keys in transactions of ``batch`` (etcd's default --max-txn-ops)."""
        revision = 0
        for start in range(0, len(items), batch):
            ops = [
                {"request_put": {"key": _b64(k), "value": _b64(v)}}
                for k, v in items[start : start + batch]
            ]
            answer = self.call("/v3/kv/txn", {"success": ops})
            revision = int(answer["header"]["revision"])
        return revision

    def delete(self, key: str | bytes, *, prefix: bool = False) -> int:
        """Delete one key (or every key under it); return the new revision."""
        raw = key.encode() if isinstance(key, str) else key
        body = {"key": _b64(raw)}
        if prefix:
            body["range_end"] = _b64(raw[:-1] + bytes([raw[-1] + 1]))
        return int(self.call("/v3/kv/deleterange", body)["header"]["revision"])

    def grant(self, ttl: int) -> int:
        """Grant a lease; return its ID."""
        return int(self.call("/v3/lease/grant", {"TTL": ttl})["ID"])

    def revoke(self, lease: int) -> None:
        """Revoke a lease, deleting its keys."""
        self.call("/v3/lease/revoke", {"ID": lease})

    def enable_auth(self, password: str) -> None:
        """Create ``root`` with ``password``, turn authentication on and log in as root."""
        self.call("/v3/auth/user/add", {"name": "root", "password": password})
        self.call("/v3/auth/user/grant", {"user": "root", "role": "root"})
        self.call("/v3/auth/enable", {})
        answer = self.call("/v3/auth/authenticate", {"name": "root", "password": password})
        self.token = str(answer["token"])

    def revision(self) -> int:
        """The current revision."""
        return int(self.call("/v3/kv/range", {"key": _b64("\0")})["header"]["revision"])

    def compact(self, revision: int | None = None) -> int:
        """Compact the history up to ``revision`` (default: the current one)."""
        revision = revision if revision is not None else self.revision()
        self.call("/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision


def _two_ports() -> tuple[int, int]:
    client = free_port()
    peer = free_port()
    while peer == client:
        peer = free_port()
    return client, peer


class EtcdCluster:
    """``size`` etcd members on loopback ports, one temporary data directory each.

    ``members[i].kill()`` is a ``kill -9``; ``members[i].start()`` brings it back on the
    same ports and data. ``endpoints`` are the client URLs, for ``registry.etcd`` or
    ``etcd_sd_configs``; :meth:`call` sends to the first healthy member.
    """

    def __init__(self, workdir: Path, size: int = 3) -> None:
        self.workdir = workdir
        names = [f"sdbridge-test-{i}" for i in range(size)]
        ports: list[tuple[int, int]] = []
        while len(ports) < size:
            pair = _two_ports()
            if not any(set(pair) & set(other) for other in ports):
                ports.append(pair)
        initial = ",".join(
            f"{name}=http://127.0.0.1:{peer}" for name, (_, peer) in zip(names, ports, strict=True)
        )
        self.members = [
            EtcdServer(workdir / name, name=name, ports=pair, initial_cluster=initial, start=False)
            for name, pair in zip(names, ports, strict=True)
        ]
        for member in self.members:  # all at once: none is healthy before a quorum
            member.start(wait=False)
        for member in self.members:
            wait_until(member.healthy, timeout=60, what=f"etcd {member.name} healthy")

    @property
    def endpoints(self) -> list[str]:
        """Every member's client URL."""
        return [member.url for member in self.members]

    def up(self) -> list[EtcdServer]:
        """The members that answer healthy now."""
        return [m for m in self.members if m.process is not None and m.healthy()]

    def call(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST to the gateway of the first healthy member."""
        for member in self.up():
            return member.call(path, body)
        raise AssertionError("no etcd member is healthy")

    def stop(self) -> None:
        """Stop every member."""
        for member in self.members:
            member.stop()


def etcd_cluster(size: int = 3) -> Iterator[EtcdCluster]:
    """A cluster in a temporary directory, removed with its data afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="sdbridge-etcd-cluster-"))
    cluster: EtcdCluster | None = None
    try:
        cluster = EtcdCluster(workdir, size)
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def etcd_cluster3() -> Iterator[EtcdCluster]:
    """A three-member etcd cluster of the test's own (members may be killed)."""
    yield from etcd_cluster(3)


def etcd_server(*, extra_args: Sequence[str] = (), tls: bool = False) -> Iterator[EtcdServer]:
    """An etcd in a temporary directory, removed with its data afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="sdbridge-etcd-"))
    material = self_signed(workdir, "etcd") if tls else None
    server = EtcdServer(workdir, extra_args=extra_args, tls=material)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def etcd() -> Iterator[EtcdServer]:
    """One etcd shared by the session; tests isolate themselves with unique prefixes."""
    yield from etcd_server()


@pytest.fixture
def etcd_private() -> Iterator[EtcdServer]:
    """An etcd of the test's own, for faults (restarts) that would disturb other tests."""
    yield from etcd_server()


@pytest.fixture
def etcd_tls() -> Iterator[EtcdServer]:
    """An etcd serving its client port over TLS with a self-signed certificate."""
    yield from etcd_server(tls=True)


# --- framework writers -----------------------------------------------------------------


def go_json(value: object) -> str:
    """JSON as Go's encoding/json.Marshal writes it (field order is the caller's dict order)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _go_map(values: Mapping[str, str] | None) -> dict[str, str] | None:
    return None if values is None else dict(sorted(values.items()))


def naming_endpoint(
    target: str, suffix: str, addr: str, metadata: object = None
) -> tuple[str, str]:
    """etcd's gRPC naming: endpoints.Manager.AddEndpoint(target+"/"+suffix, Endpoint{...}).

    The value is internal.Update{Op, Addr, Metadata}:
    https://github.com/etcd-io/etcd/blob/main/client/v3/naming/endpoints/internal/update.go
    written by endpointManager.Update with json.Marshal:
    https://github.com/etcd-io/etcd/blob/main/client/v3/naming/endpoints/endpoints_impl.go
    """
    return f"{target}/{suffix}", go_json({"Op": 0, "Addr": addr, "Metadata": metadata})


def kratos_instance(
    name: str,
    instance_id: str,
    endpoints: Sequence[str],
    *,
    version: str = "",
    metadata: Mapping[str, str] | None = None,
    namespace: str = "/microservices",
) -> tuple[str, str]:
    """Kratos etcd registry: key ``<namespace>/<name>/<id>``, value json.Marshal(ServiceInstance).

    https://github.com/go-kratos/kratos/blob/main/contrib/registry/etcd/registry.go (registerKey)
    https://github.com/go-kratos/kratos/blob/main/registry/registry.go (ServiceInstance)
    """
    value = {
        "id": instance_id,
        "name": name,
        "version": version,
        "metadata": _go_map(metadata),
        "endpoints": list(endpoints),
    }
    return f"{namespace}/{name}/{instance_id}", go_json(value)


def go_zero_instance(key: str, lease_id: int, address: str) -> tuple[str, str]:
    """go-zero discov.Publisher: ``<key>/<lease id>`` (makeEtcdKey, %d) holding the address.

    https://github.com/zeromicro/go-zero/blob/master/core/discov/publisher.go (register)
    https://github.com/zeromicro/go-zero/blob/master/core/discov/clients.go (makeEtcdKey)
    """
    return f"{key}/{lease_id}", address


def go_micro_instance(
    name: str,
    node_id: str,
    address: str,
    *,
    version: str = "latest",
    metadata: Mapping[str, str] | None = None,
    node_metadata: Mapping[str, str] | None = None,
) -> tuple[str, str]:
    """go-micro etcd registry: nodePath(service, node id) holding encode(Service with one node).

    https://github.com/micro/go-micro/blob/master/registry/etcd/etcd.go (nodePath, encode)
    https://github.com/micro/go-micro/blob/master/registry/registry.go (Service, Node, Endpoint)
    """
    endpoint = {
        "request": {"name": "Request", "type": "Request", "values": None},
        "response": {"name": "Response", "type": "Response", "values": None},
        "metadata": {"endpoint": "Greeter.Hello", "handler": "rpc", "method": "POST"},
        "name": "Greeter.Hello",
    }
    service = {
        "name": name,
        "version": version,
        "metadata": _go_map(metadata),
        "endpoints": [endpoint],
        "nodes": [{"metadata": _go_map(node_metadata), "id": node_id, "address": address}],
    }
    key = "/micro/registry/" + name.replace("/", "-") + "/" + node_id.replace("/", "-")
    return key, go_json(service)


def coredns_record(
    domain: str,
    host: str,
    port: int = 0,
    *,
    priority: int = 0,
    weight: int = 0,
    text: str = "",
    ttl: int = 0,
    group: str = "",
    path: str = "skydns",
) -> tuple[str, str]:
    """CoreDNS etcd plugin: msg.Path(domain) holding msg.Service (every field omitempty).

    https://github.com/coredns/coredns/blob/master/plugin/etcd/msg/path.go (Path)
    https://github.com/coredns/coredns/blob/master/plugin/etcd/msg/service.go (Service)
    """
    labels = [label for label in domain.rstrip(".").split(".") if label]
    key = "/" + path + "/" + "/".join(reversed(labels))
    fields: list[tuple[str, object]] = [
        ("host", host),
        ("port", port),
        ("priority", priority),
        ("weight", weight),
        ("text", text),
        ("ttl", ttl),
        ("group", group),
    ]
    return key, go_json({name: value for name, value in fields if value})
