"""``consul_sd_configs``: Consul's catalog, watched with few blocking queries.

Labels and ``__address__`` are those of Prometheus's consul_sd, name for name and value
for value (prometheus/prometheus ``discovery/consul/consul.go``): one target per
service instance from ``/v1/health/service/<name>``, grouped by service name.

Load design. Prometheus and vmagent keep one long-poll per service, so N services cost
N open connections and about N requests per wait period even when nothing changes.
sdbridge keeps three long-polls whatever N is:

- ``/v1/catalog/services``: the set of services. Its index is the services table's, so
  it also moves when an instance is registered, deregistered or re-registered;
- ``/v1/health/state/any``: every check with its status and modify index;
- ``/v1/catalog/nodes``: every node with its address, meta and modify index.

When the checks or the nodes change, only the services they touch are re-read
(a node-level check or a node change touches every service on that node). A move of
the catalog index cannot be traced to a service by any documented bulk endpoint, so it
re-reads every selected service (a "sweep"), at most once per ``refresh_interval`` —
the same throttle Prometheus applies to each of its per-service long-polls; a new
service is read at once. A sweep runs beside the targeted reads, never in front of
them; reads run with bounded concurrency (``max_concurrency`` each), and a read whose
X-Consul-Index did not move is reused without decoding it.

Every resync is all-or-nothing: if one read fails, nothing is sent and the job keeps its
last good targets; the services stay pending and are retried with backoff. After any
gap (a failed long-poll, an index that went backwards) everything is re-read. Indexes
follow Consul's blocking-query rules (api-docs/features/blocking): an index below 1 is
treated as 1, an index that goes backwards resets to 0, and HTTP 429 backs off longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Self
from urllib.parse import quote

import aiohttp
import orjson
from pydantic import Field, SecretStr, field_validator, model_validator

from .. import __version__
from ..durations import Duration, format_duration
from ..errors import BackendError, DiscoveryError
from ..model import (
    ADDRESS_LABEL,
    LabelSet,
    TargetGroup,
    is_valid_address,
    join_host_port,
    sanitize_label_name,
)
from . import register
from ._http import Authorization, BasicAuth, TLSConfig, auth_headers
from .base import Backoff, BaseDiscoverer, GroupDiff, MechanismConfig, Send

# Label names, as in prometheus/prometheus discovery/consul/consul.go.
META = "__meta_consul_"
ADDRESS = META + "address"  # the node's address
NODE = META + "node"  # the node's name
METADATA_PREFIX = META + "metadata_"  # node meta, one label per key
SERVICE_METADATA_PREFIX = META + "service_metadata_"  # service meta, one label per key
TAGS = META + "tags"  # the service's tags, joined and wrapped with tag_separator
SERVICE = META + "service"  # the service's name
HEALTH = META + "health"  # the aggregated status of the instance's checks
SERVICE_ADDRESS = META + "service_address"  # the service's own address, may be empty
SERVICE_PORT = META + "service_port"
DATACENTER = META + "dc"  # the queried datacenter (given, or the agent's)
NAMESPACE = META + "namespace"  # Consul Enterprise
PARTITION = META + "partition"  # Consul Enterprise admin partition
TAGGED_ADDRESS_PREFIX = META + "tagged_address_"  # the node's tagged addresses
SERVICE_ID = META + "service_id"

# Consul's own check ids for maintenance mode (api/health.go: NodeMaint, ServiceMaintPrefix).
_NODE_MAINTENANCE = "_node_maintenance"
_SERVICE_MAINTENANCE_PREFIX = "_service_maintenance:"

_MAX_WAIT = 600.0  # Consul caps ``wait`` at 10 minutes
_ERROR_BACKOFF = (1.0, 30.0)
_THROTTLED_BACKOFF = (5.0, 120.0)  # HTTP 429: Consul's per-client connection limit
# A write that moves the catalog usually moves the checks too (same raft index); wait this
# long for the other long-polls, so their cheap targeted reads go (and get published)
# before a sweep takes the CPU.
_SWEEP_SETTLE = 0.3
# Two blocking queries of one kind start at least this far apart: under churn, answers
# are coalesced instead of re-downloaded back to back, and a server that answers at once
# without a new index (hashicorp/consul#3712) is not hammered.
_MIN_POLL_GAP = 0.25


class ConsulSDConfig(MechanismConfig):
    """One ``consul_sd_configs`` entry: Prometheus's consul_sd options plus load knobs."""

    server: str = Field("localhost:8500", description="host:port of the Consul HTTP API")
    scheme: Literal["http", "https"] = "http"
    path_prefix: str = Field("", description="prefix for API paths, e.g. behind a proxy")
    datacenter: str = Field("", description="datacenter to query; default: the agent's")
    namespace: str = Field("", description="Consul Enterprise namespace")
    partition: str = Field("", description="Consul Enterprise admin partition")
    token: SecretStr | None = Field(None, description="ACL token, sent as X-Consul-Token")
    username: str = Field("", description="basic auth user (Prometheus's legacy option)")
    password: SecretStr | None = Field(None, description="basic auth password (legacy)")
    services: list[str] = Field(default_factory=list, description="services; empty = all")
    tags: list[str] = Field(default_factory=list, description="instances must have all tags")
    node_meta: dict[str, str] = Field(default_factory=dict, description="node meta filter")
    tag_separator: str = ","
    allow_stale: bool = Field(True, description="let any server answer (?stale)")
    refresh_interval: Duration = Field(30.0, description="minimum time between sweeps")
    filter: str = Field("", description="Consul filter expression for the catalog")
    health_filter: str = Field("", description="Consul filter expression for the health API")
    basic_auth: BasicAuth | None = None
    authorization: Authorization | None = None
    tls_config: TLSConfig | None = None
    # sdbridge extensions (not in Prometheus): the load knobs.
    watch_timeout: Duration = Field(300.0, description="``wait`` of the blocking queries")
    max_concurrency: int = Field(16, ge=1, le=1024, description="parallel service reads")
    request_timeout: Duration = Field(30.0, description="timeout of a non-blocking read")

    @field_validator("server")
    @classmethod
    def _server(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("consul SD configuration requires a server address")
        return value.strip()

    @field_validator("path_prefix")
    @classmethod
    def _path_prefix(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        return value if not value or value.startswith("/") else "/" + value

    @field_validator("watch_timeout")
    @classmethod
    def _watch_timeout(cls, value: float) -> float:
        if not 0 < value <= _MAX_WAIT:
            raise ValueError("watch_timeout must be greater than 0 and at most 10m")
        return value

    @field_validator("refresh_interval", "request_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    @model_validator(mode="after")
    def _auth(self) -> Self:
        # The same exclusions as Prometheus's SDConfig.UnmarshalYAML.
        if (self.username or self.password is not None) and self.basic_auth is not None:
            raise ValueError(
                "at most one of consul SD configuration username and password and basic auth"
                " can be configured"
            )
        if self.token is not None and self.authorization is not None:
            raise ValueError("at most one of consul SD token and authorization can be configured")
        if self.basic_auth is not None and self.authorization is not None:
            raise ValueError("at most one of basic_auth and authorization can be configured")
        return self


# --- building targets ----------------------------------------------------------------------


def aggregated_status(checks: Iterable[Mapping[str, Any]]) -> str:
    """The health of an instance from its checks, as Consul's HealthChecks.AggregatedStatus.

    Maintenance wins over critical over warning over passing; no checks is passing; an
    unknown status makes the whole answer empty.
    """
    warning = critical = maintenance = False
    for check in checks:
        check_id = str(check.get("CheckID") or "")
        if check_id == _NODE_MAINTENANCE or check_id.startswith(_SERVICE_MAINTENANCE_PREFIX):
            maintenance = True
            continue
        status = check.get("Status")
        if status == "passing":
            continue
        if status == "warning":
            warning = True
        elif status == "critical":
            critical = True
        else:
            return ""
    if maintenance:
        return "maintenance"
    if critical:
        return "critical"
    if warning:
        return "warning"
    # Every check passing, or no checks at all.
    return "passing"


class _Shape:
    """Checks on decoded JSON: Go's json.Unmarshal into Consul's structs, as errors."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, what: str) -> BackendError:
        return BackendError(f"{self.where}: {what}")

    def obj(self, value: Any, what: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(f"{what} is not an object: {value!r:.100}")
        return value

    def text(self, value: Any, what: str) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.fail(f"{what} is not a string: {value!r:.100}")
        return value

    def port(self, value: Any, what: str) -> int:
        if value is None:
            return 0
        # bool is an int in Python, not in Go's JSON.
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(f"{what} is not a number: {value!r:.100}")
        return value

    def strings(self, value: Any, what: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(f"{what} is not a list of strings: {value!r:.100}")
        return value

    def string_map(self, value: Any, what: str) -> dict[str, str]:
        mapping = self.obj(value, what)
        for key, item in mapping.items():
            if not isinstance(item, str):
                raise self.fail(f"{what}[{key!r}] is not a string: {item!r:.100}")
        return mapping


@dataclass(frozen=True)
class _Instance:
    """One service instance: its labels and where it runs."""

    node: str
    labels: LabelSet


def parse_service_nodes(
    data: Any, *, service: str, tag_separator: str, where: str
) -> list[_Instance | str]:
    """Turn a ``/v1/health/service/<name>`` answer into instances with their labels.

    Raises BackendError on a shape Go's decoder would reject (e.g. a non-numeric port);
    returns a message string for an instance whose address is not a valid target.
    """
    shape = _Shape(where)
    if data is None:
        return []
    if not isinstance(data, list):
        raise shape.fail(f"expected a list of service nodes, got {type(data).__name__}")
    result: list[_Instance | str] = []
    for position, entry in enumerate(data):
        at = f"entry {position}"
        entry = shape.obj(entry, at)
        node = shape.obj(entry.get("Node"), f"{at}.Node")
        svc = shape.obj(entry.get("Service"), f"{at}.Service")
        checks_value = entry.get("Checks")
        if checks_value is not None and not isinstance(checks_value, list):
            raise shape.fail(f"{at}.Checks is not a list")
        checks = [shape.obj(c, f"{at}.Checks[]") for c in checks_value or []]
        node_name = shape.text(node.get("Node"), f"{at}.Node.Node")
        node_address = shape.text(node.get("Address"), f"{at}.Node.Address")
        service_address = shape.text(svc.get("Address"), f"{at}.Service.Address")
        port = shape.port(svc.get("Port"), f"{at}.Service.Port")
        tags = shape.strings(svc.get("Tags"), f"{at}.Service.Tags")
        # A service registered for another host carries its own address.
        address = join_host_port(service_address or node_address, port)
        labels: LabelSet = {
            ADDRESS_LABEL: address,
            ADDRESS: node_address,
            NODE: node_name,
            NAMESPACE: shape.text(svc.get("Namespace"), f"{at}.Service.Namespace"),
            PARTITION: shape.text(svc.get("Partition"), f"{at}.Service.Partition"),
            TAGS: tag_separator + tag_separator.join(tags) + tag_separator,
            SERVICE_ADDRESS: service_address,
            SERVICE_PORT: str(port),
            SERVICE_ID: shape.text(svc.get("ID"), f"{at}.Service.ID"),
            HEALTH: aggregated_status(checks),
        }
        for prefix, value, what in (
            (METADATA_PREFIX, node.get("Meta"), "Node.Meta"),
            (SERVICE_METADATA_PREFIX, svc.get("Meta"), "Service.Meta"),
            (TAGGED_ADDRESS_PREFIX, node.get("TaggedAddresses"), "Node.TaggedAddresses"),
        ):
            for key, item in shape.string_map(value, f"{at}.{what}").items():
                labels[prefix + sanitize_label_name(key)] = item
        if not is_valid_address(address):
            result.append(f"service {service!r} instance {labels[SERVICE_ID]!r}: {address!r}")
            continue
        # An empty label value is an absent label (Prometheus drops them on relabeling).
        result.append(_Instance(node_name, {k: v for k, v in labels.items() if v}))
    return result


# --- the HTTP boundary ---------------------------------------------------------------------


class ThrottledError(BackendError):
    """Consul answered 429: too many requests or connections from this client."""


@dataclass(frozen=True)
class _Answer:
    """A 200 answer: its body, decoded on demand, and its X-Consul-Index."""

    body: bytes
    index: int
    where: str

    @property
    def data(self) -> Any:
        """The decoded JSON; BackendError if it is not JSON."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise BackendError(f"{self.where}: invalid JSON ({exc}): {self.body[:100]!r}") from exc


class _ConsulClient:
    """Consul's HTTP API over aiohttp; every failure becomes a BackendError."""

    def __init__(self, config: ConsulSDConfig, session: aiohttp.ClientSession, count: Any) -> None:
        self.config = config
        self.session = session
        self.count_request = count
        server = config.server
        self.base = (server if "://" in server else f"{config.scheme}://{server}").rstrip("/")
        self.base += config.path_prefix
        self.headers = _auth_headers(config)

    def scope(self, datacenter: str) -> list[tuple[str, str]]:
        """Query parameters every read shares: dc, stale, namespace, partition, node meta."""
        params = [("dc", datacenter)] if datacenter else []
        if self.config.allow_stale:
            params.append(("stale", ""))
        if self.config.namespace:
            params.append(("ns", self.config.namespace))
        if self.config.partition:
            params.append(("partition", self.config.partition))
        params.extend(("node-meta", f"{k}:{v}") for k, v in sorted(self.config.node_meta.items()))
        return params

    async def get(
        self, path: str, params: list[tuple[str, str]], *, index: int = 0, wait: float = 0.0
    ) -> _Answer:
        """GET ``path``; with ``index`` > 0, a blocking query that waits up to ``wait``."""
        query = list(params)
        timeout = self.config.request_timeout
        if index > 0:
            query += [("index", str(index)), ("wait", format_duration(wait))]
            # Consul adds up to wait/16 of jitter; give the answer room to arrive.
            timeout = wait + wait / 16 + self.config.request_timeout
        url = self.base + path
        shown = f"{self.base}{path}"
        self.count_request()
        try:
            async with self.session.get(
                url,
                params=query,
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                body = await response.read()
                if response.status != 200:
                    raise _status_error(shown, response.status, body)
                raw_index = response.headers.get("X-Consul-Index", "0")
        except BackendError:
            raise
        except TimeoutError as exc:
            raise BackendError(f"{shown}: no answer within {timeout:g}s") from exc
        except aiohttp.ClientError as exc:
            raise BackendError(f"{shown}: {type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            raise BackendError(f"{shown}: {exc.strerror or exc}") from exc
        try:
            new_index = int(raw_index)
        except ValueError:
            raise BackendError(f"{shown}: invalid X-Consul-Index {raw_index!r}") from None
        return _Answer(body, new_index, shown)


def _status_error(url: str, status: int, body: bytes) -> BackendError:
    text = body.decode("utf-8", "replace").strip()[:300]
    if status == 429:
        return ThrottledError(f"{url}: HTTP 429 (Consul's rate or connection limit): {text}")
    hint = ""
    if status == 403:
        hint = " (check the token and its ACL policy)"
    elif status == 401:
        hint = " (check basic_auth / authorization)"
    elif "datacenter" in text.lower():
        hint = " (check the datacenter option)"
    return BackendError(f"{url}: HTTP {status}{hint}: {text}")


def _auth_headers(config: ConsulSDConfig) -> dict[str, str]:
    headers = {"Accept": "application/json", "User-Agent": f"sdbridge/{__version__}"}
    if config.token is not None:
        headers["X-Consul-Token"] = config.token.get_secret_value()
    basic_auth = config.basic_auth
    if basic_auth is None and (config.username or config.password is not None):
        # Prometheus's legacy username/password options are basic auth by another name.
        basic_auth = BasicAuth(username=config.username, password=config.password)
    headers.update(auth_headers(basic_auth, config.authorization))
    return headers


def _ssl_context(tls: TLSConfig | None) -> ssl.SSLContext | None:
    if tls is None:
        return None
    try:
        return tls.ssl_context()
    except (OSError, ssl.SSLError) as exc:
        raise DiscoveryError(f"tls_config: {exc}") from exc


# --- the watcher ---------------------------------------------------------------------------

Catalog = dict[str, list[str]]  # service name -> tags
Checks = dict[tuple[str, str], tuple[str, str, str, int]]  # (node, check id) -> state
Nodes = dict[str, tuple[str, ...]]  # node name -> state


def parse_catalog(data: Any) -> Catalog:
    """Parse ``/v1/catalog/services``: a map of service name to tags."""
    shape = _Shape(_POLLS["services"])
    return {
        str(name): shape.strings(tags, f"tags of {name!r}")
        for name, tags in shape.obj(data, "answer").items()
    }


def parse_checks(data: Any) -> Checks:
    """Parse ``/v1/health/state/any``: each check's service, status and modify index."""
    shape = _Shape(_POLLS["checks"])
    if not isinstance(data, list):
        raise shape.fail(f"expected a list of checks, got {type(data).__name__}")
    checks: Checks = {}
    for item in data:
        check = shape.obj(item, "check")
        key = (shape.text(check.get("Node"), "Node"), shape.text(check.get("CheckID"), "CheckID"))
        modify_index = check.get("ModifyIndex")
        checks[key] = (
            shape.text(check.get("ServiceName"), "ServiceName"),
            shape.text(check.get("ServiceID"), "ServiceID"),
            shape.text(check.get("Status"), "Status"),
            modify_index if isinstance(modify_index, int) else 0,
        )
    return checks


def parse_nodes(data: Any) -> Nodes:
    """Parse ``/v1/catalog/nodes``: what of each node ends up in labels, and its index."""
    shape = _Shape(_POLLS["nodes"])
    if not isinstance(data, list):
        raise shape.fail(f"expected a list of nodes, got {type(data).__name__}")
    nodes: Nodes = {}
    for item in data:
        node = shape.obj(item, "node")
        nodes[shape.text(node.get("Node"), "Node")] = (
            str(node.get("ModifyIndex")),
            shape.text(node.get("Address"), "Address"),
            orjson.dumps(node.get("Meta"), option=orjson.OPT_SORT_KEYS).decode(),
            orjson.dumps(node.get("TaggedAddresses"), option=orjson.OPT_SORT_KEYS).decode(),
        )
    return nodes


_POLLS = {
    "services": "/v1/catalog/services",
    "checks": "/v1/health/state/any",
    "nodes": "/v1/catalog/nodes",
}
_SWEEP_DONE = "sweep-done"
_PARSERS: dict[str, Any] = {"services": parse_catalog, "checks": parse_checks, "nodes": parse_nodes}


@dataclass
class _Event:
    """What a long-poll reports: a moved answer (parsed), or that it failed."""

    kind: str
    parsed: Any = None
    error: DiscoveryError | None = None
    gap: bool = False  # the watch was interrupted: changes may have been missed
    started: float = 0.0  # when the sweep that this event reports started


@dataclass
class _Pending:
    """Work the next resync must do."""

    services: set[str] = field(default_factory=set)
    sweep: bool = False
    prune: bool = False  # services left the catalog

    def __bool__(self) -> bool:
        return bool(self.services) or self.sweep or self.prune


@register("consul", ConsulSDConfig)
class ConsulDiscoverer(BaseDiscoverer[ConsulSDConfig]):
    """Watches Consul's catalog with three blocking queries; one group per service."""

    async def run(self, send: Send) -> None:
        """Discover until cancelled; each resync sends all of its changes or nothing."""
        config = self.config
        connector = aiohttp.TCPConnector(
            # Sweep reads, targeted reads and the long-polls.
            limit=2 * config.max_concurrency + len(_POLLS),
            ssl=_ssl_context(config.tls_config) or True,
        )
        async with aiohttp.ClientSession(connector=connector) as session:
            client = _ConsulClient(config, session, self.context.count_request)
            await _Watch(self, client).run(send)


class _Watch:
    """The state of one run: what Consul said last, per long-poll and per service."""

    def __init__(self, discoverer: ConsulDiscoverer, client: _ConsulClient) -> None:
        self.config = discoverer.config
        self.context = discoverer.context
        self.log = discoverer.log
        self.client = client
        self.datacenter = self.config.datacenter
        self.diff = GroupDiff()
        self.events: asyncio.Queue[_Event] = asyncio.Queue()
        self.catalog: Catalog = {}  # the selected services
        self.checks: Checks = {}
        self.nodes: Nodes = {}
        self.groups: dict[str, TargetGroup] = {}
        self.service_nodes: dict[str, frozenset[str]] = {}
        # Each service's last read and its X-Consul-Index: an unchanged index (the usual
        # case in a sweep) reuses the read instead of decoding and rebuilding it.
        self.reads: dict[str, tuple[int, _ServiceRead]] = {}
        self.indexes: dict[str, int] = {}
        # Sweeps and targeted reads have their own slots: a sweep never starves the others.
        self.sweep_slots = asyncio.Semaphore(self.config.max_concurrency)
        self.targeted_slots = asyncio.Semaphore(self.config.max_concurrency)
        self.commit_lock = asyncio.Lock()
        self.epoch = 0  # bumped on every gap: reads begun before it are not committed
        self.last_sweep = float("-inf")
        self.sweep_not_before = float("-inf")
        self.failing: set[str] = set()  # long-polls currently failing

    # --- top level -----------------------------------------------------------------------

    async def run(self, send: Send) -> None:
        backoff = Backoff(*_ERROR_BACKOFF)
        while True:  # until the first complete resync
            started = time.monotonic()
            try:
                await self._initial_sync(send)
            except DiscoveryError as exc:
                self.context.record_failure(exc, time.monotonic() - started)
                await asyncio.sleep(_delay(backoff, exc))
                continue
            self.context.record_success(time.monotonic() - started)
            break
        async with asyncio.TaskGroup() as tasks:
            for kind in _POLLS:
                tasks.create_task(self._poll(kind), name=f"consul long-poll {kind}")
            await self._process(send)

    async def _initial_sync(self, send: Send) -> None:
        if not self.config.datacenter:
            self.datacenter = await self._agent_datacenter()
        kinds = list(_POLLS)
        answers = await asyncio.gather(*(self._poll_request(kind, 0) for kind in kinds))
        parsed = {
            kind: _PARSERS[kind](answer.data) for kind, answer in zip(kinds, answers, strict=True)
        }
        self._apply_catalog(parsed["services"])
        self._apply_checks(parsed["checks"])
        self._apply_nodes(parsed["nodes"])
        self.last_sweep = time.monotonic()
        await self._resync(send, sorted(self.catalog), self.sweep_slots)
        # Only now: the long-polls start from what the complete resync has seen.
        for kind, answer in zip(kinds, answers, strict=True):
            self.indexes[kind] = max(answer.index, 1)

    async def _agent_datacenter(self) -> str:
        # Consul's default datacenter for a query is the agent's (Prometheus does the same).
        answer = await self.client.get("/v1/agent/self", [])
        config = answer.data.get("Config") if isinstance(answer.data, dict) else None
        datacenter = config.get("Datacenter") if isinstance(config, dict) else None
        if not isinstance(datacenter, str) or not datacenter:
            raise BackendError(
                f"/v1/agent/self: invalid value {datacenter!r} for Config.Datacenter"
            )
        self.log.info("using the agent's datacenter %r", datacenter)
        return datacenter

    # --- the long-polls ------------------------------------------------------------------

    def _poll_request(self, kind: str, index: int) -> Awaitable[_Answer]:
        params = self.client.scope(self.datacenter)
        if kind == "services" and self.config.filter:
            params.append(("filter", self.config.filter))
        return self.client.get(_POLLS[kind], params, index=index, wait=self.config.watch_timeout)

    async def _poll(self, kind: str) -> None:
        """Keep one blocking query on ``kind`` outstanding; report answers that moved."""
        errors = Backoff(*_ERROR_BACKOFF)
        throttled = Backoff(*_THROTTLED_BACKOFF)
        gap = False
        last_start = float("-inf")
        while True:
            index = self.indexes[kind]
            wait = last_start + _MIN_POLL_GAP - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            last_start = time.monotonic()
            try:
                # After a gap, ask without blocking: the answer must come at once.
                answer = await self._poll_request(kind, 0 if gap else index)
                parsed = _PARSERS[kind](answer.data)
            except BackendError as exc:
                gap = True
                self.events.put_nowait(_Event(kind, error=exc))
                backoff = throttled if isinstance(exc, ThrottledError) else errors
                await asyncio.sleep(backoff.next_delay())
                continue
            errors.reset()
            throttled.reset()
            new_index = max(answer.index, 1)  # an index below 1 is treated as 1
            if new_index < index and not gap:
                # Consul's state was restored, or a stale server is behind: start again.
                self.log.warning("%s index went backwards (%d -> %d)", kind, index, new_index)
                gap = True
                continue
            if new_index == index and not gap:
                continue  # the wait ran out: nothing changed
            self.indexes[kind] = new_index
            self.events.put_nowait(_Event(kind, parsed=parsed, gap=gap))
            gap = False

    # --- turning answers into work -------------------------------------------------------

    async def _process(self, send: Send) -> None:
        """Turn long-poll events into resyncs. Targeted resyncs (a few services) run here,
        one at a time; a sweep runs as a task beside them, so it never delays them."""
        pending = _Pending()
        backoff = Backoff(*_ERROR_BACKOFF)
        sweep_backoff = Backoff(*_ERROR_BACKOFF)
        retry_at: float | None = None
        sweep_task: asyncio.Task[None] | None = None
        try:
            while True:
                timeout = self._next_wakeup(pending, retry_at, sweep_task is not None)
                try:
                    # Not wait_for: on 3.11 it can lose a cancellation (see base.wait_event).
                    async with asyncio.timeout(timeout):
                        event = await self.events.get()
                except TimeoutError:
                    pass
                else:
                    for item in [event, *_drain(self.events)]:  # coalesce what arrived
                        if item.kind == _SWEEP_DONE:
                            sweep_task = None
                            self._sweep_done(item, pending, sweep_backoff)
                        else:
                            self._take(item, pending)
                now = time.monotonic()
                if sweep_task is None and pending.sweep and now >= self._sweep_at():
                    pending.sweep = False
                    sweep_task = asyncio.create_task(self._sweep(send))
                if (retry_at is not None and now < retry_at) or not (
                    pending.services or pending.prune
                ):
                    continue
                work = _Pending(services=pending.services, prune=pending.prune)
                pending.services, pending.prune = set(), False
                started = time.monotonic()
                try:
                    await self._resync(send, sorted(work.services), self.targeted_slots)
                except DiscoveryError as exc:
                    self.context.record_failure(exc, time.monotonic() - started)
                    pending.services |= work.services
                    pending.prune = pending.prune or work.prune
                    retry_at = time.monotonic() + _delay(backoff, exc)
                    continue
                backoff.reset()
                retry_at = None
                if not self.failing:
                    self.context.record_success(time.monotonic() - started)
        finally:
            if sweep_task is not None:
                sweep_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweep_task

    async def _sweep(self, send: Send) -> None:
        """Re-read every selected service; report the outcome as an event."""
        self.last_sweep = started = time.monotonic()
        try:
            await self._resync(send, sorted(self.catalog), self.sweep_slots)
        except DiscoveryError as exc:
            self.events.put_nowait(_Event(_SWEEP_DONE, error=exc, started=started))
        else:
            self.events.put_nowait(_Event(_SWEEP_DONE, started=started))

    def _sweep_done(self, event: _Event, pending: _Pending, backoff: Backoff) -> None:
        duration = time.monotonic() - event.started
        if event.error is not None:
            self.context.record_failure(event.error, duration)
            pending.sweep = True
            self.sweep_not_before = time.monotonic() + _delay(backoff, event.error)
            self.last_sweep = float("-inf")
            return
        backoff.reset()
        if not self.failing:
            self.context.record_success(duration)

    def _next_wakeup(
        self, pending: _Pending, retry_at: float | None, sweeping: bool
    ) -> float | None:
        now = time.monotonic()
        deadlines = []
        if pending.services or pending.prune:
            deadlines.append(retry_at if retry_at is not None else now)
        if pending.sweep and not sweeping:
            deadlines.append(self._sweep_at())
        return max(min(deadlines) - now, 0.0) if deadlines else None

    def _sweep_at(self) -> float:
        return max(self.last_sweep + self.config.refresh_interval, self.sweep_not_before)

    def _take(self, event: _Event, pending: _Pending) -> None:
        if event.error is not None:
            self.failing.add(event.kind)
            self.context.record_failure(event.error)
            return
        self.failing.discard(event.kind)
        if event.gap:
            pending.sweep = True
            self.last_sweep = float("-inf")  # a gap is repaired at once
            self.sweep_not_before = float("-inf")
            self.reads = {}  # indexes may have been reset: trust no cached read
            self.epoch += 1
        if event.kind == "services":
            before = set(self.catalog)
            self._apply_catalog(event.parsed)
            pending.services |= set(self.catalog) - before
            pending.prune = pending.prune or bool(before - set(self.catalog))
            # Re-registrations move this index without telling which service: sweep.
            pending.sweep = True
            self.sweep_not_before = time.monotonic() + _SWEEP_SETTLE
        elif event.kind == "checks":
            pending.services |= self._apply_checks(event.parsed)
        else:
            pending.services |= self._apply_nodes(event.parsed)

    def _apply_catalog(self, catalog: Catalog) -> None:
        self.catalog = {name: tags for name, tags in catalog.items() if self._selected(name, tags)}

    def _selected(self, name: str, tags: list[str]) -> bool:
        # Prometheus's shouldWatch: by name (exact), then the service must have every tag.
        if self.config.services and name not in self.config.services:
            return False
        return all(tag in tags for tag in self.config.tags)

    def _apply_checks(self, current: Checks) -> set[str]:
        previous, self.checks = self.checks, current
        touched: set[str] = set()
        for key in previous.keys() | current.keys():
            before, after = previous.get(key), current.get(key)
            if before == after:
                continue
            for state in (before, after):
                if state is None:
                    continue
                if state[0]:
                    touched.add(state[0])
                else:  # a node-level check, e.g. serfHealth: every service on the node
                    touched |= self._services_on(key[0])
        return touched & set(self.catalog)

    def _apply_nodes(self, current: Nodes) -> set[str]:
        previous, self.nodes = self.nodes, current
        touched: set[str] = set()
        for name in previous.keys() | current.keys():
            if previous.get(name) != current.get(name):
                touched |= self._services_on(name)
        return touched & set(self.catalog)

    def _services_on(self, node: str) -> set[str]:
        return {service for service, nodes in self.service_nodes.items() if node in nodes}

    # --- reading services ----------------------------------------------------------------

    async def _resync(self, send: Send, names: list[str], slots: asyncio.Semaphore) -> None:
        """Read ``names``; send the changes only if every read succeeded.

        Concurrent resyncs (a sweep and targeted reads) commit one at a time, and a
        service's read replaces the one in place only if its X-Consul-Index is not older.
        """
        epoch = self.epoch
        answers = await self._read_services(names, slots)
        async with self.commit_lock:
            if epoch != self.epoch:
                return  # a gap happened meanwhile: a full re-read is already pending
            reads = {n: r for n, r in self.reads.items() if n in self.catalog}
            changed: dict[str, _ServiceRead] = {}
            for name, answer in answers.items():
                cached = reads.get(name)
                if name not in self.catalog or (cached is not None and cached[0] > answer.index):
                    continue  # deregistered meanwhile, or a fresher read is in place
                if cached is not None and cached[0] == answer.index:
                    changed[name] = cached[1]
                else:
                    changed[name] = self._service_read(name, answer)
                reads[name] = (answer.index, changed[name])
            groups = {n: g for n, g in self.groups.items() if n in self.catalog}
            service_nodes = {n: s for n, s in self.service_nodes.items() if n in self.catalog}
            for name, (group, nodes, problems) in changed.items():
                service_nodes[name] = nodes
                previous = self.reads.get(name)
                if problems and (previous is None or previous[1][2] != problems):
                    for problem in problems:
                        self.context.record_invalid(problem, "the address is not a valid host:port")
                if group is None:
                    groups.pop(name, None)
                else:
                    groups[name] = group
            changes = self.diff.changes([groups[name] for name in sorted(groups)])
            # Commit only now: a failed read above leaves every cache as it was.
            self.groups, self.service_nodes, self.reads = groups, service_nodes, reads
            await send(changes)

    async def _read_services(
        self, names: list[str], slots: asyncio.Semaphore
    ) -> dict[str, _Answer]:
        async def read(name: str) -> _Answer:
            async with slots:
                return await self._read_service(name)

        tasks: list[asyncio.Task[_Answer]] = []
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(read(name)) for name in names]
        except* DiscoveryError as failures:
            # One failure fails the resync; report the first, count the rest.
            first = failures.exceptions[0]
            more = len(failures.exceptions) - 1
            suffix = f" (and {more} more failed read(s))" if more else ""
            raise BackendError(f"{first}{suffix}") from first
        return {name: task.result() for name, task in zip(names, tasks, strict=True)}

    async def _read_service(self, name: str) -> _Answer:
        params = self.client.scope(self.datacenter)
        params.extend(("tag", tag) for tag in self.config.tags)
        if self.config.health_filter:
            params.append(("filter", self.config.health_filter))
        return await self.client.get("/v1/health/service/" + _quote(name), params)

    def _service_read(self, name: str, answer: _Answer) -> _ServiceRead:
        """Build a service's group from its answer; BackendError on a bad shape."""
        instances = parse_service_nodes(
            answer.data, service=name, tag_separator=self.config.tag_separator, where=answer.where
        )
        problems = [i for i in instances if isinstance(i, str)]
        good = [i for i in instances if isinstance(i, _Instance)]
        nodes = frozenset(i.node for i in good)
        if not good:
            return None, nodes, problems
        targets = sorted(
            (i.labels for i in good), key=lambda t: (t[ADDRESS_LABEL], t.get(SERVICE_ID, ""))
        )
        labels = {SERVICE: name, DATACENTER: self.datacenter}
        group = TargetGroup(
            source=name, targets=tuple(targets), labels={k: v for k, v in labels.items() if v}
        )
        return group, nodes, problems


_ServiceRead = tuple[TargetGroup | None, frozenset[str], list[str]]


def _drain(queue: asyncio.Queue[_Event]) -> list[_Event]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


def _delay(backoff: Backoff, error: BaseException) -> float:
    delay = backoff.next_delay()
    throttled = isinstance(error, ThrottledError) or isinstance(error.__cause__, ThrottledError)
    return max(delay, _THROTTLED_BACKOFF[0]) if throttled else delay


def _quote(name: str) -> str:
    return quote(name, safe="")
