"""A small Docker Engine API client, shared by ``dockerswarm`` and ``docker``.

It speaks HTTP over the engine's unix socket or over TCP, optionally with TLS and HTTP
auth, through the shared HTTP client layer (discovery/_http), negotiates the API version with ``GET /version``
the way the Docker CLI does (the lower of the engine's version and ours), and follows
``GET /events`` as a stream of JSON lines.

Every failure leaves this module as a :class:`~sdbridge.errors.BackendError` that names
the engine (its ``host``), the request, and what to do about it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Self
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import BackendError, redact_url
from ._http import (
    Authorization,
    BasicAuthConfig,
    HTTPClient,
    HTTPClientConfig,
    HTTPStatusError,
    TLSConfig,
    body_message,
    os_error,
    read_lines,
)
from .base import RefreshConfig

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
    basic_auth: BasicAuthConfig | None = Field(None, description="HTTP basic auth (tcp/https)")
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
    """One engine connection pool on the shared HTTP layer; close with :meth:`close`."""

    def __init__(self, config: EngineConfig, *, timeout: float) -> None:
        self.host = config.host
        self._timeout = timeout
        self.api_version: str | None = None
        parts = urlsplit(config.host)
        socket_path: str | None = None
        if parts.scheme == "unix":
            socket_path = parts.path
            # The host part is ignored on a socket; Docker's own client uses this name.
            self._base = "http://docker"
        else:
            secure = parts.scheme == "https" or (
                parts.scheme == "tcp" and config.tls_config is not None
            )
            netloc = parts.netloc.rsplit("@", 1)[-1]
            self._base = f"{'https' if secure else 'http'}://{netloc}"
        self.http = HTTPClient(
            HTTPClientConfig(
                tls_config=config.tls_config,
                basic_auth=config.basic_auth,
                authorization=config.authorization,
            ),
            name=f"Docker Engine at {redact_url(config.host)}",
            timeout=timeout,
            connect_timeout=timeout,
            headers={"User-Agent": USER_AGENT},
            unix_socket=socket_path,
            explain=self._explain,
        )

    async def close(self) -> None:
        """Close the connection pool."""
        await self.http.close()

    def _explain(self, exc: BaseException) -> str | None:
        """A connection failure, in words that say what to check."""
        cause = os_error(exc)
        if isinstance(cause, FileNotFoundError):
            return "the socket does not exist (is dockerd running? is host right?)"
        if isinstance(cause, PermissionError):
            return (
                "permission denied on the socket (run sdbridge as a user in the docker "
                "group, or as root)"
            )
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused (is dockerd running?)"
        return None

    def _url(self, path: str, versioned: bool) -> str:
        prefix = f"/v{self.api_version}" if versioned and self.api_version else ""
        return f"{self._base}{prefix}{path}"

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
        try:
            answer = await self.http.fetch(
                "GET",
                self._url(path, versioned),
                params=params,
                where=f"cannot reach Docker Engine at {self.host}",
                check=False,
            )
        except BackendError:
            # The engine may come back as another version: negotiate again next time.
            self.api_version = None
            raise
        if answer.status >= 400:
            raise HTTPStatusError(
                f"Docker Engine at {self.host} answered GET {path} with HTTP "
                f"{answer.status}: {body_message(answer.body, 500)}{_hint(answer.status, path)}",
                status=answer.status,
            )
        return answer.json(f"Docker Engine at {self.host}: GET {path}")

    async def events(
        self, types: list[str], on_connect: Callable[[], None] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Follow ``GET /events`` for the given object types; ends when the stream drops.

        ``on_connect`` is called once the engine has accepted the stream.
        """
        await self.negotiate()
        params = {"filters": encode_filters({"type": types}) or ""}
        try:
            async with self.http.stream(
                "GET",
                self._url("/events", True),
                params=params,
                where=f"Docker Engine at {self.host}: GET /events",
            ) as response:
                if on_connect is not None:
                    on_connect()
                where = f"Docker Engine at {self.host}: event stream broke"
                async for line in read_lines(response, where=where):
                    try:
                        event = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        continue  # a torn line is only a hint lost; the next refresh corrects it
                    if isinstance(event, dict):
                        yield event
        except HTTPStatusError:
            raise
        except BackendError:
            self.api_version = None
            raise


def _hint(status: int, path: str) -> str:
    if status == 400:
        return " (check the filters in the config)"
    if status == 503 and path in ("/services", "/tasks", "/nodes"):
        return " (dockerswarm_sd needs a swarm manager: run it against a manager node)"
    return ""
