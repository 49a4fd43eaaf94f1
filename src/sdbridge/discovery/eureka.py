"""``eureka_sd_configs``: Netflix Eureka / Spring Cloud registries, with little load.

Options and labels are those of Prometheus's eureka_sd (prometheus/prometheus
``discovery/eureka/eureka.go`` and ``client.go``), value for value: one target per
instance of ``GET {server}/apps``, decoded from XML as Go's ``encoding/xml`` decodes it
(metadata values are the elements' raw inner XML, ``__address__`` is ``hostName:port``
with port 80 when the instance has none, ``instance`` is the instanceId).

Prometheus fetches the whole registry on every refresh. This mechanism does what
Eureka's own client does (``DiscoveryClient.getAndUpdateDelta``): one full fetch, then
``GET {server}/apps/delta`` each refresh (the instances changed in the last three
minutes, each with its actionType), applied to a local copy and checked against the
server's ``apps__hashcode``; a mismatch, a refused delta or a gap longer than the delta
window (:data:`MAX_DELTA_GAP`) means a full fetch. Either way a refresh is one request
in the common case, and a refresh applies completely or not at all: the local copy
changes only when the whole answer (and, if needed, the full fetch) has been decoded.

Bad input: an answer that is not well-formed XML (or JSON) fails the refresh, keeping
the last good targets; an instance whose port, enabled flag or countryId is not what Go
would decode, or whose address is not a valid ``host:port`` (port 0), is skipped and
counted, once, where Prometheus would fail the whole refresh or keep a bad target.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit
from xml.parsers import expat

import orjson
from pydantic import Field, field_validator

from .. import __version__
from ..durations import Duration
from ..errors import BackendError, redact_url
from ..model import (
    ADDRESS_LABEL,
    LabelSet,
    TargetGroup,
    is_valid_address,
    join_host_port,
    sanitize_label_name,
)
from . import register
from ._http import HTTPClient, HTTPClientConfig, HTTPStatusError, status_error
from .base import DiscoveryContext, RefreshConfig, RefreshDiscoverer, Send

# Label names, as in prometheus/prometheus discovery/eureka/eureka.go.
META = "__meta_eureka_"
INSTANCE_META = META + "app_instance_"
INSTANCE_LABEL = "instance"  # Prometheus's target label: the instanceId (absent when empty)
APP_NAME = META + "app_name"  # the application's <name>, upper case in Eureka
HOSTNAME = INSTANCE_META + "hostname"  # <hostName>, also the host of __address__
HOMEPAGE_URL = INSTANCE_META + "homepage_url"  # <homePageUrl>
STATUSPAGE_URL = INSTANCE_META + "statuspage_url"  # <statusPageUrl>
HEALTHCHECK_URL = INSTANCE_META + "healthcheck_url"  # <healthCheckUrl>
IP_ADDR = INSTANCE_META + "ip_addr"  # <ipAddr>
VIP_ADDRESS = INSTANCE_META + "vip_address"  # <vipAddress>
SECURE_VIP_ADDRESS = INSTANCE_META + "secure_vip_address"  # <secureVipAddress>
STATUS = INSTANCE_META + "status"  # <status>: UP, DOWN, STARTING, OUT_OF_SERVICE, UNKNOWN
PORT = INSTANCE_META + "port"  # <port>'s number, only when the instance has a <port>
PORT_ENABLED = INSTANCE_META + "port_enabled"  # its enabled attribute, "true"/"false"
SECURE_PORT = INSTANCE_META + "secure_port"  # <securePort>'s number, when present
SECURE_PORT_ENABLED = INSTANCE_META + "secure_port_enabled"  # its enabled attribute
DATACENTERINFO_NAME = INSTANCE_META + "datacenterinfo_name"  # MyOwn, Amazon ...
DATACENTERINFO_METADATA = INSTANCE_META + "datacenterinfo_metadata_"  # one per key, sanitized
COUNTRY_ID = INSTANCE_META + "country_id"  # <countryId>, "0" when absent
ID = INSTANCE_META + "id"  # <instanceId>
METADATA = INSTANCE_META + "metadata_"  # one label per metadata key, sanitized

APPS_PATH = "/apps"
DELTA_PATH = "/apps/delta"
DEFAULT_PORT = 80  # Prometheus's port for an instance without <port>
# Eureka keeps changes 3 minutes in its delta queue (retentionTimeInMSInDeltaQueue) and
# serves answers from a cache refreshed every 30 s: a delta can be trusted only if the
# last successful fetch is younger than that, with a margin.
MAX_DELTA_GAP = 120.0
INLINE_DECODE_MAX = 256 * 1024  # larger answers are decoded in a worker thread
DELTA_REFUSED_PAUSE = 600.0  # after a 403 (eureka.disableDelta), full fetches this long
_HINTS = {
    401: " (check basic_auth, authorization or oauth2)",
    # ApplicationsResource answers 403 while the server may not serve reads: for up to
    # eureka.waitTimeInMsWhenSyncEmpty (5 minutes) after it starts without peers' data.
    403: " (a Eureka server refuses reads for a while after it starts; or forbidden)",
}
_STATUSES = frozenset({"UP", "DOWN", "STARTING", "OUT_OF_SERVICE", "UNKNOWN"})
_GO_INT = re.compile(r"[+-]?[0-9]+")
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


class EurekaSDConfig(RefreshConfig, HTTPClientConfig):
    """One ``eureka_sd_configs`` entry: Prometheus's options, ``delta``, ``request_timeout``.

    The shared HTTP client options (tls_config, basic_auth, authorization, oauth2,
    proxy_url, no_proxy, proxy_from_environment, follow_redirects) are inherited, as
    Prometheus's eureka_sd inlines its HTTPClientConfig.
    """

    server: str = Field(description="Eureka's REST base URL, e.g. http://eureka:8761/eureka")
    refresh_interval: Duration = Field(30.0, description="time between refreshes")
    # sdbridge extensions (not in Prometheus).
    delta: bool = Field(
        True, description="follow /apps/delta between full fetches (false: full every time)"
    )
    request_timeout: Duration = Field(30.0, gt=0, description="timeout of one request")

    @field_validator("server")
    @classmethod
    def _server(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("eureka_sd: empty or null eureka server")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # The value may hold a password: say what is wrong, not the value.
            raise ValueError("eureka_sd: invalid eureka server URL (http:// or https:// + host)")
        return value.rstrip("/")


# --- decoding ----------------------------------------------------------------------------

Port = tuple[str, str | None]  # (the element's text, its enabled attribute if present)


@dataclass(slots=True)
class RawInstance:
    """An ``<instance>`` as decoded, before any value is interpreted."""

    fields: dict[str, str] = field(default_factory=dict)  # hostName, status, ... (text)
    port: Port | None = None
    secure_port: Port | None = None
    datacenter: str | None = None  # dataCenterInfo's name; None: no <dataCenterInfo>
    datacenter_metadata: list[tuple[str, str]] = field(default_factory=list)
    metadata: list[tuple[str, str]] = field(default_factory=list)  # (element name, value)
    problem: str | None = None  # set when the instance's shape is wrong (JSON)

    def key(self) -> str:
        """Eureka's ``InstanceInfo.getId()``: instanceId, an Amazon instance-id, or hostName."""
        if instance_id := self.fields.get("instanceId"):
            return instance_id
        if self.datacenter == "Amazon":
            for name, value in self.datacenter_metadata:
                if name == "instance-id" and value:
                    return value
        return self.fields.get("hostName", "")

    def status(self) -> str:
        """The status as Eureka's ``InstanceStatus.toEnum`` reads it (unknown: UNKNOWN)."""
        status = self.fields.get("status", "").upper()
        return status if status in _STATUSES else "UNKNOWN"


@dataclass(slots=True)
class Applications:
    """A decoded ``/apps`` or ``/apps/delta`` answer."""

    hash_code: str = ""
    apps: list[tuple[str, list[RawInstance]]] = field(default_factory=list)


_INSTANCE_TEXT = frozenset(
    {
        "hostName",
        "homePageUrl",
        "statusPageUrl",
        "healthCheckUrl",
        "app",
        "ipAddr",
        "vipAddress",
        "secureVipAddress",
        "status",
        "actionType",
        "countryId",
        "instanceId",
    }
)


class _XMLDecoder:
    """Decodes Eureka's XML as Go's encoding/xml decodes into Prometheus's structs.

    Elements are matched by local name; a text field is the element's own character
    data (children skipped); a metadata item's value is its raw inner XML (Go's
    ``,innerxml``), entities and all. A DTD is refused (no entity expansion attacks).
    """

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.result = Applications()
        self.roles: list[str] = []
        self.texts: list[list[str] | None] = []
        self.app_name = ""
        self.app_instances: list[RawInstance] = []
        self.instance = RawInstance()
        self.item_start = 0
        self.attrs: dict[str, str] = {}
        self.parser = expat.ParserCreate()
        self.parser.buffer_text = True
        self.parser.StartElementHandler = self._start
        self.parser.EndElementHandler = self._end
        self.parser.CharacterDataHandler = self._data
        self.parser.StartDoctypeDeclHandler = self._doctype

    def decode(self) -> Applications:
        self.parser.Parse(self.body, True)
        return self.result

    @staticmethod
    def _doctype(*_: object) -> None:
        raise ValueError("a DTD is not allowed in a Eureka answer")

    def _role(self, parent: str, local: str) -> str:
        if parent == "root":
            return {"application": "app", "apps__hashcode": "hash"}.get(local, "skip")
        if parent == "app":
            return {"name": "app.name", "instance": "instance"}.get(local, "skip")
        if parent == "instance":
            if local in _INSTANCE_TEXT:
                return "text:" + local
            return {
                "port": "port",
                "securePort": "securePort",
                "dataCenterInfo": "dc",
                "metadata": "meta",
            }.get(local, "skip")
        if parent == "dc":
            return {"name": "dc.name", "metadata": "dcmeta"}.get(local, "skip")
        if parent in ("meta", "dcmeta"):
            return "item"
        return "skip"

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        local = name.rpartition(":")[2]
        if not self.roles and local != "applications":
            # Go would decode any root into an empty registry: an HTML error page that
            # happens to be well-formed would remove every target.
            raise ValueError(f"answer is <{local[:40]}>, not Eureka's <applications>")
        role = self._role(self.roles[-1], local) if self.roles else "root"
        self.roles.append(role)
        collect = role not in ("root", "app", "instance", "dc", "meta", "dcmeta", "item", "skip")
        self.texts.append([] if collect else None)
        if role == "app":
            self.app_name, self.app_instances = "", []
        elif role == "instance":
            self.instance = RawInstance()
        elif role in ("port", "securePort"):
            self.attrs = {k.rpartition(":")[2]: v for k, v in attrs.items()}
        elif role == "dc":
            self.instance.datacenter = self.instance.datacenter or ""
        elif role == "item":
            self.item_start = _start_tag_end(self.body, self.parser.CurrentByteIndex)

    def _data(self, text: str) -> None:
        buffer = self.texts[-1]
        if buffer is not None:
            buffer.append(text)

    def _end(self, name: str) -> None:
        role = self.roles.pop()
        buffer = self.texts.pop()
        text = "".join(buffer) if buffer is not None else ""
        instance = self.instance
        if role.startswith("text:"):
            instance.fields[role[5:]] = text
        elif role == "port":
            instance.port = (text, self.attrs.get("enabled"))
        elif role == "securePort":
            instance.secure_port = (text, self.attrs.get("enabled"))
        elif role == "dc.name":
            instance.datacenter = text
        elif role == "item":
            end = self.parser.CurrentByteIndex
            raw = self.body[self.item_start : end] if self.item_start >= 0 else b""
            items = instance.metadata if self.roles[-1] == "meta" else instance.datacenter_metadata
            items.append((name.rpartition(":")[2], raw.decode("utf-8", "replace")))
        elif role == "instance":
            self.app_instances.append(instance)
        elif role == "app.name":
            self.app_name = text
        elif role == "app":
            self.result.apps.append((self.app_name, self.app_instances))
        elif role == "hash":
            self.result.hash_code = text


def _start_tag_end(body: bytes, start: int) -> int:
    """Where the content of the element whose start tag begins at ``start`` begins;
    -1 for an empty-element tag (``<a/>``). The document is known to be well-formed,
    so the first ``>`` outside a quoted attribute value ends the tag."""
    quote = 0
    for position in range(start + 1, len(body)):
        byte = body[position]
        if quote:
            if byte == quote:
                quote = 0
        elif byte in (0x22, 0x27):  # " '
            quote = byte
        elif byte == 0x3E:  # >
            return -1 if body[position - 1] == 0x2F else position + 1  # "/>"
    return -1


def parse_xml(body: bytes, where: str) -> Applications:
    """Decode an XML ``<applications>`` answer; BackendError if it is not well-formed."""
    if not body.strip():
        raise BackendError(f"{where}: empty answer")
    try:
        return _XMLDecoder(body).decode()
    except expat.ExpatError as exc:
        raise BackendError(
            f"{where}: answer is not well-formed XML ({expat.errors.messages[exc.code]},"
            f" line {exc.lineno}, column {exc.offset}): {body[:80]!r}"
        ) from exc
    except ValueError as exc:
        raise BackendError(f"{where}: {exc}") from exc


def _json_list(value: Any) -> list[Any]:
    # Older Eureka JSON (Jettison) writes a one-element list as the element itself.
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _json_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise ValueError(f"{value!r:.60} is not a scalar")


def _json_port(value: Any) -> Port | None:
    if value is None:
        return None
    if isinstance(value, dict):
        enabled = value.get("@enabled")
        return _json_text(value.get("$")), None if enabled is None else _json_text(enabled)
    return _json_text(value), None


def _json_items(value: Any) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise ValueError(f"metadata {value!r:.60} is not an object")
    # {"@class": "java.util.Collections$EmptyMap"} is how Eureka writes an empty map.
    return [(k, _json_text(v)) for k, v in value.items() if not k.startswith("@")]


def _json_instance(data: Any) -> RawInstance:
    if not isinstance(data, dict):
        raise ValueError(f"instance {data!r:.60} is not an object")
    raw = RawInstance()
    for name in _INSTANCE_TEXT:
        if name in data:
            raw.fields[name] = _json_text(data[name])
    raw.port = _json_port(data.get("port"))
    raw.secure_port = _json_port(data.get("securePort"))
    dc = data.get("dataCenterInfo")
    if isinstance(dc, dict):
        raw.datacenter = _json_text(dc.get("name"))
        raw.datacenter_metadata = _json_items(dc.get("metadata"))
    raw.metadata = _json_items(data.get("metadata"))
    return raw


def parse_json(body: bytes, where: str) -> Applications:
    """Decode a JSON ``{"applications": ...}`` answer (Eureka's Jackson shape)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BackendError(f"{where}: answer is not JSON ({exc}): {body[:80]!r}") from exc
    root = data.get("applications") if isinstance(data, dict) else None
    if not isinstance(root, dict):
        raise BackendError(f'{where}: answer has no "applications" object: {body[:80]!r}')
    result = Applications(hash_code=_json_text(root.get("apps__hashcode")))
    for position, app in enumerate(_json_list(root.get("application"))):
        if not isinstance(app, dict):
            raise BackendError(f"{where}: application {position} is not an object")
        instances: list[RawInstance] = []
        for data_instance in _json_list(app.get("instance")):
            try:
                instances.append(_json_instance(data_instance))
            except ValueError as exc:
                key = data_instance.get("instanceId") if isinstance(data_instance, dict) else None
                fields = {"instanceId": str(key or f"#{len(instances)}")}
                instances.append(RawInstance(fields=fields, problem=str(exc)))
        result.apps.append((_json_text(app.get("name")), instances))
    return result


def parse_answer(body: bytes, content_type: str, where: str) -> Applications:
    """Decode an answer as its Content-Type says: JSON, else XML (what Prometheus reads)."""
    if "json" in content_type.lower():
        return parse_json(body, where)
    return parse_xml(body, where)


# --- labels ------------------------------------------------------------------------------


def _go_int(text: str, what: str) -> int:
    # encoding/xml: empty is 0, else strconv.ParseInt of the trimmed text, 64 bits.
    text = text.strip()
    if not text:
        return 0
    if not _GO_INT.fullmatch(text) or not -(2**63) <= int(text) < 2**63:
        raise ValueError(f"{what} {text[:40]!r} is not a number")
    return int(text)


def _go_bool(text: str | None, what: str) -> bool:
    if text is None:
        return False
    text = text.strip()
    if not text or text in _GO_FALSE:
        return False
    if text in _GO_TRUE:
        return True
    raise ValueError(f"{what} {text[:40]!r} is not a boolean")


def instance_labels(app: str, raw: RawInstance) -> LabelSet:
    """The target of one instance, as Prometheus's eureka_sd builds it (empty values
    left out); ValueError naming the field when a value cannot be decoded as Go would,
    or when the address is not a valid ``host:port``."""
    if raw.problem is not None:
        raise ValueError(raw.problem)
    fields = raw.fields
    host = fields.get("hostName", "")
    labels: LabelSet = {
        INSTANCE_LABEL: fields.get("instanceId", ""),
        APP_NAME: app,
        HOSTNAME: host,
        HOMEPAGE_URL: fields.get("homePageUrl", ""),
        STATUSPAGE_URL: fields.get("statusPageUrl", ""),
        HEALTHCHECK_URL: fields.get("healthCheckUrl", ""),
        IP_ADDR: fields.get("ipAddr", ""),
        VIP_ADDRESS: fields.get("vipAddress", ""),
        SECURE_VIP_ADDRESS: fields.get("secureVipAddress", ""),
        STATUS: fields.get("status", ""),
        COUNTRY_ID: str(_go_int(fields.get("countryId", ""), "countryId")),
        ID: fields.get("instanceId", ""),
    }
    port = DEFAULT_PORT
    if raw.port is not None:
        port = _go_int(raw.port[0], "port")
        labels[PORT] = str(port)
        labels[PORT_ENABLED] = "true" if _go_bool(raw.port[1], "port enabled") else "false"
    if raw.secure_port is not None:
        labels[SECURE_PORT] = str(_go_int(raw.secure_port[0], "securePort"))
        enabled = _go_bool(raw.secure_port[1], "securePort enabled")
        labels[SECURE_PORT_ENABLED] = "true" if enabled else "false"
    if raw.datacenter is not None:
        labels[DATACENTERINFO_NAME] = raw.datacenter
        for name, value in raw.datacenter_metadata:
            labels[DATACENTERINFO_METADATA + sanitize_label_name(name)] = value
    for name, value in raw.metadata:
        labels[METADATA + sanitize_label_name(name)] = value
    address = join_host_port(host, port)
    if not is_valid_address(address):
        raise ValueError(f"address {address[:80]!r} is not a valid host:port")
    labels[ADDRESS_LABEL] = address
    # An empty label value is an absent label (Prometheus drops them on relabeling).
    return {k: v for k, v in labels.items() if v}


# --- the local copy of the registry ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One instance of the local copy: its status (for the hash code), and its target
    or why it was skipped."""

    status: str
    labels: LabelSet | None
    problem: str | None = None


def entry(app: str, raw: RawInstance) -> Entry:
    """The local copy's entry for a decoded instance."""
    try:
        return Entry(raw.status(), instance_labels(app, raw))
    except ValueError as exc:
        return Entry(raw.status(), None, str(exc))


Apps = dict[str, dict[str, Entry]]  # application name -> instance id -> entry


def full_copy(answer: Applications) -> Apps:
    """The local copy a full ``/apps`` answer describes (empty applications left out)."""
    apps: Apps = {}
    for name, instances in answer.apps:
        for raw in instances:
            apps.setdefault(name, {})[raw.key()] = entry(name, raw)
    return apps


def apply_delta(apps: Apps, delta: Applications) -> tuple[Apps, set[str]]:
    """``apps`` with ``delta`` applied, as Eureka's ``DiscoveryClient.updateDelta``:
    ADDED and MODIFIED put the instance, DELETED removes it (and its application when it
    is the last). ``apps`` is not changed; returns the new copy and the touched names."""
    result = dict(apps)
    touched: set[str] = set()
    for name, instances in delta.apps:
        for raw in instances:
            action = raw.fields.get("actionType", "")
            if action not in ("ADDED", "MODIFIED", "DELETED"):
                continue  # Eureka's client ignores an instance without a known action
            if name not in touched:
                result[name] = dict(result.get(name, {}))
                touched.add(name)
            if action == "DELETED":
                result[name].pop(raw.key(), None)
            else:
                result[name][raw.key()] = entry(name, raw)
    for name in touched:
        if not result[name]:
            del result[name]
    return result, touched


def hash_code(apps: Apps) -> str:
    """Eureka's reconcile hash code of a copy: ``<STATUS>_<count>_`` per status, sorted."""
    counts = Counter(e.status for instances in apps.values() for e in instances.values())
    return "".join(f"{status}_{counts[status]}_" for status in sorted(counts))


def app_group(name: str, instances: dict[str, Entry]) -> TargetGroup:
    """One application's targets (skipped instances left out), sorted by instance id."""
    targets = tuple(
        entry.labels for _, entry in sorted(instances.items()) if entry.labels is not None
    )
    return TargetGroup(source=name, targets=targets)


# --- the discoverer ----------------------------------------------------------------------


@register("eureka", EurekaSDConfig)
class EurekaDiscoverer(RefreshDiscoverer[EurekaSDConfig]):
    """Polls a Eureka server: a full fetch, then deltas reconciled with apps__hashcode."""

    clock: Callable[[], float] = staticmethod(time.monotonic)

    def __init__(self, config: EurekaSDConfig, context: DiscoveryContext) -> None:
        super().__init__(config, context)
        self.where = f"eureka {redact_url(config.server)}"
        self.http = HTTPClient(
            config,
            name=f"eureka at {redact_url(config.server)}",
            timeout=config.request_timeout,
            headers={"Accept": "application/xml", "User-Agent": f"sdbridge/{__version__}"},
            count_request=context.count_request,
        )
        self.apps: Apps | None = None  # the local copy; None until the first full fetch
        self.groups: dict[str, TargetGroup] = {}
        self.fetched_at = 0.0  # when the request behind the local copy was sent
        self.delta_refused_until = 0.0
        self.reported: dict[tuple[str, str], str] = {}  # skipped instances already reported
        self.fetches: Counter[str] = Counter()  # full, delta, reconcile (for tests, benches)
        self.decode_cpu = 0.0  # CPU seconds spent decoding answers (for benches)

    async def run(self, send: Send) -> None:
        async with self.http:
            await super().run(send)

    async def _get(self, path: str) -> Applications:
        url = self.config.server + path
        where = f"{self.where}{path}"
        answer = await self.http.fetch("GET", url, where=where, check=False)
        if not 200 <= answer.status < 300:
            raise status_error(where, answer.status, answer.body, _HINTS.get(answer.status, ""))
        content_type = answer.headers.get("Content-Type", "")
        if len(answer.body) <= INLINE_DECODE_MAX:
            return self._decode(answer.body, content_type, where)
        # A whole registry takes a good part of a second to decode: not on the event loop.
        return await asyncio.to_thread(self._decode, answer.body, content_type, where)

    def _decode(self, body: bytes, content_type: str, where: str) -> Applications:
        started = time.thread_time()
        try:
            return parse_answer(body, content_type, where)
        finally:
            self.decode_cpu += time.thread_time() - started

    async def _full(self) -> Apps:
        self.fetches["full"] += 1
        return full_copy(await self._get(APPS_PATH))

    async def refresh(self) -> list[TargetGroup]:
        """The full set of targets, from a delta when it can be trusted, else a full fetch."""
        started = self.clock()
        use_delta = (
            self.config.delta
            and self.apps is not None
            and started - self.fetched_at < MAX_DELTA_GAP
            and started >= self.delta_refused_until
        )
        touched: set[str] | None = None  # None: everything may have changed
        apps: Apps | None = None
        if use_delta and self.apps is not None:
            apps, touched = await self._delta(self.apps, started)
        if apps is None:
            apps = await self._full()
            touched = None
        # Nothing above changed the local copy or the targets.
        self._commit(apps, touched, started)
        return list(self.groups.values())

    async def _delta(self, current: Apps, started: float) -> tuple[Apps | None, set[str]]:
        try:
            delta = await self._get(DELTA_PATH)
        except HTTPStatusError as exc:
            # Eureka's client takes any non-200 delta as "fetch the full registry".
            if exc.status == 403:
                self.log.info(
                    "%s%s refused (403: eureka.disableDelta or the server is not ready);"
                    " fetching the full registry for %gs",
                    self.where,
                    DELTA_PATH,
                    DELTA_REFUSED_PAUSE,
                )
                self.delta_refused_until = started + DELTA_REFUSED_PAUSE
            return None, set()
        self.fetches["delta"] += 1
        apps, touched = apply_delta(current, delta)
        if hash_code(apps) != delta.hash_code:
            self.fetches["reconcile"] += 1
            self.log.debug(
                "delta hash code %r, server's %r: fetching the full registry",
                hash_code(apps),
                delta.hash_code,
            )
            return None, set()
        return apps, touched

    def _commit(self, apps: Apps, touched: set[str] | None, started: float) -> None:
        # Built aside and swapped in at the end: a failure leaves the last good set whole.
        groups = {} if touched is None else dict(self.groups)
        for name in apps.keys() if touched is None else touched:
            instances = apps.get(name, {})
            self._report_skipped(name, instances)
            group = app_group(name, instances)
            if group.targets:
                groups[name] = group
            else:
                groups.pop(name, None)
        if touched is None:
            # A full fetch: forget reports of instances that are gone.
            self.reported = {k: v for k, v in self.reported.items() if k[1] in apps.get(k[0], {})}
        self.groups = groups
        self.apps = apps
        self.fetched_at = started

    def _report_skipped(self, name: str, instances: dict[str, Entry]) -> None:
        for key, item in instances.items():
            if item.problem is None:
                self.reported.pop((name, key), None)
            elif self.reported.get((name, key)) != item.problem:
                self.reported[(name, key)] = item.problem
                self.context.record_invalid(
                    f"{self.where}: application {name!r} instance {key!r}", item.problem
                )
