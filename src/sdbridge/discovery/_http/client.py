"""One aiohttp client for every mechanism that speaks HTTP, with sdbridge's error mapping.

:class:`HTTPClient` builds its session from an :class:`~.options.HTTPClientConfig`
(TLS, basic auth, authorization, OAuth 2.0 client credentials, proxy, redirects) on
first use, and turns every failure into a :class:`~sdbridge.errors.BackendError` whose
message starts with where it happened and holds no secret: no URL userinfo, no token,
no password. A status outside 2xx is an :class:`HTTPStatusError` carrying the status,
so a mechanism can react to it (back off on 429, re-authenticate on 401) and add a hint.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from ...errors import BackendError, describe, redact_url
from .options import HTTPClientConfig, OAuth2, TLSConfig, auth_headers

Params = Mapping[str, str] | Sequence[tuple[str, str]]


class HTTPStatusError(BackendError):
    """The server answered with a status outside 2xx; ``status`` says which."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def status_error(where: str, status: int, body: bytes, hint: str = "") -> HTTPStatusError:
    """``<where>: HTTP <status><hint>: <what the body says>`` as an HTTPStatusError."""
    return HTTPStatusError(f"{where}: HTTP {status}{hint}: {body_message(body)}", status=status)


def body_message(body: bytes, limit: int = 300) -> str:
    """What an error body says: its JSON ``message`` or ``error`` string, else its text."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        for key in ("message", "error"):
            if isinstance(data.get(key), str) and data[key]:
                return str(data[key])[:limit]
    return body.decode("utf-8", "replace").strip()[:limit] or "(empty body)"


Explain = Callable[[BaseException], str | None]
"""A mechanism's own words for a transport failure (e.g. what to check), or None."""


def request_error(
    where: str,
    error: BaseException,
    timeout: float | None = None,
    explain: Explain | None = None,
) -> BackendError:
    """A transport failure (aiohttp, OS, timeout) as a BackendError naming ``where``."""
    if explain is not None and (text := explain(error)) is not None:
        return BackendError(f"{where}: {text}")
    if isinstance(error, TimeoutError) and timeout is not None:
        return BackendError(f"{where}: no answer within {timeout:g}s")
    return BackendError(f"{where}: {describe(error)}")


def os_error(error: BaseException) -> OSError | None:
    """The operating-system error behind ``error`` (its cause chain), if there is one."""
    cause: BaseException | None = error
    while cause is not None:
        if type(cause).__module__ == "builtins" and isinstance(cause, OSError):
            return cause
        cause = cause.__cause__ or getattr(cause, "os_error", None)
    return None


TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)
"""What aiohttp raises when a request cannot complete (mapped by :func:`request_error`)."""


@dataclass(frozen=True, slots=True)
class Response:
    """A complete answer: status, headers and body, and where it came from."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    where: str

    def json(self, what: str | None = None) -> Any:
        """The body as JSON; a BackendError saying that ``what`` (default: the answer
        from ``where``) is not JSON otherwise."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            what = what if what is not None else f"{self.where}: answer"
            raise BackendError(f"{what} is not JSON ({exc}): {self.body[:100]!r}") from exc


class _Default(enum.Enum):
    TIMEOUT = enum.auto()


DEFAULT = _Default.TIMEOUT
"""The client's own timeout (the ``timeout`` it was built with)."""


class HTTPClient:
    """An aiohttp session built from Prometheus's HTTP client options; open lazily.

    ``name`` starts the messages of failures that are not one request's (a bad
    ``tls_config``, the OAuth 2.0 token endpoint). ``timeout`` is a request's total time
    (None: no limit) and ``connect_timeout`` the time to connect. ``unix_socket`` sends
    every request over that socket (the URL's host is then only a name).
    ``count_request`` is called once per request sent, e.g. for a metric; ``explain``
    may word a transport failure in the backend's terms (see :func:`os_error`).
    """

    def __init__(
        self,
        config: HTTPClientConfig | None = None,
        *,
        name: str,
        timeout: float | None = 30.0,
        connect_timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        limit: int = 100,
        unix_socket: str | None = None,
        count_request: Callable[[], None] | None = None,
        explain: Explain | None = None,
    ) -> None:
        self.config = config if config is not None else HTTPClientConfig()
        self.name = name
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.headers = dict(headers or {})
        self._limit = limit
        self._unix_socket = unix_socket
        self._count_request = count_request
        self._explain = explain
        self._session: aiohttp.ClientSession | None = None
        self._oauth2 = (
            _TokenSource(self.config.oauth2, self) if self.config.oauth2 is not None else None
        )
        # aiohttp sends the proxy URL's userinfo as Proxy-Authorization (to the proxy only).
        self._proxy = self.config.proxy_url
        self._no_proxy = _NoProxy(self.config.no_proxy or "")
        tls = self.config.tls_config
        self._request_options: dict[str, Any] = (
            {"server_hostname": tls.server_name} if tls is not None and tls.server_name else {}
        )

    async def __aenter__(self) -> HTTPClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool (and the token endpoint's); the client may reopen."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._oauth2 is not None:
            await self._oauth2.close()

    def session(self) -> aiohttp.ClientSession:
        """The open session, created on first use; BackendError for unreadable TLS files."""
        if self._session is None or self._session.closed:
            self._session = self._new_session(self.config.tls_config, self._limit)
        return self._session

    def _new_session(self, tls: TLSConfig | None, limit: int) -> aiohttp.ClientSession:
        connector: aiohttp.BaseConnector
        if self._unix_socket is not None:
            # A fresh connection per request is cheap on a socket, and it means every
            # request checks the socket path as it is now (not a pooled connection).
            connector = aiohttp.UnixConnector(path=self._unix_socket, force_close=True)
        else:
            context: ssl.SSLContext | bool = True
            if tls is not None:
                try:
                    context = tls.ssl_context()
                except (OSError, ssl.SSLError) as exc:
                    raise BackendError(f"{self.name}: cannot load tls_config: {exc}") from exc
            connector = aiohttp.TCPConnector(ssl=context, limit=limit)
        return aiohttp.ClientSession(
            connector=connector,
            headers=self.headers,
            trust_env=self.config.proxy_from_environment,
        )

    def proxy_for(self, url: str) -> str | None:
        """The proxy a request to ``url`` goes through (None: direct or from the environment)."""
        if self._proxy is None or self._no_proxy.matches(url):
            return None
        return self._proxy

    async def _request_kwargs(
        self, url: str, headers: Mapping[str, str] | None, time_limit: float | None
    ) -> dict[str, Any]:
        merged = dict(auth_headers(self.config.basic_auth, self.config.authorization))
        if self._oauth2 is not None:
            merged["Authorization"] = await self._oauth2.header()
        merged.update(headers or {})
        options: dict[str, Any] = {
            "headers": merged,
            "timeout": aiohttp.ClientTimeout(total=time_limit, sock_connect=self.connect_timeout),
            "allow_redirects": self.config.follow_redirects,
            **self._request_options,
        }
        if (proxy := self.proxy_for(url)) is not None:
            options["proxy"] = proxy
        return options

    async def fetch(
        self,
        method: str,
        url: str,
        *,
        params: Params | None = None,
        data: bytes | Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        time_limit: float | _Default | None = DEFAULT,
        where: str | None = None,
        check: bool = True,
    ) -> Response:
        """Send a request and read the whole answer.

        ``time_limit`` replaces the client's timeout for this request (None: no limit).
        Transport failures are BackendErrors starting with ``where`` (default: the URL
        without userinfo); with ``check``, a status outside 2xx is an HTTPStatusError.
        """
        where = where if where is not None else redact_url(url)
        total = self.timeout if isinstance(time_limit, _Default) else time_limit
        options = await self._request_kwargs(url, headers, total)
        session = self.session()
        if self._count_request is not None:
            self._count_request()
        try:
            async with session.request(
                method, url, params=params, data=data, **options
            ) as response:
                body = await response.read()
                answer = Response(response.status, response.headers, body, where)
        except TRANSPORT_ERRORS as exc:
            raise request_error(where, exc, total, self._explain) from exc
        self._after(answer.status)
        if check and not 200 <= answer.status < 300:
            raise status_error(where, answer.status, body)
        return answer

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        params: Params | None = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        where: str | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Open a response to read as a stream (no total timeout); closed on exit.

        A status outside 2xx is an HTTPStatusError; read the body with
        :func:`~.stream.read_lines`, which maps its failures too.
        """
        where = where if where is not None else redact_url(url)
        options = await self._request_kwargs(url, headers, None)
        session = self.session()
        if self._count_request is not None:
            self._count_request()
        try:
            response = await session.request(method, url, params=params, data=data, **options)
        except TRANSPORT_ERRORS as exc:
            raise request_error(where, exc, None, self._explain) from exc
        try:
            self._after(response.status)
            if not 200 <= response.status < 300:
                try:
                    body = await response.read()
                except TRANSPORT_ERRORS as exc:
                    raise request_error(where, exc) from exc
                raise status_error(where, response.status, body)
            yield response
        finally:
            response.close()

    def _after(self, status: int) -> None:
        if status == 401 and self._oauth2 is not None:
            self._oauth2.invalidate()  # revoked before it expired: fetch a new one next time


class _NoProxy:
    """Prometheus's ``no_proxy`` (Go's httpproxy rules): ``*``, IPs and CIDRs, and domains
    (``example.com`` with its subdomains, ``.example.com`` only its subdomains), each
    host optionally with a ``:port``."""

    def __init__(self, spec: str) -> None:
        self.everything = False
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.addresses: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]] = []
        self.domains: list[tuple[str, bool, int]] = []  # suffix, matches itself, port
        for entry in (e.strip().lower() for e in spec.split(",")):
            if not entry:
                continue
            if entry == "*":
                self.everything = True
                continue
            if "/" in entry:
                with contextlib.suppress(ValueError):
                    self.networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            host, port = _host_port(entry)
            try:
                self.addresses.append((ipaddress.ip_address(host), port))
                continue
            except ValueError:
                pass
            host = host.removeprefix("*")
            if host.startswith("."):
                self.domains.append((host, False, port))
            elif host:
                self.domains.append(("." + host, True, port))

    def matches(self, url: str) -> bool:
        """Whether a request to ``url`` bypasses the proxy."""
        if self.everything:
            return True
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return any(
                (host.endswith(suffix) or (itself and host == suffix[1:]))
                and (not want or want == port)
                for suffix, itself, want in self.domains
            )
        return any(address in network for network in self.networks) or any(
            address == ip and (not want or want == port) for ip, want in self.addresses
        )


def _host_port(entry: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address; port 0 is any."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else 0
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, int(port) if port.isdigit() else 0
    return entry, 0


class _TokenSource:
    """OAuth 2.0 client credentials: a cached access token, fetched again near expiry."""

    # As golang.org/x/oauth2: a token is renewed this long before it expires.
    EXPIRY_MARGIN = 10.0

    def __init__(self, config: OAuth2, owner: HTTPClient) -> None:
        self.config = config
        self.owner = owner
        self.where = f"{owner.name}: oauth2 token endpoint {redact_url(config.token_url)}"
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()
        # As golang.org/x/oauth2's auto-detection: credentials in a basic auth header
        # first; if the endpoint refuses that, in the form, and remember what worked.
        self._in_header: bool | None = None

    def invalidate(self) -> None:
        """Forget the token: the next request fetches a new one."""
        self._token = None

    async def close(self) -> None:
        """Close the token endpoint's connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def header(self) -> str:
        """``Bearer <token>``, fetching a token when there is none or it expires soon."""
        async with self._lock:
            if self._token is None or time.monotonic() >= self._expires:
                await self._fetch()
            assert self._token is not None
            return self._token

    async def _fetch(self) -> None:
        styles = [self._in_header] if self._in_header is not None else [True, False]
        for position, in_header in enumerate(styles):
            status, body = await self._post(in_header)
            if status == 200:
                self._in_header = in_header
                self._accept(body)
                return
            if position + 1 < len(styles) and status in (400, 401):
                continue
            raise status_error(self.where, status, body)

    async def _post(self, in_header: bool) -> tuple[int, bytes]:
        form = {"grant_type": "client_credentials", **self.config.endpoint_params}
        if self.config.scopes:
            form["scope"] = " ".join(self.config.scopes)
        headers = {"Accept": "application/json"}
        secret = self.config.secret()
        if in_header:
            # RFC 6749 2.3.1: both parts are form-encoded before the basic encoding.
            pair = f"{quote(self.config.client_id, safe='')}:{quote(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form.update(client_id=self.config.client_id, client_secret=secret)
        if self._session is None or self._session.closed:
            self._session = self.owner._new_session(self.config.tls_config, 4)
        options: dict[str, Any] = {
            "headers": headers,
            "timeout": aiohttp.ClientTimeout(
                total=self.owner.timeout, sock_connect=self.owner.connect_timeout
            ),
        }
        if (proxy := self.owner.proxy_for(self.config.token_url)) is not None:
            options["proxy"] = proxy
        try:
            async with self._session.post(self.config.token_url, data=form, **options) as answer:
                return answer.status, await answer.read()
        except TRANSPORT_ERRORS as exc:
            raise request_error(self.where, exc, self.owner.timeout) from exc

    def _accept(self, body: bytes) -> None:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        token = data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise BackendError(f"{self.where}: the answer has no access_token")
        assert isinstance(data, dict)
        token_type = data.get("token_type")
        # RFC 6750: the type is case-insensitive; "bearer" is sent as "Bearer".
        kind = "Bearer" if not token_type or str(token_type).lower() == "bearer" else token_type
        self._token = f"{kind} {token}"
        expires_in = data.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else None
        self._expires = (
            time.monotonic() + lifetime - self.EXPIRY_MARGIN if lifetime else float("inf")
        )
