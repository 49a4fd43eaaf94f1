"""``etcd_sd_configs``: service instances that frameworks register in etcd v3.

Prometheus has no etcd SD because "there is no standard layout". There are a few layouts
in wide use, though, and each is read here exactly as its framework writes it:

- ``endpoints``: etcd's own naming/endpoints manager (the gRPC resolver), a key
  ``<target>/<anything>`` holding ``{"Op":0,"Addr":"host:port","Metadata":...}``;
  ``Op`` 1 (gRPC naming's Delete) counts as no instance.
  https://github.com/etcd-io/etcd/blob/main/client/v3/naming/endpoints/internal/update.go
- ``kratos``: ``<namespace>/<name>/<id>`` holding a ServiceInstance
  ``{"id","name","version","metadata","endpoints":["grpc://h:p","http://h:p?isSecure=false"]}``,
  one target per endpoint.
  https://github.com/go-kratos/kratos/blob/main/contrib/registry/etcd/registry.go
- ``go-zero``: ``<key>/<lease id>`` holding a plain ``host:port``.
  https://github.com/zeromicro/go-zero/blob/master/core/discov/publisher.go
- ``go-micro``: ``/micro/registry/<service>/<node id>`` holding a Service
  ``{"name","version","metadata","endpoints","nodes":[{"id","address","metadata"}]}``.
  https://github.com/micro/go-micro/blob/master/registry/etcd/etcd.go
- ``coredns``: SkyDNS records ``{"host","port","priority","weight","text","ttl",...}``
  under the reversed domain, ``/skydns/local/skydns/staging/service``.
  https://github.com/coredns/coredns/blob/master/plugin/etcd/msg/service.go
- ``json``: any JSON value, with configured field paths for the address and labels.

etcd is reached through its v3 JSON gateway (``/v3/kv/range``, ``/v3/watch``; keys and
values in base64) with aiohttp, which sdbridge already depends on: no Python asyncio etcd
client is both well kept and free of a gRPC/protobuf stack (see docs/mechanisms/etcd.md).

Watch semantics: list the prefix (paginated, every page at the first page's revision),
then watch from ``revision + 1``. Progress notifications keep the known revision current
between events. After any gap (the watch cancelled by a compaction, a broken stream, an
etcd restart) the prefix is listed again and only the differences from the last good set
are sent; nothing is sent until that list is complete. A value that cannot be read is
skipped with an error naming its key and counted in ``sdbridge_invalid_targets_total``;
the rest of the job goes on. With ``watch: false`` the prefix is polled every
``refresh_interval`` instead (the baseline of bench/etcd_watch_latency.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal, Self
from urllib.parse import parse_qs, urlsplit

import aiohttp
import orjson
from pydantic import Field, SecretStr, field_validator, model_validator

from ..durations import Duration
from ..errors import BackendError, InvalidTargetError
from ..model import (
    ADDRESS_LABEL,
    LabelSet,
    TargetGroup,
    is_valid_address,
    is_valid_label_name,
    join_host_port,
    sanitize_label_name,
)
from . import register
from ._http import TLSConfig
from .base import (
    Backoff,
    DiscoveryContext,
    GroupDiff,
    MechanismConfig,
    RefreshConfig,
    RefreshDiscoverer,
    Send,
)

# --- labels --------------------------------------------------------------------------
# Every layout:
KEY_LABEL = "__meta_etcd_key"  # the etcd key the instance was read from
PREFIX_LABEL = "__meta_etcd_prefix"  # the configured prefix
LEASE_LABEL = "__meta_etcd_lease"  # the key's lease ID in decimal, when it has one
# Per layout (see the table in docs/mechanisms/etcd.md):
SERVICE_LABEL = "__meta_etcd_service"  # service name, naming target or DNS name
INSTANCE_ID_LABEL = "__meta_etcd_instance_id"  # instance, node or lease ID
VERSION_LABEL = "__meta_etcd_version"  # kratos / go-micro version
METADATA_LABEL_PREFIX = "__meta_etcd_metadata_"  # one per metadata key, sanitized
METADATA_LABEL = "__meta_etcd_metadata"  # endpoints: Metadata that is not an object, as JSON
ENDPOINT_LABEL = "__meta_etcd_endpoint"  # kratos: the endpoint URL as registered
ENDPOINT_SCHEME_LABEL = "__meta_etcd_endpoint_scheme"  # kratos: grpc, http, grpcs, https
DNS_LABEL_PREFIX = "__meta_etcd_dns_"  # coredns: priority, weight, ttl, text, group
JSON_LABEL_PREFIX = "__meta_etcd_json_"  # json: one per configured label

Layout = Literal["endpoints", "kratos", "go-zero", "go-micro", "coredns", "json"]

# An etcd gateway answer bigger than this is refused rather than buffered without bound.
_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
_PATH_SEGMENT_RE = re.compile(r"^(?P<name>[^.\[\]]*)(?P<indexes>(?:\[\d+\])*)$")
_INDEX_RE = re.compile(r"\[(\d+)\]")


# --- config --------------------------------------------------------------------------


def parse_field_path(path: str) -> tuple[str | int, ...]:
    """Parse ``a.b[0].c`` into ``("a", "b", 0, "c")``; raise ValueError if malformed."""
    parts: list[str | int] = []
    if not path:
        raise ValueError("a field path must not be empty")
    for segment in path.split("."):
        match = _PATH_SEGMENT_RE.match(segment)
        if match is None or (not match["name"] and not match["indexes"]):
            raise ValueError(f"invalid field path {path!r} (use e.g. service.nodes[0].address)")
        if match["name"]:
            parts.append(match["name"])
        parts.extend(int(i) for i in _INDEX_RE.findall(match["indexes"]))
    return tuple(parts)


_MISSING = object()


def get_field(data: object, path: tuple[str | int, ...]) -> object:
    """The value at ``path`` in decoded JSON, or the ``_MISSING`` sentinel."""
    for part in path:
        if isinstance(part, int):
            if not isinstance(data, list) or part >= len(data):
                return _MISSING
            data = data[part]
        else:
            if not isinstance(data, dict) or part not in data:
                return _MISSING
            data = data[part]
    return data


class JSONFields(MechanismConfig):
    """Where the ``json`` layout finds an instance's address and labels in a value."""

    address: str | None = Field(None, description="field path of a host:port string")
    host: str | None = Field(None, description="field path of the host (with port)")
    port: str | None = Field(None, description="field path of the port (with host)")
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="label suffix → field path; becomes __meta_etcd_json_<suffix>",
    )

    @field_validator("address", "host", "port")
    @classmethod
    def _valid_path(cls, value: str | None) -> str | None:
        if value is not None:
            parse_field_path(value)
        return value

    @field_validator("labels")
    @classmethod
    def _valid_labels(cls, value: dict[str, str]) -> dict[str, str]:
        for name, path in value.items():
            if not is_valid_label_name(JSON_LABEL_PREFIX + name):
                raise ValueError(f"labels: {name!r} does not make a valid label name")
            parse_field_path(path)
        return value

    @model_validator(mode="after")
    def _one_address(self) -> Self:
        if (self.address is None) == (self.host is None and self.port is None):
            raise ValueError("give either address, or host and port")
        if self.address is None and (self.host is None or self.port is None):
            raise ValueError("host and port must be given together")
        return self


class EtcdSDConfig(RefreshConfig):
    """One ``etcd_sd_configs`` entry."""

    endpoints: list[str] = Field(
        min_length=1, description="etcd client URLs, e.g. http://127.0.0.1:2379"
    )
    prefix: str = Field(min_length=1, description="key prefix to list and watch")
    layout: Layout = Field(description="how values are written, by which framework")
    fields: JSONFields | None = Field(None, description="the json layout's field paths")
    coredns_path: str = Field("/skydns", description="CoreDNS etcd plugin's path")
    username: str | None = None
    password: SecretStr | None = None
    tls_config: TLSConfig | None = None
    dial_timeout: Duration = Field(5.0, description="timeout to connect to an endpoint")
    request_timeout: Duration = Field(30.0, description="timeout of one range request")
    page_size: int = Field(10_000, ge=1, description="keys per range request")
    watch: bool = Field(True, description="watch for changes; false: poll refresh_interval")
    refresh_interval: Duration = Field(30.0, description="poll interval when watch is false")

    @field_validator("endpoints")
    @classmethod
    def _valid_endpoints(cls, value: list[str]) -> list[str]:
        for endpoint in value:
            url = endpoint if "://" in endpoint else f"http://{endpoint}"
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"endpoint {endpoint!r} must be http(s)://host:port")
        return value

    @field_validator("coredns_path")
    @classmethod
    def _rooted(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("coredns_path must start with /")
        return value.rstrip("/") or "/"

    @model_validator(mode="after")
    def _layout_options(self) -> Self:
        if self.layout == "json" and self.fields is None:
            raise ValueError("layout json needs fields (address, or host and port)")
        if self.layout != "json" and self.fields is not None:
            raise ValueError(f"fields applies to layout json only, not {self.layout}")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password must be given together")
        if self.layout == "coredns" and not self.prefix.startswith(self.coredns_path):
            raise ValueError(f"prefix {self.prefix!r} is not under coredns_path")
        return self

    def urls(self) -> list[str]:
        """The endpoints as base URLs; a bare host:port gets http, or https with TLS."""
        scheme = "https" if self.tls_config is not None else "http"
        return [(e if "://" in e else f"{scheme}://{e}").rstrip("/") for e in self.endpoints]


# --- layouts -------------------------------------------------------------------------


def _json(value: bytes) -> object:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidTargetError(f"value is not JSON: {exc}") from None


def _object(value: bytes, what: str) -> dict[str, Any]:
    data = _json(value)
    if not isinstance(data, dict):
        raise InvalidTargetError(f"value is not a {what} JSON object")
    return data


def _string(data: dict[str, Any], field: str, *, required: bool = False) -> str:
    value = data.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise InvalidTargetError(f"field {field!r} must be a non-empty string, got {value!r}")
    return value


def _address(address: object, where: str) -> str:
    if not isinstance(address, str) or not is_valid_address(address):
        raise InvalidTargetError(f"{where} {address!r} is not host:port")
    return address


def _text(value: object) -> str:
    """A label value from a JSON scalar; containers are written as compact JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def metadata_labels(*maps: object) -> LabelSet:
    """``__meta_etcd_metadata_<key>`` for each key of each map; later maps win."""
    labels: LabelSet = {}
    for metadata in maps:
        if metadata is None:
            continue
        if not isinstance(metadata, dict):
            raise InvalidTargetError(f"metadata must be an object, got {metadata!r}")
        for key in sorted(metadata):
            text = _text(metadata[key])
            if text:
                labels[METADATA_LABEL_PREFIX + sanitize_label_name(str(key))] = text
    return labels


def _parent(key: str) -> str:
    return key.rpartition("/")[0]


def parse_endpoints(key: str, value: bytes) -> list[LabelSet]:
    """etcd naming/endpoints: ``{"Op":0,"Addr":"h:p","Metadata":...}``; Op 1 is no instance."""
    data = _object(value, "naming endpoint")
    op = data.get("Op", 0)
    if op == 1:
        return []
    if op != 0:
        raise InvalidTargetError(f"unknown Op {op!r} (0 is Add, 1 is Delete)")
    labels = {ADDRESS_LABEL: _address(data.get("Addr"), "Addr"), SERVICE_LABEL: _parent(key)}
    metadata = data.get("Metadata")
    if isinstance(metadata, dict):
        labels.update(metadata_labels(metadata))
    elif metadata is not None:
        labels[METADATA_LABEL] = _text(metadata)
    return [labels]


def parse_kratos(key: str, value: bytes) -> list[LabelSet]:
    """Kratos ServiceInstance: one target per endpoint URL."""
    data = _object(value, "Kratos ServiceInstance")
    common = {
        SERVICE_LABEL: _string(data, "name", required=True),
        INSTANCE_ID_LABEL: _string(data, "id"),
        VERSION_LABEL: _string(data, "version"),
        **metadata_labels(data.get("metadata")),
    }
    endpoints = data.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        raise InvalidTargetError("field 'endpoints' must be a non-empty list of URLs")
    targets = []
    for endpoint in endpoints:
        if not isinstance(endpoint, str):
            raise InvalidTargetError(f"endpoint {endpoint!r} is not a URL string")
        parts = urlsplit(endpoint)
        if not parts.scheme:
            raise InvalidTargetError(f"endpoint {endpoint!r} has no scheme")
        address = _address(parts.netloc, f"endpoint {endpoint!r}: host")
        # Kratos before v2.3.1 wrote ?isSecure=true instead of grpcs:// and https://.
        secure = parse_qs(parts.query).get("isSecure") == ["true"]
        scheme = parts.scheme + "s" if secure and not parts.scheme.endswith("s") else parts.scheme
        targets.append(
            {
                **common,
                ADDRESS_LABEL: address,
                ENDPOINT_LABEL: endpoint,
                ENDPOINT_SCHEME_LABEL: scheme,
            }
        )
    return targets


def parse_go_zero(key: str, value: bytes) -> list[LabelSet]:
    """go-zero: a plain ``host:port`` under ``<service key>/<lease id>``."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidTargetError("value is not UTF-8 text") from None
    service, _, instance = key.rpartition("/")
    return [
        {
            ADDRESS_LABEL: _address(text, "value"),
            SERVICE_LABEL: service,
            INSTANCE_ID_LABEL: instance,
        }
    ]


def parse_go_micro(key: str, value: bytes) -> list[LabelSet]:
    """go-micro Service: one target per node; node metadata overrides service metadata."""
    data = _object(value, "go-micro Service")
    service = _string(data, "name", required=True)
    version = _string(data, "version")
    nodes = data.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        raise InvalidTargetError("field 'nodes' must be a non-empty list")
    targets = []
    for node in nodes:
        if not isinstance(node, dict):
            raise InvalidTargetError(f"node {node!r} is not an object")
        targets.append(
            {
                **metadata_labels(data.get("metadata"), node.get("metadata")),
                ADDRESS_LABEL: _address(node.get("address"), "node address"),
                SERVICE_LABEL: service,
                VERSION_LABEL: version,
                INSTANCE_ID_LABEL: _string(node, "id"),
            }
        )
    return targets


def coredns_domain(key: str, path: str) -> str:
    """The DNS name of a CoreDNS etcd key: ``/skydns/local/a/b`` → ``b.a.local``."""
    root = path.rstrip("/") + "/"
    if not key.startswith(root):
        raise InvalidTargetError(f"key is not under coredns_path {path!r}")
    labels = [label for label in key[len(root) :].split("/") if label]
    return ".".join(reversed(labels))


def parse_coredns(key: str, value: bytes, path: str) -> list[LabelSet]:
    """SkyDNS/CoreDNS record: ``host`` and ``port``; records without a port are skipped."""
    data = _object(value, "SkyDNS service")
    host = _string(data, "host", required=True)
    port = data.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port <= 65535:
        raise InvalidTargetError(f"field 'port' must be 1..65535, got {port!r}")
    address = join_host_port(host, port)
    labels = {
        ADDRESS_LABEL: _address(address, "host and port"),
        SERVICE_LABEL: coredns_domain(key, path),
    }
    for field in ("priority", "weight", "ttl", "text", "group"):
        text = _text(data.get(field))
        if text and text != "0":  # the Go struct omits empty values: so do we
            labels[DNS_LABEL_PREFIX + field] = text
    return [labels]


def parse_json(value: bytes, fields: JSONFields) -> list[LabelSet]:
    """Generic JSON: the address (or host and port) and labels at configured field paths."""
    data = _json(value)
    if fields.address is not None:
        found = get_field(data, parse_field_path(fields.address))
        if found is _MISSING:
            raise InvalidTargetError(f"no field {fields.address!r}")
        address = _address(found, f"field {fields.address!r}")
    else:
        assert fields.host is not None
        assert fields.port is not None
        host = get_field(data, parse_field_path(fields.host))
        port = get_field(data, parse_field_path(fields.port))
        for path, found in ((fields.host, host), (fields.port, port)):
            if found is _MISSING:
                raise InvalidTargetError(f"no field {path!r}")
        if not isinstance(host, str) or not isinstance(port, int | str):
            raise InvalidTargetError(f"host {host!r} and port {port!r} do not make an address")
        address = _address(join_host_port(host, port), "address")
    labels = {ADDRESS_LABEL: address}
    for name, path in sorted(fields.labels.items()):
        found = get_field(data, parse_field_path(path))
        if found is not _MISSING:
            labels[JSON_LABEL_PREFIX + name] = _text(found)
    return [labels]


def layout_parser(config: EtcdSDConfig) -> Callable[[str, bytes], list[LabelSet]]:
    """The function reading one key's value in the configured layout."""
    match config.layout:
        case "endpoints":
            return parse_endpoints
        case "kratos":
            return parse_kratos
        case "go-zero":
            return parse_go_zero
        case "go-micro":
            return parse_go_micro
        case "coredns":
            path = config.coredns_path
            return lambda key, value: parse_coredns(key, value, path)
        case "json":
            fields = config.fields
            assert fields is not None
            return lambda _key, value: parse_json(value, fields)


# --- the etcd v3 JSON gateway ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd returns it; ``value`` is None for a deletion."""

    key: bytes
    value: bytes | None
    lease: int = 0
    mod_revision: int = 0


class WatchCompacted(Exception):
    """The watch's start revision was compacted away: relist."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (compact_revision {compact_revision})")
        self.compact_revision = compact_revision


def prefix_range_end(prefix: bytes) -> bytes:
    """The range end that makes a range cover every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _kv(raw: dict[str, Any], deleted: bool = False) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(raw.get("key", "")),
        value=None if deleted else base64.b64decode(raw.get("value", "")),
        lease=int(raw.get("lease", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
    )


class Gateway:
    """A minimal client of etcd's v3 JSON gateway: paginated range and a streamed watch."""

    def __init__(
        self, config: EtcdSDConfig, context: DiscoveryContext, session: aiohttp.ClientSession
    ) -> None:
        self.config = config
        self.context = context
        self.session = session
        self.urls = config.urls()
        self._current = 0
        self._token: str | None = None
        # tls_config.server_name: the name to verify etcd's certificate against.
        tls = config.tls_config
        self._request_options: dict[str, Any] = (
            {"server_hostname": tls.server_name} if tls is not None and tls.server_name else {}
        )

    @property
    def url(self) -> str:
        """The endpoint in use."""
        return self.urls[self._current]

    def _failover(self) -> None:
        self._current = (self._current + 1) % len(self.urls)

    async def _headers(self) -> dict[str, str]:
        if self.config.username is None or self.config.password is None:
            return {}
        if self._token is None:
            body = {
                "name": self.config.username,
                "password": self.config.password.get_secret_value(),
            }
            answer = await self._post("/v3/auth/authenticate", body, auth=False)
            self._token = str(answer.get("token", ""))
        return {"Authorization": self._token}

    async def _post(self, path: str, body: dict[str, Any], *, auth: bool = True) -> dict[str, Any]:
        headers = await self._headers() if auth else {}
        url = self.url + path
        timeout = aiohttp.ClientTimeout(
            total=self.config.request_timeout, sock_connect=self.config.dial_timeout
        )
        self.context.count_request()
        try:
            async with self.session.post(
                url,
                data=orjson.dumps(body),
                headers=headers,
                timeout=timeout,
                **self._request_options,
            ) as response:
                payload = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._failover()
            raise BackendError(f"etcd {url}: {_describe(exc)}") from exc
        if status >= 500:
            self._failover()  # e.g. a member without a leader: another may answer
        answer = self._decode(payload, url)
        if status != 200 or "error" in answer:
            raise self._error(answer, url, status)
        return answer

    def _decode(self, payload: bytes, url: str) -> dict[str, Any]:
        try:
            answer = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise BackendError(f"etcd {url}: answer is not JSON: {payload[:200]!r}") from None
        if not isinstance(answer, dict):
            raise BackendError(f"etcd {url}: answer is not a JSON object")
        return answer

    def _error(self, answer: dict[str, Any], url: str, status: int) -> Exception:
        message = str(answer.get("message") or answer.get("error") or f"HTTP {status}")
        if "auth token" in message or answer.get("code") == 16:
            self._token = None  # expired or revoked: authenticate again next time
        return BackendError(f"etcd {url}: {message}")

    async def range_prefix(self, prefix: bytes) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` at one revision, and that revision."""
        range_end = _b64(prefix_range_end(prefix))
        start = prefix
        revision = 0
        kvs: list[KeyValue] = []
        while True:
            body: dict[str, Any] = {
                "key": _b64(start),
                "range_end": range_end,
                "limit": self.config.page_size,
            }
            if revision:
                body["revision"] = revision  # later pages read the first page's revision
            answer = await self._post("/v3/kv/range", body)
            if not revision:
                revision = int(answer.get("header", {}).get("revision", 0))
            page = [_kv(raw) for raw in answer.get("kvs", ())]
            kvs.extend(page)
            if not answer.get("more") or not page:
                return kvs, revision
            start = page[-1].key + b"\0"

    @contextlib.asynccontextmanager
    async def watch(self, prefix: bytes, start_revision: int) -> AsyncIterator[_WatchStream]:
        """Open a watch stream on ``prefix`` from ``start_revision``."""
        headers = await self._headers()
        url = self.url + "/v3/watch"
        body = {
            "create_request": {
                "key": _b64(prefix),
                "range_end": _b64(prefix_range_end(prefix)),
                "start_revision": start_revision,
                "progress_notify": True,
            }
        }
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.config.dial_timeout)
        self.context.count_request()
        try:
            async with self.session.post(
                url,
                data=orjson.dumps(body),
                headers=headers,
                timeout=timeout,
                **self._request_options,
            ) as response:
                if response.status != 200:
                    payload = await response.read()
                    raise self._error(self._decode(payload, url), url, response.status)
                _keepalive(response)
                yield _WatchStream(response, url)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._failover()
            raise BackendError(f"etcd {url}: watch stream broken: {_describe(exc)}") from exc
        except BackendError:
            self._failover()  # the stream ended or failed: try the next endpoint
            raise


def _keepalive(response: aiohttp.ClientResponse) -> None:
    """TCP keepalive on the watch connection, so a vanished etcd is noticed in about a minute."""
    connection = response.connection
    transport = connection.transport if connection is not None else None
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


class _WatchStream:
    """The messages of a watch response, one JSON object per line."""

    def __init__(self, response: aiohttp.ClientResponse, url: str) -> None:
        self.response = response
        self.url = url

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        buffer = bytearray()
        async for chunk in self.response.content.iter_any():
            buffer.extend(chunk)
            while (end := buffer.find(b"\n")) >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                if line.strip():
                    yield self._message(line)
            if len(buffer) > _MAX_MESSAGE_BYTES:
                raise BackendError(f"etcd {self.url}: a watch message exceeds 256 MiB")
        if buffer.strip():
            yield self._message(bytes(buffer))
        raise BackendError(f"etcd {self.url}: watch stream ended")

    def _message(self, line: bytes) -> dict[str, Any]:
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise BackendError(
                f"etcd {self.url}: watch message is not JSON: {line[:200]!r}"
            ) from None
        if not isinstance(message, dict):
            raise BackendError(f"etcd {self.url}: watch message is not an object")
        if "error" in message:
            error = message["error"]
            text = error.get("message", error) if isinstance(error, dict) else error
            raise BackendError(f"etcd {self.url}: watch failed: {text}")
        result = message.get("result", {})
        return result if isinstance(result, dict) else {}


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- the mechanism -------------------------------------------------------------------


@register("etcd", EtcdSDConfig)
class EtcdDiscoverer(RefreshDiscoverer[EtcdSDConfig]):
    """Lists and watches a prefix; one target group per key, whose source is the key."""

    def __init__(self, config: EtcdSDConfig, context: DiscoveryContext) -> None:
        super().__init__(config, context)
        self.prefix = config.prefix.encode("utf-8")
        self.parse = layout_parser(config)
        self.revision = 0  # the newest revision known, moved by events and progress
        self._list_revision = 0
        self._gateway: Gateway | None = None
        # Invalid keys already reported, with the revision of the bad value: each bad write
        # is logged and counted once, not again on every relist or poll.
        self._reported: dict[str, int] = {}

    async def run(self, send: Send) -> None:
        """Watch (or, with ``watch: false``, poll) until cancelled."""
        ssl_context: ssl.SSLContext | bool = True
        if self.config.tls_config is not None:
            try:
                ssl_context = self.config.tls_config.ssl_context()
            except (OSError, ssl.SSLError) as exc:
                raise BackendError(f"cannot load the TLS files of tls_config: {exc}") from exc
        connector = aiohttp.TCPConnector(ssl=ssl_context, limit=4)
        async with aiohttp.ClientSession(connector=connector) as session:
            self._gateway = Gateway(self.config, self.context, session)
            if self.config.watch:
                await self._watch_loop(self._gateway, send)
            else:
                await super().run(send)

    async def refresh(self) -> list[TargetGroup]:
        """Poll mode: the full set, listed now."""
        assert self._gateway is not None
        return list((await self._list(self._gateway)).values())

    async def _list(self, gateway: Gateway) -> dict[str, TargetGroup]:
        kvs, revision = await gateway.range_prefix(self.prefix)
        self.revision = max(self.revision, revision)
        groups: dict[str, TargetGroup] = {}
        for kv in kvs:
            key, group = self._group(kv)
            if group is not None:
                groups[key] = group
        self._list_revision = revision
        return groups

    def _group(self, kv: KeyValue) -> tuple[str, TargetGroup | None]:
        """The key as text and its group; None when it holds no (valid) instance."""
        try:
            key = kv.key.decode("utf-8")
        except UnicodeDecodeError:
            key = repr(kv.key)
            self._invalid(key, kv, f"etcd key {kv.key!r}", "key is not UTF-8")
            return key, None
        if kv.value is None:
            self._reported.pop(key, None)
            return key, None
        try:
            targets = self.parse(key, kv.value)
            labels = {KEY_LABEL: key, PREFIX_LABEL: self.config.prefix}
            if kv.lease:
                labels[LEASE_LABEL] = str(kv.lease)
            group = TargetGroup(source=key, targets=tuple(targets), labels=labels)
        except InvalidTargetError as exc:
            self._invalid(key, kv, f"etcd key {key!r} ({self.config.layout} layout)", exc)
            return key, None
        self._reported.pop(key, None)
        return key, group if targets else None

    def _invalid(self, key: str, kv: KeyValue, what: str, error: Exception | str) -> None:
        """Report a bad key once per bad write (its mod_revision)."""
        if kv.value is None:
            self._reported.pop(key, None)  # deleted: nothing to report
            return
        if self._reported.get(key) != kv.mod_revision or not kv.mod_revision:
            self._reported[key] = kv.mod_revision
            self.context.record_invalid(what, error)

    async def _watch_loop(self, gateway: Gateway, send: Send) -> None:
        backoff = Backoff(self.initial_backoff, 30.0)
        state: dict[str, TargetGroup] | None = None
        while True:
            started = time.monotonic()
            try:
                groups = await self._list(gateway)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.context.record_failure(exc, time.monotonic() - started)
                await asyncio.sleep(backoff.next_delay())
                continue
            changes = _resync_changes(state, groups)
            state = groups
            self.context.record_success(time.monotonic() - started)
            await send(changes)
            try:
                await self._follow(gateway, self._list_revision + 1, state, send, backoff)
            except asyncio.CancelledError:
                raise
            except WatchCompacted as exc:
                # Not a failure: the events were compacted away and the relist catches up.
                self.log.warning(
                    "watch on %r lost its history (%s); relisting", self.config.prefix, exc
                )
            except Exception as exc:
                self.context.record_failure(exc)
                await asyncio.sleep(backoff.next_delay())

    async def _watch_starting(self, revision: int) -> None:
        """A seam for tests, awaited just before a watch opens at ``revision``."""

    async def _follow(
        self,
        gateway: Gateway,
        start: int,
        state: dict[str, TargetGroup],
        send: Send,
        backoff: Backoff,
    ) -> None:
        """Apply watch events to ``state`` and send what changed; raise when the watch ends."""
        await self._watch_starting(start)
        async with gateway.watch(self.prefix, start) as stream:
            async for result in stream:
                if result.get("created"):
                    backoff.reset()  # a watch got established: the next gap starts afresh
                if result.get("canceled"):
                    compact = int(result.get("compact_revision", 0))
                    if compact:
                        raise WatchCompacted(compact)
                    reason = result.get("cancel_reason") or "no reason given"
                    raise BackendError(f"etcd {gateway.url}: watch cancelled: {reason}")
                header = result.get("header", {})
                self.revision = max(self.revision, int(header.get("revision", 0)))
                events = result.get("events")
                if not events:
                    continue  # created, or a progress notification
                changed: dict[str, TargetGroup] = {}
                for event in events:
                    deleted = event.get("type") == "DELETE"
                    key, group = self._group(_kv(event.get("kv", {}), deleted))
                    if group is None:
                        if state.pop(key, None) is not None or key in changed:
                            changed[key] = TargetGroup(source=key)
                    elif state.get(key) != group:
                        state[key] = group
                        changed[key] = group
                if changed:
                    await send(list(changed.values()))


def _resync_changes(
    previous: dict[str, TargetGroup] | None, current: dict[str, TargetGroup]
) -> list[TargetGroup]:
    """The first full set, or only the differences from the last good set after a relist."""
    diff = GroupDiff()
    if previous is not None:
        diff.changes(list(previous.values()))
    return diff.changes(list(current.values()))
