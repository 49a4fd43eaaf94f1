"""``zookeeper_sd_configs``: read the registries Java frameworks keep in ZooKeeper.

Three layouts, each read exactly as its framework writes it:

* ``curator``: Apache Curator service discovery (also Spring Cloud Zookeeper and Dubbo 3
  application-level registration). ``<path>/<service>/<id>`` holds a ``ServiceInstance``
  as JSON, ``{"name","id","address","port","sslPort","payload","registrationTimeUTC",
  "serviceType","uriSpec"[,"enabled"]}``; ``address`` may be a host name.
  Source: apache/curator ``curator-x-discovery/.../ServiceInstance.java`` and
  ``details/JsonInstanceSerializer.java``.
* ``dubbo``: Dubbo's interface-level ``ZookeeperRegistry``. The provider URL is the
  znode *name*, encoded with ``URL.encode`` (Java's form encoding), under
  ``<root>/<URL-encoded interface>/providers/``; ``<root>`` is ``/dubbo`` unless the
  registry sets a group. Source: apache/dubbo ``ZookeeperRegistry#toUrlPath``.
* ``serverset``: Twitter/Finagle serversets, labelled exactly like Prometheus's
  ``serverset_sd_configs`` (prometheus/prometheus ``discovery/zookeeper/zookeeper.go``):
  every znode under a path whose data is a serverset member becomes a target.

Watches. On ZooKeeper 3.6+ each path gets one persistent recursive watch (``addWatch``):
it stays armed, covers the whole subtree, and each event names the znode and what
happened to it, so a Dubbo registration costs no read and a Curator update one. kazoo has
no ``addWatch`` yet (python-zk/kazoo#715 is unmerged), so sdbridge queues the request
through kazoo's own request path and reads the events after kazoo's event reader; both
are private to kazoo but unchanged through 2.x, and are checked before use. Without them,
on a server before 3.6, or with ``persistent_watches: false``, sdbridge uses one-shot
child and data watches instead, re-armed by the very read that answers each event, so no
change can slip between an event and the re-read. Either way only what a layout needs is
read (for Dubbo, ``providers`` and not ``consumers``). Reads that set no watch go in
``multiRead`` requests (3.6+, also built here), a few hundred reads per request.

Sessions. kazoo runs its own threads; its callbacks only hop back into the event loop
with ``loop.call_soon_threadsafe``, and every request is awaited as an asyncio future,
so the loop never blocks. Any connection loss (SUSPENDED) or session expiry (LOST) is
followed, once connected again, by a full resync of every path; nothing is sent until
it completes, and then only the groups that changed (:class:`GroupDiff`). While
disconnected the last sent targets stay.

Bad znodes are skipped one by one with an error naming the znode, counted in
``sdbridge_invalid_targets_total``; a znode that cannot be read at all fails the sync.
With ``watch: false`` the mechanism polls instead, every ``refresh_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import unquote_to_bytes

import orjson
from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import EXCEPTIONS, NoNodeError, UnimplementedError
from kazoo.protocol.serialization import (
    MultiHeader,
    Watch,
    int_struct,
    multiheader_struct,
    read_buffer,
    read_string,
    stat_struct,
    write_string,
)
from kazoo.protocol.states import EventType, WatchedEvent, ZnodeStat
from pydantic import Field, SecretStr, field_validator

from ..durations import Duration
from ..errors import BackendError, InvalidTargetError, SdbridgeError
from ..model import (
    ADDRESS_LABEL,
    LabelSet,
    TargetGroup,
    is_valid_address,
    join_host_port,
    sanitize_label_name,
)
from . import register
from ._http import TLSFiles
from .base import (
    Backoff,
    BaseDiscoverer,
    DiscoveryContext,
    GroupDiff,
    MechanismConfig,
    RefreshConfig,
    RefreshDiscoverer,
    Send,
)

# --- labels ------------------------------------------------------------------------------

META = "__meta_zookeeper_"
PATH_LABEL = META + "path"  # the znode of the target (dubbo and curator layouts)

# dubbo: from the provider URL.
DUBBO = META + "dubbo_"
DUBBO_PROTOCOL = DUBBO + "protocol"  # URL scheme: dubbo, tri, rest, ...
DUBBO_PATH = DUBBO + "path"  # URL path, usually the interface name
DUBBO_INTERFACE = DUBBO + "interface"  # interface= parameter, else the URL path
DUBBO_APPLICATION = DUBBO + "application"
DUBBO_VERSION = DUBBO + "version"
DUBBO_GROUP = DUBBO + "group"
DUBBO_SIDE = DUBBO + "side"
DUBBO_PARAM_PREFIX = DUBBO + "param_"  # every URL parameter, name sanitized

# curator: from the ServiceInstance JSON.
CURATOR = META + "curator_"
CURATOR_NAME = CURATOR + "name"
CURATOR_ID = CURATOR + "id"
CURATOR_ADDRESS = CURATOR + "address"
CURATOR_PORT = CURATOR + "port"
CURATOR_SSL_PORT = CURATOR + "ssl_port"
CURATOR_SERVICE_TYPE = CURATOR + "service_type"  # DYNAMIC, STATIC, PERMANENT, ...
CURATOR_REGISTRATION_TIME = CURATOR + "registration_time_utc"  # epoch milliseconds
CURATOR_ENABLED = CURATOR + "enabled"  # "true" unless the instance says otherwise
CURATOR_URI_SPEC = CURATOR + "uri_spec"  # the template, e.g. {scheme}://{address}:{port}
CURATOR_PAYLOAD_CLASS = CURATOR + "payload_class"  # Jackson's "@class" of the payload
CURATOR_PAYLOAD_PREFIX = CURATOR + "payload_"  # scalar payload fields, name sanitized
CURATOR_METADATA_PREFIX = CURATOR + "payload_metadata_"  # payload.metadata entries

# serverset: identical to Prometheus's serverset_sd_configs.
SERVERSET = "__meta_serverset_"
SERVERSET_PATH = SERVERSET + "path"
SERVERSET_ENDPOINT_PREFIX = SERVERSET + "endpoint"
SERVERSET_STATUS = SERVERSET + "status"
SERVERSET_SHARD = SERVERSET + "shard"

Layout = Literal["curator", "dubbo", "serverset"]

# kazoo logs every reconnection attempt; sdbridge logs each state change once instead.
# Its messages go to this logger, which shows only errors unless configured otherwise.
KAZOO_LOG = logging.getLogger("sdbridge.discovery.zookeeper.kazoo")
KAZOO_LOG.setLevel(logging.ERROR)

# --- configuration -----------------------------------------------------------------------


class ZookeeperTLSConfig(TLSFiles):
    """TLS to the ZooKeeper servers (their ``secureClientPort``)."""

    key_password: SecretStr | None = Field(None, description="password of key_file")


class ZookeeperDigestAuth(MechanismConfig):
    """ZooKeeper ``digest`` authentication, for znodes whose ACLs need it."""

    username: str = Field(min_length=1)
    password: SecretStr


class ZookeeperSDConfig(RefreshConfig):
    """One ``zookeeper_sd_configs`` entry."""

    servers: list[str] = Field(min_length=1, description="host:port of each server")
    paths: list[str] = Field(min_length=1, description="base znodes, one tree each")
    layout: Layout = Field(description="curator, dubbo or serverset")
    timeout: Duration = Field(10.0, description="session timeout")
    watch: bool = Field(True, description="follow watches; false polls every refresh_interval")
    persistent_watches: bool = Field(
        True, description="use persistent recursive watches where the server has them (3.6+)"
    )
    digest_auth: ZookeeperDigestAuth | None = None
    tls_config: ZookeeperTLSConfig | None = None

    @field_validator("timeout")
    @classmethod
    def _session_timeout(cls, value: float) -> float:
        # The protocol carries it as an int32 of milliseconds.
        if not 0 < value <= 2**31 // 1000:
            raise ValueError("timeout must be greater than 0 and at most 24d")
        return value

    @field_validator("servers")
    @classmethod
    def _servers(cls, value: list[str]) -> list[str]:
        for server in value:
            if not server or "/" in server or "," in server:
                raise ValueError(f"server {server!r} must be host:port (one per list entry)")
        return value

    @field_validator("paths")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/") or (path != "/" and path.endswith("/")):
                raise ValueError(f"path {path!r} must start with '/' and not end with one")
        for path in value:
            for other in value:
                if other != path and _is_under(other, path):
                    raise ValueError(f"path {other!r} lies under {path!r}; list only one")
        if len(set(value)) != len(value):
            raise ValueError("paths must be distinct")
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("timeout must be greater than 0")
        return value


def _is_under(path: str, base: str) -> bool:
    return path.startswith(base if base == "/" else base + "/")


def _join(parent: str, child: str) -> str:
    return parent + child if parent == "/" else f"{parent}/{child}"


def _parent(path: str) -> str:
    return path.rpartition("/")[0] or "/"


# --- layouts -----------------------------------------------------------------------------


def _scalar(value: object) -> str | None:
    """A JSON scalar as a label value (booleans as Go and Java print them), else None."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return None


def _port(value: object, what: str, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTargetError(f"{what} must be an integer, got {value!r}")
    return value


def parse_serverset_member(data: bytes, path: str) -> LabelSet:
    """Labels of a serverset member, as Prometheus's ``parseServersetMember`` makes them.

    Go's ``encoding/json`` matches field names case-insensitively, so this does too.
    """
    try:
        member = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidTargetError(f"znode {path}: not a serverset member: {exc}") from None
    if member is None:  # Go decodes JSON null into an empty struct
        member = {}
    if not isinstance(member, dict):
        raise InvalidTargetError(f"znode {path}: serverset member must be a JSON object")
    fields = {str(k).lower(): v for k, v in member.items()}
    endpoint = _serverset_endpoint(fields.get("serviceendpoint"), f"znode {path}: serviceEndpoint")
    status = fields.get("status")
    if status is not None and not isinstance(status, str):
        raise InvalidTargetError(f"znode {path}: status must be a string, got {status!r}")
    shard = _port(fields.get("shard", 0), f"znode {path}: shard", allow_none=True) or 0
    host, port = endpoint
    labels = {
        SERVERSET_PATH: path,
        ADDRESS_LABEL: join_host_port(host, port),
        SERVERSET_ENDPOINT_PREFIX + "_host": host,
        SERVERSET_ENDPOINT_PREFIX + "_port": str(port),
        SERVERSET_STATUS: status or "",
        SERVERSET_SHARD: str(shard),
    }
    additional = fields.get("additionalendpoints") or {}
    if not isinstance(additional, dict):
        raise InvalidTargetError(f"znode {path}: additionalEndpoints must be a JSON object")
    for name, value in additional.items():
        extra_host, extra_port = _serverset_endpoint(value, f"znode {path}: endpoint {name!r}")
        clean = sanitize_label_name(name)
        labels[f"{SERVERSET_ENDPOINT_PREFIX}_host_{clean}"] = extra_host
        labels[f"{SERVERSET_ENDPOINT_PREFIX}_port_{clean}"] = str(extra_port)
    return labels


def _serverset_endpoint(value: object, what: str) -> tuple[str, int]:
    if value is None:
        return "", 0
    if not isinstance(value, dict):
        raise InvalidTargetError(f"{what} must be a JSON object")
    fields = {str(k).lower(): v for k, v in value.items()}
    host = fields.get("host") or ""
    if not isinstance(host, str):
        raise InvalidTargetError(f"{what}: host must be a string, got {host!r}")
    port = _port(fields.get("port"), f"{what}: port", allow_none=True) or 0
    return host, port


def _uri_spec(value: object) -> str:
    """Curator's ``UriSpec`` as its template string, e.g. ``{scheme}://{address}:{port}``."""
    if not isinstance(value, dict) or not isinstance(value.get("parts"), list):
        return ""
    text = []
    for part in value["parts"]:
        if isinstance(part, dict) and isinstance(part.get("value"), str):
            text.append("{" + part["value"] + "}" if part.get("variable") else part["value"])
    return "".join(text)


def parse_curator_instance(data: bytes, path: str) -> LabelSet:
    """Labels of a Curator ``ServiceInstance``; the address may be a host name."""
    if not data:
        raise InvalidTargetError(f"znode {path}: empty, expected a Curator ServiceInstance")
    try:
        instance = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidTargetError(f"znode {path}: not a Curator ServiceInstance: {exc}") from None
    if not isinstance(instance, dict):
        raise InvalidTargetError(f"znode {path}: a Curator ServiceInstance is a JSON object")
    address = instance.get("address")
    if not isinstance(address, str) or not address.strip():
        raise InvalidTargetError(f"znode {path}: no address in the ServiceInstance")
    address = address.strip()
    port = _port(instance.get("port"), f"znode {path}: port", allow_none=True)
    ssl_port = _port(instance.get("sslPort"), f"znode {path}: sslPort", allow_none=True)
    chosen = port if port is not None else ssl_port
    if chosen is None:
        raise InvalidTargetError(f"znode {path}: the ServiceInstance has no port nor sslPort")
    enabled = instance.get("enabled", True)
    labels = {
        ADDRESS_LABEL: join_host_port(address, chosen),
        PATH_LABEL: path,
        CURATOR_NAME: _scalar(instance.get("name")) or "",
        CURATOR_ID: _scalar(instance.get("id")) or "",
        CURATOR_ADDRESS: address,
        CURATOR_PORT: "" if port is None else str(port),
        CURATOR_SSL_PORT: "" if ssl_port is None else str(ssl_port),
        CURATOR_SERVICE_TYPE: _scalar(instance.get("serviceType")) or "",
        CURATOR_REGISTRATION_TIME: _scalar(instance.get("registrationTimeUTC")) or "",
        CURATOR_ENABLED: _scalar(enabled if enabled is not None else True) or "",
        CURATOR_URI_SPEC: _uri_spec(instance.get("uriSpec")),
    }
    payload = instance.get("payload")
    if isinstance(payload, dict):
        for key, value in sorted(payload.items()):
            if key == "@class":
                labels[CURATOR_PAYLOAD_CLASS] = _scalar(value) or ""
            elif key == "metadata" and isinstance(value, dict):
                for meta_key, meta_value in sorted(value.items()):
                    text = _scalar(meta_value)
                    if text is not None:
                        labels[CURATOR_METADATA_PREFIX + sanitize_label_name(meta_key)] = text
            elif (text := _scalar(value)) is not None:
                labels[CURATOR_PAYLOAD_PREFIX + sanitize_label_name(key)] = text
    return labels


_PERCENT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def java_url_decode(text: str, what: str) -> str:
    """Decode like Java's ``URLDecoder.decode(s, "UTF-8")`` (Dubbo's ``URL.decode``).

    ``+`` is a space; a malformed ``%`` escape or bytes that are not UTF-8 are errors, as
    in Java (which throws), instead of being passed through as Python's ``unquote`` does.
    """
    if _PERCENT_RE.search(text):
        raise InvalidTargetError(f"{what}: malformed %-escape in {text!r}")
    raw = unquote_to_bytes(text.replace("+", " "))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidTargetError(f"{what}: %-escapes that are not UTF-8 in {text!r}") from None


def _maybe_decode_value(value: str) -> str:
    # dubbo-go query-escapes parameter values before it escapes the whole URL, so they
    # arrive escaped once more; Java Dubbo writes them raw. Decode only clean escapes.
    if "%" not in value or _PERCENT_RE.search(value):
        return value
    try:
        return unquote_to_bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return value


def parse_dubbo_provider(name: str, path: str) -> LabelSet:
    """Labels of a Dubbo provider from its znode name (a URL-encoded provider URL)."""
    what = f"znode {path}"
    url = java_url_decode(name, what)
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise InvalidTargetError(f"{what}: not a Dubbo provider URL: {url!r}")
    rest, _, query = rest.partition("?")
    hostport, _, url_path = rest.partition("/")
    hostport = hostport.rpartition("@")[2]  # drop user:password@
    host, port = _split_host_port(hostport, what)
    params: dict[str, str] = {}
    for part in query.split("&"):
        if not part:
            continue
        key, eq, value = part.partition("=")
        key = key.strip()
        if not key:
            continue
        # Dubbo's URL.valueOf reads a bare "key" as key=key.
        params[key] = _maybe_decode_value(value) if eq else key
    labels = {
        ADDRESS_LABEL: join_host_port(host, port),
        PATH_LABEL: path,
        DUBBO_PROTOCOL: scheme,
        DUBBO_PATH: url_path,
        DUBBO_INTERFACE: params.get("interface", url_path),
        DUBBO_APPLICATION: params.get("application", ""),
        DUBBO_VERSION: params.get("version", ""),
        DUBBO_GROUP: params.get("group", ""),
        DUBBO_SIDE: params.get("side", ""),
    }
    for key in sorted(params):
        labels[DUBBO_PARAM_PREFIX + sanitize_label_name(key)] = params[key]
    return labels


def _split_host_port(hostport: str, what: str) -> tuple[str, int]:
    if hostport.startswith("["):
        host, bracket, port_text = hostport[1:].partition("]")
        port_text = port_text.removeprefix(":") if bracket else ""
    else:
        host, _, port_text = hostport.rpartition(":")
        if ":" in host:  # a bare IPv6 address: the port is after the last colon
            with contextlib.suppress(ValueError):
                ipaddress.IPv6Address(hostport)
                host, port_text = hostport, ""
    if not host or not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise InvalidTargetError(f"{what}: provider address {hostport!r} is not host:port")
    return host, int(port_text)


class _Shape(Protocol):
    """Which znodes a layout reads, and how a znode becomes a target."""

    def lists_children(self, depth: int) -> bool: ...
    def descends_into(self, depth: int, name: str) -> bool: ...
    def reads_data(self, depth: int) -> bool: ...
    def parse(self, path: str, depth: int, data: bytes | None) -> LabelSet | None: ...


class _Dubbo:
    # <root>/<interface>/providers/<url>: depth 0, 1, 2, 3.
    def lists_children(self, depth: int) -> bool:
        return depth < 3

    def descends_into(self, depth: int, name: str) -> bool:
        return depth != 2 or name == "providers"

    def reads_data(self, depth: int) -> bool:
        return False

    def parse(self, path: str, depth: int, data: bytes | None) -> LabelSet | None:
        if depth != 3:
            return None
        return parse_dubbo_provider(path.rpartition("/")[2], path)


class _Curator:
    # <base>/<service>/<id>: depth 0, 1, 2.
    def lists_children(self, depth: int) -> bool:
        return depth < 2

    def descends_into(self, depth: int, name: str) -> bool:
        return True

    def reads_data(self, depth: int) -> bool:
        return depth == 2

    def parse(self, path: str, depth: int, data: bytes | None) -> LabelSet | None:
        if depth != 2:
            return None
        return parse_curator_instance(data or b"", path)


class _Serverset:
    # Any depth, like Prometheus's tree cache: every znode with member data is a target.
    def lists_children(self, depth: int) -> bool:
        return True

    def descends_into(self, depth: int, name: str) -> bool:
        return True

    def reads_data(self, depth: int) -> bool:
        return True

    def parse(self, path: str, depth: int, data: bytes | None) -> LabelSet | None:
        if not data:  # an inner znode (Prometheus drops these silently, so do we)
            return None
        return parse_serverset_member(data, path)


SHAPES: dict[str, _Shape] = {"dubbo": _Dubbo(), "curator": _Curator(), "serverset": _Serverset()}

# --- the kazoo session, bridged to asyncio -----------------------------------------------

_Request = tuple[Callable[..., Any], tuple[Any, ...], str]  # method, arguments, description
# Batches above this many requests are handed to kazoo from a worker thread.
_SUBMIT_INLINE_MAX = 32


class _Gone(Exception):
    """The znode does not exist (any more)."""


# ZooKeeper 3.6+ ``addWatch`` (opcode 106, ``AddWatchRequest{path, mode}``), which kazoo
# does not offer yet (python-zk/kazoo#715). Mode 1 is PERSISTENT_RECURSIVE: the watch stays
# after firing and covers the whole subtree, with NodeCreated, NodeDeleted and
# NodeDataChanged events for every znode under the path (and no NodeChildrenChanged).
_ADD_WATCH_OPCODE = 106
_PERSISTENT_RECURSIVE = 1
# Event types of the ZooKeeper protocol (Watcher.Event.EventType).
_NODE_CREATED, _NODE_DELETED, _NODE_DATA_CHANGED = 1, 2, 3


class _AddWatch:
    """An ``addWatch`` request in the shape kazoo's connection sends and answers."""

    type = _ADD_WATCH_OPCODE

    def __init__(self, path: str, mode: int) -> None:
        self.path = path
        self.mode = mode

    def serialize(self) -> bytearray:
        """The request body: the path, then the mode."""
        body = bytearray(write_string(self.path))
        body.extend(int_struct.pack(self.mode))
        return body

    @classmethod
    def deserialize(cls, buffer: bytes, offset: int) -> bool:
        """The reply has no body."""
        return True


# ZooKeeper 3.6+ ``multiRead`` (opcode 22): many getData/getChildren in one request, each
# answered on its own (an error for one read does not fail the others). Reads without
# watches (resyncs under persistent watches, polls) use it: a few requests instead of
# one per znode. kazoo sends only write transactions, so the request is built here.
_MULTI_READ_OPCODE = 22
_GET_DATA, _GET_CHILDREN, _ERROR_RESULT = 4, 8, -1
_MULTI_READ_MAX = 500  # reads per request: with ~1 KB per instance, ~0.5 MB per answer


class _MultiRead:
    """A ``multiRead`` request of (op type, path) reads, none of which sets a watch."""

    type = _MULTI_READ_OPCODE

    def __init__(self, ops: list[tuple[int, str]]) -> None:
        self.ops = ops

    def serialize(self) -> bytearray:
        """``MultiOperationRecord``: a header and a request per op, then a done header."""
        body = bytearray()
        for op_type, path in self.ops:
            body.extend(MultiHeader(op_type, False, -1).serialize())
            body.extend(write_string(path))
            body.append(0)  # watch: false
        body.extend(multiheader_struct.pack(-1, True, -1))
        return body

    @classmethod
    def deserialize(cls, buffer: bytes, offset: int) -> list[Any]:
        """``MultiResponse``: (data, stat), a list of children, or the op's exception."""
        results: list[Any] = []
        header, offset = MultiHeader.deserialize(buffer, offset)
        while not header.done:
            if header.type == _GET_DATA:
                data, offset = read_buffer(buffer, offset)
                stat = ZnodeStat._make(stat_struct.unpack_from(buffer, offset))
                offset += stat_struct.size
                results.append((data, stat))
            elif header.type == _GET_CHILDREN:
                count = int_struct.unpack_from(buffer, offset)[0]
                offset += int_struct.size
                children = []
                for _ in range(max(count, 0)):
                    child, offset = read_string(buffer, offset)
                    children.append(child)
                results.append(children)
            elif header.type == _ERROR_RESULT:
                code = int_struct.unpack_from(buffer, offset)[0]
                offset += int_struct.size
                results.append(EXCEPTIONS[code]())
            else:
                raise ValueError(f"unexpected multiRead result type {header.type}")
            header, offset = MultiHeader.deserialize(buffer, offset)
        return results


def _supports_add_watch(client: Any) -> bool:
    """Whether kazoo's internals are the ones the addWatch bridge relies on (2.x)."""
    connection = getattr(client, "_connection", None)
    return callable(getattr(client, "_call", None)) and callable(
        getattr(connection, "_read_watch_event", None)
    )


class _Session:
    """A kazoo client whose state changes and results arrive in the event loop."""

    def __init__(self, config: ZookeeperSDConfig, context: DiscoveryContext) -> None:
        self.loop = asyncio.get_running_loop()
        self.context = context
        self.hosts = ",".join(config.servers)
        self.connected = asyncio.Event()
        self.changed = asyncio.Event()  # a state change or a watch event happened
        self._resync_needed = True
        self.state: str | None = None
        self.closing = False
        self.client = KazooClient(hosts=self.hosts, **_client_options(config))
        self.client.add_listener(self._listener)
        # Where persistent-watch events go (kazoo thread), once a tree subscribes.
        self.event_sink: Callable[[int, str], None] | None = None
        self.persistent = config.persistent_watches and _supports_add_watch(self.client)
        self.multi_read = _supports_add_watch(self.client)  # the same kazoo internals
        if self.persistent:
            self._hook_watch_events()

    def _hook_watch_events(self) -> None:
        # kazoo dispatches an event only to the one-shot watchers it registered itself, so
        # events of a persistent watch would be dropped: see each event after kazoo does.
        connection = self.client._connection
        original = connection._read_watch_event

        def read_watch_event(buffer: bytes, offset: int) -> Any:
            result = original(buffer, offset)
            sink = self.event_sink
            if sink is not None:
                event, _ = Watch.deserialize(buffer, offset)
                sink(event.type, event.path)
            return result

        connection._read_watch_event = read_watch_event

    def read_many(self, ops: list[tuple[int, str]]) -> Any:
        """Send one ``multiRead`` of ``ops``; return kazoo's async result."""
        result = self.client.handler.async_result()
        self.client._call(_MultiRead(ops), result)
        return result

    def add_watch(self, path: str) -> Any:
        """Send ``addWatch(path, PERSISTENT_RECURSIVE)``; return kazoo's async result."""
        result = self.client.handler.async_result()
        self.client._call(_AddWatch(path, _PERSISTENT_RECURSIVE), result)
        return result

    def must_resync(self) -> bool:
        """Whether the connection dropped since :meth:`resyncing` was called."""
        return self._resync_needed

    def resyncing(self) -> None:
        """Note that a full resync starts now."""
        self._resync_needed = False

    def start(self) -> None:
        """Start connecting in kazoo's threads; returns at once."""
        self.client.start_async()

    async def close(self) -> None:
        """Close the session (off the loop: kazoo joins its threads)."""
        self.closing = True
        await asyncio.to_thread(_stop_client, self.client)

    def _listener(self, state: str) -> None:
        # kazoo's connection thread: hop into the loop, never block here.
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self.loop.call_soon_threadsafe(self._on_state, state)

    def _on_state(self, state: str) -> None:
        if self.closing:
            return
        previous, self.state = self.state, state
        log = self.context.logger
        if state == KazooState.CONNECTED:
            session = self.client.client_id[0] if self.client.client_id else 0
            log.info("connected to ZooKeeper %s (session 0x%x)", self.hosts, session)
            self.connected.set()
        else:
            self.connected.clear()
            self._resync_needed = True
            if state == KazooState.LOST:
                log.warning("ZooKeeper session expired; a new session will resync everything")
            elif previous != state:
                log.warning(
                    "lost the connection to ZooKeeper %s; keeping the last targets", self.hosts
                )
        self.changed.set()

    async def call(self, method: Callable[..., Any], *args: Any, what: str) -> Any:
        """Run one kazoo ``*_async`` method; raise :class:`_Gone` or :class:`BackendError`."""
        (result,) = await self.batch([(method, args, what)])
        if isinstance(result, BaseException):
            raise result
        return result

    async def batch(self, requests: list[_Request]) -> list[Any]:
        """Run kazoo ``*_async`` requests, pipelined; return each result or its error.

        Errors are :class:`_Gone` (no such znode) or :class:`BackendError`. Submitting a
        request costs kazoo a wake-up write and a GIL hand-off to its thread, so large
        batches are submitted from a worker thread: the event loop never waits on kazoo.
        """
        loop = self.loop
        futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in requests]
        for future in futures:
            # If the caller is cancelled mid-batch, late errors must not be reported as
            # "never retrieved": mark them seen.
            future.add_done_callback(_consume)

        def resolve(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
            if not future.done():
                if error is None:
                    future.set_result(value)
                else:
                    future.set_exception(error)

        def completer(future: asyncio.Future[Any]) -> Callable[[Any], None]:
            def completed(result: Any) -> None:  # kazoo's callback thread
                error = result.exception
                value = None if error is not None else result.value
                with contextlib.suppress(RuntimeError):  # the loop is closing
                    loop.call_soon_threadsafe(resolve, future, value, error)

            return completed

        def submit() -> None:
            for (method, args, _), future in zip(requests, futures, strict=True):
                try:
                    method(*args).rawlink(completer(future))
                except Exception as exc:
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(resolve, future, None, exc)

        self.context.count_request(len(requests))
        if len(requests) > _SUBMIT_INLINE_MAX:
            await asyncio.to_thread(submit)
        else:
            submit()
        results = await asyncio.gather(*futures, return_exceptions=True)
        return [self.wrap(r, what) for r, (_, _, what) in zip(results, requests, strict=True)]

    def wrap(self, result: Any, what: str) -> Any:
        """A kazoo result as sdbridge sees it: a value, :class:`_Gone` or BackendError."""
        if isinstance(result, NoNodeError):
            return _Gone(what)
        if isinstance(result, Exception) and not isinstance(result, SdbridgeError | _Gone):
            # Kazoo's errors, and any other (an answer that does not parse) alike.
            error = BackendError(f"ZooKeeper {self.hosts}: {what}: {_describe(result)}")
            error.__cause__ = result
            return error
        return result


_VERB = {_GET_DATA: "reading", _GET_CHILDREN: "listing"}


def _unimplemented(reply: Any) -> bool:
    return isinstance(reply, BackendError) and isinstance(reply.__cause__, UnimplementedError)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _stop_client(client: KazooClient) -> None:
    with contextlib.suppress(Exception):
        client.stop()
    with contextlib.suppress(Exception):
        client.close()


def _client_options(config: ZookeeperSDConfig) -> dict[str, Any]:
    options: dict[str, Any] = {
        "timeout": config.timeout,
        "logger": KAZOO_LOG,
        # Reconnect forever; sdbridge reports the outage and keeps the last targets.
        "connection_retry": {"max_tries": -1, "delay": 0.2, "backoff": 2, "max_delay": 5.0},
    }
    if config.digest_auth is not None:
        secret = config.digest_auth.password.get_secret_value()
        options["auth_data"] = [("digest", f"{config.digest_auth.username}:{secret}")]
    tls = config.tls_config
    if tls is not None:
        options["use_ssl"] = True
        options["verify_certs"] = not tls.insecure_skip_verify
        if tls.ca_file is not None:
            options["ca"] = str(tls.ca_file)
        if tls.cert_file is not None:
            options["certfile"] = str(tls.cert_file)
        if tls.key_file is not None:
            options["keyfile"] = str(tls.key_file)
        if tls.key_password is not None:
            options["keyfile_password"] = tls.key_password.get_secret_value()
    return options


# --- the mirrored tree -------------------------------------------------------------------


@dataclass(slots=True)
class _Node:
    depth: int
    exists: bool = True
    data: bytes | None = None
    children: frozenset[str] = frozenset()
    group: TargetGroup | None = None


@dataclass
class _Tree:
    """The znodes a layout needs under each path, with their target groups."""

    session: _Session
    shape: _Shape
    roots: list[str]
    context: DiscoveryContext
    nodes: dict[str, _Node] = field(default_factory=dict)
    # Events of one-shot watches: (kind, path); each is answered by a read of the path.
    pending: set[tuple[str, str]] = field(default_factory=set)
    # Events of the persistent recursive watches: path -> type of its latest event.
    recursive: dict[str, int] = field(default_factory=dict)
    persistent: bool = False

    def __post_init__(self) -> None:
        self.persistent = getattr(self.session, "persistent", False)
        if self.persistent:
            self.session.event_sink = self._recursive_fired

    # Watchers are bound methods: kazoo keeps them in sets, so re-arming one is idempotent.
    def data_watcher(self, event: WatchedEvent) -> None:
        """kazoo thread: a data (or exists) watch fired."""
        self._fired("data", event)

    def child_watcher(self, event: WatchedEvent) -> None:
        """kazoo thread: a child watch fired."""
        self._fired("children", event)

    def _fired(self, kind: str, event: WatchedEvent) -> None:
        if event.type == EventType.NONE or event.path is None:
            return  # a session event; the state listener handles those
        with contextlib.suppress(RuntimeError):
            self.session.loop.call_soon_threadsafe(self._note, kind, event.path)

    def _note(self, kind: str, path: str) -> None:
        self.pending.add((kind, path))
        self.session.changed.set()

    def _recursive_fired(self, event_type: int, path: str) -> None:
        """kazoo thread: any watch event; those of the persistent watches matter here."""
        if event_type in (_NODE_CREATED, _NODE_DELETED, _NODE_DATA_CHANGED):
            with contextlib.suppress(RuntimeError):
                self.session.loop.call_soon_threadsafe(self._note_recursive, path, event_type)

    def _note_recursive(self, path: str, event_type: int) -> None:
        # Only the latest event of a path matters, in the order of the latest events.
        self.recursive.pop(path, None)
        self.recursive[path] = event_type
        self.session.changed.set()

    def pending_count(self) -> int:
        """How many watch events wait to be applied."""
        return len(self.pending) + len(self.recursive)

    def take_pending(self) -> tuple[set[tuple[str, str]], dict[str, int]] | None:
        """The waiting events, or None; they are applied with :meth:`apply`."""
        if not self.pending and not self.recursive:
            return None
        taken = (self.pending, self.recursive)
        self.pending, self.recursive = set(), {}
        return taken

    def groups(self) -> list[TargetGroup]:
        """The current target groups, one per target znode."""
        return [n.group for n in self.nodes.values() if n.group is not None]

    async def resync(self, *, watch: bool) -> None:
        """Read every path again (re-arming watches) and replace the tree; raise on failure.

        With persistent watches, each path's watch is added before it is read, so a change
        is either in the read or in an event that follows it.
        """
        self.pending.clear()
        self.recursive.clear()
        one_shot = watch and not (self.persistent and await self._add_watches())
        nodes = await self._fetch([(root, 0) for root in self.roots], watch=one_shot)
        old = self.nodes
        for path, node in nodes.items():
            self._parse(path, node, old.get(path))
        self.nodes = nodes

    async def _add_watches(self) -> bool:
        """Add a persistent recursive watch on every path; False if the server has none."""
        session = self.session
        requests: list[_Request] = [(session.add_watch, (r,), f"watching {r}") for r in self.roots]
        for result in await session.batch(requests):
            if _unimplemented(result):
                self.context.logger.warning(
                    "ZooKeeper %s has no persistent watches (it predates 3.6); "
                    "using one-shot watches",
                    session.hosts,
                )
                self.persistent = False
                session.event_sink = None
                return False
            if isinstance(result, BaseException):
                raise result
        return True

    async def apply(self, events: tuple[set[tuple[str, str]], dict[str, int]]) -> bool:
        """Apply watch events from :meth:`take_pending`; return whether any target changed."""
        one_shot, recursive = events
        changed = await self._apply_one_shot(one_shot) if one_shot else False
        if recursive:
            changed |= await self._apply_recursive(recursive)
        return changed

    async def _apply_recursive(self, events: dict[str, int]) -> bool:
        """Apply persistent-watch events: the event names the znode and what happened.

        Reads happen after all events of the batch are sorted out, so they see a state at
        least as new as the last event; anything later comes as another event.
        """
        changed = False
        reads: list[str] = []
        fetches: dict[str, int] = {}
        for path, event_type in events.items():
            place = self._locate(path)
            if place is None:
                continue  # outside what the layout reads (e.g. Dubbo consumers)
            depth, missing = place
            if event_type == _NODE_DELETED:
                for start in [f for f in fetches if f == path or _is_under(f, path)]:
                    del fetches[start]
                changed |= self._remove(path)
            elif missing is not None:
                fetches.setdefault(*missing)
            elif self.shape.reads_data(depth):
                reads.append(path)
        answers = await self._read_all([(_GET_DATA, p) for p in reads], watch=False)
        for path, result in zip(reads, answers, strict=True):
            node = self.nodes.get(path)
            if node is None:
                continue
            if isinstance(result, _Gone):
                changed |= self._remove(path)
            elif isinstance(result, BaseException):
                raise result
            elif result[0] != node.data:
                old_group = node.group
                node.data, node.group = result[0], None
                self._parse(path, node, None)
                changed |= node.group != old_group
        if fetches:
            subtree = await self._fetch(list(fetches.items()), watch=False)
            for start, depth in fetches.items():
                previous = self.nodes.get(start)  # None, or an absent base path
                changed |= self._drop(start)
                if start not in subtree:
                    continue  # gone again; its deletion event follows
                self._parse(start, subtree[start], previous)
                parent = self.nodes.get(_parent(start)) if depth > 0 else None
                if parent is not None:
                    parent.children = parent.children | {start.rpartition("/")[2]}
            for path, node in subtree.items():
                if path not in fetches:
                    self._parse(path, node, None)
                self.nodes[path] = node
                changed |= node.group is not None
        return changed

    def _locate(self, path: str) -> tuple[int, tuple[str, int] | None] | None:
        """The depth of ``path`` and the first of its ancestors-or-self missing in the tree.

        None if the layout does not read ``path`` (not under a base path, or filtered out).
        """
        for root in self.roots:
            if path != root and not _is_under(path, root):
                continue
            parts = [p for p in path[len(root) :].split("/") if p]
            for depth, name in enumerate(parts, 1):
                if not self.shape.lists_children(depth - 1):
                    return None
                if not self.shape.descends_into(depth, name):
                    return None
            node = self.nodes.get(root)
            if node is None or not node.exists:
                return len(parts), (root, 0)
            current = root
            for depth, name in enumerate(parts, 1):
                current = _join(current, name)
                if current not in self.nodes:
                    return len(parts), (current, depth)
            return len(parts), None
        return None

    def _remove(self, path: str) -> bool:
        """A znode was deleted: forget it and its subtree, and unlink it from its parent."""
        changed = self._drop(path)
        if path in self.roots:
            self.nodes[path] = _Node(0, exists=False)
        elif (parent := self.nodes.get(_parent(path))) is not None:
            parent.children = parent.children - {path.rpartition("/")[2]}
        return changed

    async def _apply_one_shot(self, events: Iterable[tuple[str, str]]) -> bool:
        """Re-read the znodes named by one-shot watch events; return whether a target changed."""
        work = [(kind, path, node) for kind, path in events if (node := self.nodes.get(path))]
        refetch: dict[str, int] = {}
        reads = [(kind, path, node) for kind, path, node in work if node.exists]
        results = iter(await self.session.batch([self._request(*read) for read in reads]))
        changed = False
        for kind, path, node in work:
            if not node.exists:  # an absent base path whose exists-watch fired
                refetch[path] = node.depth
                continue
            result = next(results)
            if self.nodes.get(path) is not node:
                continue  # removed by an earlier event of this batch
            probe = self._probes(kind, node)
            if isinstance(result, _Gone) or (probe and result is None):
                changed |= self._drop(path)
                if path in self.roots:
                    refetch[path] = 0  # watch for it to come back
                continue
            if isinstance(result, BaseException):
                raise result
            if probe:
                continue  # still there, and nothing of it is read
            if kind == "data":
                data = result[0]
                if data != node.data:
                    old_group = node.group
                    node.data, node.group = data, None
                    self._parse(path, node, None)
                    changed |= node.group != old_group
            else:
                names = frozenset(c for c in result if self.shape.descends_into(node.depth + 1, c))
                for gone in node.children - names:
                    changed |= self._drop(_join(path, gone))
                for new in names - node.children:
                    refetch[_join(path, new)] = node.depth + 1
                node.children = names
        if refetch:
            subtree = await self._fetch(list(refetch.items()), watch=True)
            previous = {path: self.nodes.get(path) for path in refetch}
            for path in refetch:
                changed |= self._drop(path)
            for sub_path, sub_node in subtree.items():
                self._parse(sub_path, sub_node, previous.get(sub_path))
                self.nodes[sub_path] = sub_node
                changed |= sub_node.group is not None
        return changed

    def _drop(self, path: str) -> bool:
        """Forget a znode and everything under it; return whether a target went away."""
        node = self.nodes.pop(path, None)
        if node is None:
            return False
        changed = node.group is not None
        for child in node.children:
            changed |= self._drop(_join(path, child))
        return changed

    def _parse(self, path: str, node: _Node, previous: _Node | None) -> None:
        if previous is not None and previous.data == node.data and previous.depth == node.depth:
            node.group = previous.group  # unchanged: neither parse nor report it again
            return
        if not node.exists:
            return
        try:
            labels = self.shape.parse(path, node.depth, node.data)
            if labels is not None:
                address = labels[ADDRESS_LABEL]
                if not is_valid_address(address):
                    raise InvalidTargetError(f"address {address!r} is not a valid host:port")
                node.group = TargetGroup(source=path, targets=(labels,))
        except InvalidTargetError as exc:
            prefix = f"znode {path}: "
            message = str(exc)
            self.context.record_invalid(f"znode {path}", message.removeprefix(prefix))

    def _probes(self, kind: str, node: _Node) -> bool:
        """Whether an event of ``kind`` on ``node`` is answered by a bare existence check.

        A deletion fires every watch of a znode, including the kind this layout does not
        read for it; that is answered by ``exists`` without a new watch.
        """
        if kind == "data":
            return not self.shape.reads_data(node.depth)
        return not self.shape.lists_children(node.depth)

    def _request(self, kind: str, path: str, node: _Node) -> _Request:
        """The read that answers a watch event on ``path`` and re-arms its watch."""
        client = self.session.client
        if self._probes(kind, node):
            return (client.exists_async, (path,), f"checking {path}")
        if kind == "data":
            return (client.get_async, (path, self.data_watcher), f"reading {path}")
        return (client.get_children_async, (path, self.child_watcher), f"listing {path}")

    async def _read_all(self, ops: list[tuple[int, str]], *, watch: bool) -> list[Any]:
        """Run (op type, path) reads; each answer is a value, :class:`_Gone` or BackendError.

        Without watches they go in ``multiRead`` requests when the server has them.
        """
        session = self.session
        if not watch and session.multi_read and len(ops) > 1:
            chunks = [ops[i : i + _MULTI_READ_MAX] for i in range(0, len(ops), _MULTI_READ_MAX)]
            requests: list[_Request] = [
                (session.read_many, (chunk,), f"reading {len(chunk)} znodes") for chunk in chunks
            ]
            replies = await session.batch(requests)
            if not any(_unimplemented(reply) for reply in replies):
                answers: list[Any] = []
                for chunk, reply in zip(chunks, replies, strict=True):
                    if isinstance(reply, BaseException):
                        raise reply
                    if len(reply) != len(chunk):
                        raise BackendError(
                            f"ZooKeeper {session.hosts}: multiRead answered {len(reply)} "
                            f"results for {len(chunk)} reads"
                        )
                    answers.extend(
                        session.wrap(answer, f"{_VERB[op_type]} {path}")
                        for (op_type, path), answer in zip(chunk, reply, strict=True)
                    )
                return answers
            self.context.logger.info(
                "ZooKeeper %s has no multiRead (it predates 3.6): one request per znode",
                session.hosts,
            )
            session.multi_read = False
        client = session.client
        data_watch = self.data_watcher if watch else None
        child_watch = self.child_watcher if watch else None
        singles: list[_Request] = [
            (client.get_async, (path, data_watch), f"reading {path}")
            if op_type == _GET_DATA
            else (client.get_children_async, (path, child_watch), f"listing {path}")
            for op_type, path in ops
        ]
        return await session.batch(singles)

    async def _fetch(self, starts: list[tuple[str, int]], *, watch: bool) -> dict[str, _Node]:
        """Read the subtrees at ``starts`` (path, depth), level by level; pure I/O.

        A base path that does not exist gets an exists-watch and an absent node; any other
        znode that vanished mid-read is left out (its parent's watch reports it).
        """
        client, shape = self.session.client, self.shape
        data_watch = self.data_watcher if watch else None
        out: dict[str, _Node] = {}
        frontier = starts
        while frontier:
            ops: list[tuple[int, str]] = []
            for path, depth in frontier:
                if shape.reads_data(depth):
                    ops.append((_GET_DATA, path))
                if shape.lists_children(depth):
                    ops.append((_GET_CHILDREN, path))
            results = iter(await self._read_all(ops, watch=watch))
            missing_roots: list[str] = []
            next_frontier: list[tuple[str, int]] = []
            for path, depth in frontier:
                answers = [
                    next(results)
                    for wanted in (shape.reads_data(depth), shape.lists_children(depth))
                    if wanted
                ]
                if any(isinstance(a, _Gone) for a in answers):
                    if depth == 0:
                        missing_roots.append(path)
                    continue
                for answer in answers:
                    if isinstance(answer, BaseException):
                        raise answer
                node = _Node(depth)
                if shape.reads_data(depth):
                    node.data = answers.pop(0)[0]
                if shape.lists_children(depth):
                    node.children = frozenset(
                        c for c in answers.pop(0) if shape.descends_into(depth + 1, c)
                    )
                out[path] = node
                next_frontier.extend((_join(path, c), depth + 1) for c in node.children)
            for path in missing_roots:
                # Watch for the base path to be created; if it was meanwhile, read it next.
                if await self.session.call(
                    client.exists_async, path, data_watch, what=f"checking {path}"
                ):
                    next_frontier.append((path, 0))
                else:
                    out[path] = _Node(0, exists=False)
            frontier = next_frontier
        return out


# --- the discoverer ----------------------------------------------------------------------

# Bursts of watch events are batched: wait until they pause this long, at most _BATCH_MAX.
_BATCH_PAUSE = 0.005
_BATCH_MAX = 0.1


@register("zookeeper", ZookeeperSDConfig)
class ZookeeperDiscoverer(BaseDiscoverer[ZookeeperSDConfig]):
    """Mirrors the configured paths through watches (or polls them), one target per znode."""

    def __init__(self, config: ZookeeperSDConfig, context: DiscoveryContext) -> None:
        super().__init__(config, context)
        self.session: _Session | None = None
        self._tree: _Tree | None = None

    @property
    def watch_mode(self) -> str:
        """``persistent`` (recursive watches), ``one-shot`` (re-armed watches) or ``poll``."""
        if not self.config.watch:
            return "poll"
        if self._tree is not None and self._tree.persistent:
            return "persistent"
        return "one-shot"

    @property
    def client(self) -> KazooClient | None:
        """The running kazoo client (for diagnostics and tests), or None."""
        return self.session.client if self.session is not None else None

    def _operation_timeout(self) -> float:
        return _sync_timeout(self.config)

    async def run(self, send: Send) -> None:
        """Follow the paths until cancelled."""
        session = _Session(self.config, self.context)
        tree = _Tree(session, SHAPES[self.config.layout], list(self.config.paths), self.context)
        self.session, self._tree = session, tree
        session.start()
        try:
            if self.config.watch:
                await self._watch(send, session, tree)
            else:
                await _Poller(self.config, self.context, session, tree).run(send)
        finally:
            self.session = self._tree = None
            await asyncio.shield(session.close())

    async def _watch(self, send: Send, session: _Session, tree: _Tree) -> None:
        diff = GroupDiff()
        backoff = Backoff(0.5, 30.0)
        failed = False
        while True:
            if failed:
                await asyncio.sleep(backoff.next_delay())
            await self._connected(session)
            session.resyncing()
            started = time.monotonic()
            try:
                async with asyncio.timeout(self._operation_timeout()):
                    await tree.resync(watch=True)
            except (SdbridgeError, _Gone, TimeoutError) as exc:
                self.context.record_failure(_resync_error(exc, session), time.monotonic() - started)
                failed = True
                continue
            failed = False
            backoff.reset()
            self.context.record_success(time.monotonic() - started)
            await send(diff.changes(tree.groups()))
            try:
                await self._follow(send, session, tree, diff)
            except (SdbridgeError, _Gone, TimeoutError) as exc:
                self.context.record_failure(_resync_error(exc, session))
                failed = True

    async def _connected(self, session: _Session) -> None:
        """Wait for the connection; report a failure for each session timeout it takes."""
        while not session.connected.is_set():
            try:
                async with asyncio.timeout(self.config.timeout):
                    await session.connected.wait()
            except TimeoutError:
                self.context.record_failure(
                    BackendError(f"ZooKeeper {session.hosts}: cannot connect (still trying)")
                )

    async def _follow(self, send: Send, session: _Session, tree: _Tree, diff: GroupDiff) -> None:
        """Apply watch events until the session needs a full resync."""
        while not session.must_resync():
            await session.changed.wait()
            await _settle(tree)
            session.changed.clear()
            if session.must_resync():
                return
            events = tree.take_pending()
            if events is None:
                continue
            async with asyncio.timeout(self._operation_timeout()):
                changed = await tree.apply(events)
            if changed and not session.must_resync():
                await send(diff.changes(tree.groups()))
            # If the connection dropped meanwhile, the resync that follows sends the truth.


def _sync_timeout(config: ZookeeperSDConfig) -> float:
    """A sync that takes longer than this is abandoned and retried."""
    return max(30.0, 3 * config.timeout)


async def _settle(tree: _Tree) -> None:
    deadline = time.monotonic() + _BATCH_MAX
    while time.monotonic() < deadline:
        seen = tree.pending_count()
        await asyncio.sleep(_BATCH_PAUSE)
        if tree.pending_count() == seen:
            return


def _resync_error(exc: BaseException, session: _Session) -> SdbridgeError:
    if isinstance(exc, SdbridgeError):
        return exc
    if isinstance(exc, TimeoutError):
        return BackendError(f"ZooKeeper {session.hosts}: sync timed out")
    return BackendError(f"ZooKeeper {session.hosts}: {exc} vanished during the sync")


class _Poller(RefreshDiscoverer[ZookeeperSDConfig]):
    """``watch: false``: read every path without watches every ``refresh_interval``."""

    def __init__(
        self,
        config: ZookeeperSDConfig,
        context: DiscoveryContext,
        session: _Session,
        tree: _Tree,
    ) -> None:
        super().__init__(config, context)
        self.session = session
        self.tree = tree

    async def refresh(self) -> list[TargetGroup]:
        """Read the whole tree once; raise if not connected within the session timeout."""
        try:
            async with asyncio.timeout(self.config.timeout):
                await self.session.connected.wait()
        except TimeoutError:
            raise BackendError(f"ZooKeeper {self.session.hosts}: not connected") from None
        try:
            async with asyncio.timeout(_sync_timeout(self.config)):
                await self.tree.resync(watch=False)
        except (_Gone, TimeoutError) as exc:
            raise _resync_error(exc, self.session) from None
        return self.tree.groups()
