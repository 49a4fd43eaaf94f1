"""A small Docker Engine API client, shared by ``dockerswarm`` and ``docker``.

It speaks HTTP over the engine's unix socket (aiohttp's ``UnixConnector``) or over TCP,
optionally with TLS and HTTP auth, negotiates the API version with ``GET /version``
the way the Docker CLI does (the lower of the engine's version and ours), and follows
``GET /events`` as a stream of JSON lines.

Every failure leaves this module as a :class:`~sdbridge.errors.BackendError` that names
the engine (its ``host``), the request, and what to do about it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, ClassVar, Self, TypeVar
from urllib.parse import urlsplit

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import BackendError
from ..model import ADDRESS_LABEL, LabelSet, TargetGroup, is_valid_address, sanitize_label_name
from ._http import Authorization, BasicAuth, TLSConfig, auth_headers
from .base import Backoff, DiscoveryContext, RefreshConfig, RefreshDiscoverer, Send

# API versions this client understands. The response fields sdbridge reads exist since
# 1.24 (the first swarm-mode API); 1.47 is Docker 27. Newer engines are asked for 1.47,
# older ones for their own version, exactly as the Docker CLI negotiates.
MIN_API_VERSION = "1.24"
MAX_API_VERSION = "1.47"

USER_AGENT = "sdbridge"
_SCHEMES = ("unix", "tcp", "http", "https")


def parse_api_version(text: str) -> tuple[int, ...]:
    """``"1.41"`` → ``(1, 41)``; raises ValueError for anything else."""
    parts = tuple(int(p) for p in text.split("."))
    if len(parts) != 2:
        raise ValueError(f"not an API version: {text!r}")
    return parts


def negotiate_api_version(host: str, version: Mapping[str, Any]) -> str:
    """The API version to speak, given the engine's ``GET /version`` answer.

    The lower of the engine's ``ApiVersion`` and :data:`MAX_API_VERSION`; a
    :class:`BackendError` when the engine is older than :data:`MIN_API_VERSION`, or when
    it no longer accepts any version this client knows.
    """
    server = version.get("ApiVersion")
    try:
        server_version = parse_api_version(str(server))
    except ValueError:
        raise BackendError(
            f"Docker Engine at {host}: GET /version has no usable ApiVersion ({server!r}); "
            "is this a Docker Engine?"
        ) from None
    engine = version.get("Version", "?")
    if server_version < parse_api_version(MIN_API_VERSION):
        raise BackendError(
            f"Docker Engine at {host} (version {engine}) speaks API {server}, older than "
            f"{MIN_API_VERSION} which sdbridge needs; upgrade the engine"
        )
    chosen = min(server_version, parse_api_version(MAX_API_VERSION))
    minimum = version.get("MinAPIVersion")
    if minimum is not None:
        try:
            too_new = parse_api_version(str(minimum)) > chosen
        except ValueError:
            too_new = False
        if too_new:
            raise BackendError(
                f"Docker Engine at {host} (version {engine}) no longer accepts API "
                f"{'.'.join(map(str, chosen))} (its minimum is {minimum}); upgrade sdbridge"
            )
    return ".".join(map(str, chosen))


class Filter(BaseModel):
    """One engine-side filter, as in Prometheus: ``{name: label, values: [a=b]}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="filter name, e.g. label, name, status")
    values: list[str] = Field(default_factory=list, description="values; any may match")


class EngineConfig(RefreshConfig):
    """The options every Docker mechanism shares: where the engine is, and how to filter."""

    host: str = Field(
        description="engine address: unix:///var/run/docker.sock, tcp://h:2376, https://h:2376"
    )
    port: int = Field(80, ge=1, le=65535, description="port of targets that have none")
    filters: list[Filter] = Field(default_factory=list, description="engine-side list filters")
    tls_config: TLSConfig | None = Field(None, description="TLS for a tcp/https engine")
    basic_auth: BasicAuth | None = Field(None, description="HTTP basic auth (tcp/https)")
    authorization: Authorization | None = Field(None, description="auth header (tcp/https)")
    watch_events: bool = Field(
        True, description="refresh as soon as the engine reports a relevant event (sdbridge)"
    )

    @field_validator("host")
    @classmethod
    def _valid_host(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in _SCHEMES:
            raise ValueError(f"host {value!r} must start with unix://, tcp://, http:// or https://")
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError(f"host {value!r} names no socket path")
        elif not parts.hostname:
            raise ValueError(f"host {value!r} names no host")
        else:
            try:
                _ = parts.port
            except ValueError as exc:
                raise ValueError(f"host {value!r}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _auth_needs_tcp(self) -> Self:
        if urlsplit(self.host).scheme == "unix" and (
            self.tls_config or self.basic_auth or self.authorization
        ):
            raise ValueError(
                "tls_config, basic_auth and authorization apply only to tcp://, http:// "
                "or https:// hosts, not to a unix socket"
            )
        if self.basic_auth is not None and self.authorization is not None:
            raise ValueError("set basic_auth or authorization, not both")
        return self

    def filter_param(self) -> str | None:
        """The ``filters`` query parameter (JSON ``{name: [values]}``), or None."""
        return encode_filters({f.name: f.values for f in self.filters})


def encode_filters(filters: Mapping[str, list[str]]) -> str | None:
    """Encode filters the way the Engine API wants them: ``{"name": {"value": true}}``."""
    merged: dict[str, dict[str, bool]] = {}
    for name, values in filters.items():
        if values:  # a filter without values filters nothing (as in Prometheus)
            merged.setdefault(name, {}).update(dict.fromkeys(values, True))
    if not merged:
        return None
    return orjson.dumps(merged, option=orjson.OPT_SORT_KEYS).decode()


class EngineClient:
    """One engine connection pool; open lazily, close with :meth:`close`."""

    def __init__(self, config: EngineConfig, *, timeout: float) -> None:
        self.host = config.host
        self._config = config
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._base = ""
        self.api_version: str | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is not None and not self._session.closed:
            return self._session
        config = self._config
        parts = urlsplit(config.host)
        headers = {"User-Agent": USER_AGENT}
        connector: aiohttp.BaseConnector
        if parts.scheme == "unix":
            # A fresh connection per request is cheap on a socket, and it means every
            # refresh checks the socket path as it is now (not a pooled connection).
            connector = aiohttp.UnixConnector(path=parts.path, force_close=True)
            # The host part is ignored on a socket; Docker's own client uses this name.
            self._base = "http://docker"
        else:
            secure = parts.scheme == "https" or (
                parts.scheme == "tcp" and config.tls_config is not None
            )
            context: ssl.SSLContext | bool = False
            if config.tls_config is not None:
                try:
                    context = config.tls_config.ssl_context()
                except (OSError, ssl.SSLError) as exc:
                    raise BackendError(f"tls_config for {config.host}: {exc}") from exc
            elif secure:
                context = ssl.create_default_context()
            connector = aiohttp.TCPConnector(ssl=context if secure else False)
            netloc = parts.netloc.rsplit("@", 1)[-1]
            self._base = f"{'https' if secure else 'http'}://{netloc}"
            headers.update(auth_headers(config.basic_auth, config.authorization))
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout),
        )
        return self._session

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _describe(self, exc: BaseException) -> str:
        """A connection failure, in words that say what to check."""
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, FileNotFoundError):
                return "the socket does not exist (is dockerd running? is host right?)"
            if isinstance(cause, PermissionError):
                return (
                    "permission denied on the socket (run sdbridge as a user in the docker "
                    "group, or as root)"
                )
            if isinstance(cause, ConnectionRefusedError):
                return "connection refused (is dockerd running?)"
            cause = cause.__cause__ or getattr(cause, "os_error", None)
        if isinstance(exc, TimeoutError):
            return f"no answer within {self._timeout:g}s"
        return str(exc) or type(exc).__name__

    async def _request(
        self, path: str, params: Mapping[str, str] | None, *, versioned: bool, stream: bool
    ) -> aiohttp.ClientResponse:
        session = self._open()
        prefix = f"/v{self.api_version}" if versioned and self.api_version else ""
        timeout = aiohttp.ClientTimeout(
            total=None if stream else self._timeout, sock_connect=self._timeout
        )
        try:
            response = await session.get(
                f"{self._base}{prefix}{path}", params=params, timeout=timeout
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            # The engine may come back as another version: negotiate again next time.
            self.api_version = None
            raise BackendError(
                f"cannot reach Docker Engine at {self.host}: {self._describe(exc)}"
            ) from exc
        if response.status >= 400:
            body = await response.read()
            response.release()
            raise BackendError(
                f"Docker Engine at {self.host} answered GET {path} with HTTP "
                f"{response.status}: {_error_message(body)}{_hint(response.status, path)}"
            )
        return response

    async def negotiate(self) -> str:
        """The negotiated API version (asking the engine once per connection)."""
        if self.api_version is None:
            version = await self._get_json("/version", None, versioned=False)
            if not isinstance(version, dict):
                raise BackendError(f"Docker Engine at {self.host}: GET /version is not an object")
            self.api_version = negotiate_api_version(self.host, version)
        return self.api_version

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET a versioned API path and decode its JSON."""
        await self.negotiate()
        return await self._get_json(path, params, versioned=True)

    async def get_list(
        self, path: str, params: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """GET a versioned API path that lists objects; its items that are objects."""
        items = await self.get(path, params)
        if not isinstance(items, list):
            raise BackendError(f"Docker Engine at {self.host}: GET {path} is not a list")
        return [item for item in items if isinstance(item, dict)]

    async def _get_json(
        self, path: str, params: Mapping[str, str] | None, *, versioned: bool
    ) -> Any:
        response = await self._request(path, params, versioned=versioned, stream=False)
        try:
            body = await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise BackendError(
                f"Docker Engine at {self.host}: reading GET {path} failed: {self._describe(exc)}"
            ) from exc
        finally:
            response.release()
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BackendError(
                f"Docker Engine at {self.host}: GET {path} did not return JSON: {exc}"
            ) from exc

    async def events(
        self, types: list[str], on_connect: Callable[[], None] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Follow ``GET /events`` for the given object types; ends when the stream drops.

        ``on_connect`` is called once the engine has accepted the stream.
        """
        await self.negotiate()
        params = {"filters": encode_filters({"type": types}) or ""}
        response = await self._request("/events", params, versioned=True, stream=True)
        try:
            if on_connect is not None:
                on_connect()
            while True:
                try:
                    line = await response.content.readline()
                except (aiohttp.ClientError, OSError, ValueError) as exc:
                    # ValueError: a line longer than aiohttp's limit; reconnect and resync.
                    raise BackendError(
                        f"Docker Engine at {self.host}: event stream broke: {self._describe(exc)}"
                    ) from exc
                if not line:
                    return
                if not line.strip():
                    continue
                try:
                    event = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # a torn line is only a hint lost; the next refresh corrects it
                if isinstance(event, dict):
                    yield event
        finally:
            response.close()


def _error_message(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace").strip()[:500] or "(empty body)"
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return str(data["message"])
    return body.decode("utf-8", "replace").strip()[:500]


def _hint(status: int, path: str) -> str:
    if status == 400:
        return " (check the filters in the config)"
    if status == 503 and path in ("/services", "/tasks", "/nodes"):
        return " (dockerswarm_sd needs a swarm manager: run it against a manager node)"
    return ""


# --- helpers shared by the mechanisms ---------------------------------------------------


def dig(obj: Any, *keys: str) -> Any:
    """``obj[k1][k2]...``, or None as soon as a level is missing or not an object."""
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def int_field(obj: Any, key: str) -> int:
    """``obj[key]`` if it is an integer (not a bool), else 0 (Go's zero value)."""
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def prefixed_labels(labels: Any, prefix: str) -> dict[str, str]:
    """An engine object's ``Labels`` as ``<prefix><sanitized key>`` labels ({} if none)."""
    if not isinstance(labels, dict):
        return {}
    return {prefix + sanitize_label_name(str(k)): str(v) for k, v in labels.items()}


def network_labels(networks: list[Any], prefix: str) -> dict[str, dict[str, str]]:
    """Labels of every network by ID (Prometheus's moby/network.go getNetworksLabels)."""
    labels: dict[str, dict[str, str]] = {}
    for network in networks:
        if not isinstance(network, dict):
            continue
        # The Engine spells it "Id" here (Go's JSON decoding ignores case; ours does not).
        nid = str(network.get("Id") or network.get("ID") or "")
        entry = {
            prefix + "network_id": nid,
            prefix + "network_name": str(network.get("Name") or ""),
            prefix + "network_scope": str(network.get("Scope") or ""),
            prefix + "network_internal": "true" if network.get("Internal") is True else "false",
            prefix + "network_ingress": "true" if network.get("Ingress") is True else "false",
        }
        entry.update(prefixed_labels(network.get("Labels"), prefix + "network_label_"))
        labels[nid] = entry
    return labels


# Container event actions that change nothing a target shows.
_IGNORED_ACTIONS = (
    "exec_",
    "health_status",
    "top",
    "attach",
    "resize",
    "export",
    "commit",
    "copy",
    "archive-path",
    "extract-to-dir",
    "detach",
)
DEBOUNCE = 0.1


EC = TypeVar("EC", bound="EngineConfig")


class EngineWatcher(RefreshDiscoverer[EC]):
    """A Docker mechanism: refreshes on its interval and on relevant ``/events``.

    Subclasses implement :meth:`list_groups` (the full set, or raise) and
    :meth:`event_types`. If the event stream drops, a full refresh follows its
    reconnection, since events may have been missed in between.

    Some engine changes trail their event (swarm's orchestrator sets tasks' desired
    state and reports their state after the service event), so a subclass may set
    ``settle_after_event`` (refresh every ``settle_interval`` for that long after each
    event) and ``settling`` (objects still converging: keep refreshing, but no longer
    than ``settle_window`` after the last event).
    """

    settle_interval: ClassVar[float] = 0.5
    settle_after_event: float = 0.0
    # A task that cannot be placed stays "pending" forever and must not keep sdbridge
    # refreshing twice a second: settling refreshes stop this long after the last event.
    settle_window: ClassVar[float] = 30.0

    def __init__(self, config: EC, context: DiscoveryContext) -> None:
        super().__init__(config, context)
        self.client = EngineClient(config, timeout=min(config.refresh_interval, 30.0))
        self.settling = False
        self._pending: asyncio.TimerHandle | None = None
        self._last_event = 0.0

    async def list_groups(self, client: EngineClient) -> list[TargetGroup]:
        """The full current set of target groups."""
        raise NotImplementedError

    def event_types(self) -> list[str]:
        """The engine event types that can change the targets."""
        raise NotImplementedError

    def valid_group(
        self, source: str, targets: Iterable[LabelSet], *, where: str = "", hint: str = ""
    ) -> TargetGroup:
        """A group of the targets with a valid address; the others are reported and skipped.

        ``where`` names the object in the report (default: ``source``); ``hint`` follows
        the problem, e.g. what to check.
        """
        valid = []
        for target in targets:
            if is_valid_address(target[ADDRESS_LABEL]):
                valid.append(target)
            else:
                self.context.record_invalid(
                    where or source, f"address {target[ADDRESS_LABEL]!r} is not host:port{hint}"
                )
        return TargetGroup(source=source, targets=tuple(valid))

    async def refresh(self) -> list[TargetGroup]:
        """List everything from the engine (see :meth:`list_groups`)."""
        return await self.list_groups(self.client)

    async def run(self, send: Send) -> None:
        """Refresh and follow events until cancelled; close the connections after."""
        try:
            await super().run(send)
        finally:
            if self._pending is not None:
                self._pending.cancel()
            await self.client.close()

    async def watch(self) -> None:
        """Follow engine events (if enabled) and refresh while objects converge."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._settle_loop())
            if self.config.watch_events:
                tasks.create_task(self._follow_events())

    async def _settle_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settle_interval)
            since = loop.time() - self._last_event
            if since < self.settle_after_event or (self.settling and since < self.settle_window):
                self.request_refresh()

    def _schedule(self) -> None:
        """Refresh soon; a burst of events within DEBOUNCE makes one refresh."""
        self._last_event = asyncio.get_running_loop().time()
        if self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(DEBOUNCE, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self.request_refresh()

    async def _follow_events(self) -> None:
        backoff = Backoff(0.5, 30.0)
        lost: str | None = None
        while True:
            connected = False

            def on_connect() -> None:
                nonlocal connected, lost
                connected = True
                backoff.reset()
                if lost is not None:
                    self.log.info("event stream of %s restored; resyncing", self.client.host)
                    lost = None
                # Events may have been missed before (or while) subscribing: resync.
                self._schedule()

            try:
                async for event in self.client.events(self.event_types(), on_connect):
                    if _relevant(event):
                        self._schedule()
                reason = "the engine closed the event stream"
            except BackendError as exc:
                reason = str(exc)
            if connected:
                self._schedule()  # a full resync, in case the stream ended on a change
            if lost is None:
                self.log.warning("lost the event stream of %s: %s", self.client.host, reason)
                lost = reason
            await asyncio.sleep(backoff.next_delay())


def _relevant(event: Mapping[str, Any]) -> bool:
    action = str(event.get("Action") or event.get("status") or "")
    return event.get("Type") != "container" or not action.startswith(_IGNORED_ACTIONS)
