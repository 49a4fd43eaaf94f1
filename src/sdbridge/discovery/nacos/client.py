"""Nacos's HTTP API on the shared HTTP layer: servers in turn, version, login, token.

A :class:`NacosClient` talks to one server of ``server`` at a time. Before its first
request it finds what the server is (``/v1/console/server/state`` gives 1.x/2.x their
version; a 410 there is 3.x, whose old console API is switched off) and logs in when a
username is set (``/v3/auth/user/login``, falling back to ``/v1/auth/users/login``).
The ``accessToken`` is renewed once 90 % of its ``tokenTtl`` has run, and once on a 403.
A server that fails is dropped: the next refresh starts from the next one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ... import __version__
from ...errors import BackendError, describe, redact_url
from .._http import HTTPClient, HTTPStatusError, Response, read_secret, status_error
from .config import NacosSDConfig

RENEW_AT = 0.9  # of tokenTtl: Nacos's own clients renew within the last tenth


@dataclass(frozen=True)
class Server:
    """The server in use: its API base URL, major version and gRPC address."""

    address: str
    base: str  # scheme://host:port/context-path
    major: int
    version: str
    host: str
    port: int

    def grpc_target(self, grpc_port: int | None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{grpc_port or self.port + 1000}"


class NacosClient:
    """Nacos's HTTP API; every failure is a BackendError naming the server. Close it."""

    def __init__(self, config: NacosSDConfig, count: Callable[[], None]) -> None:
        self.config = config
        self.http = HTTPClient(
            config,
            name="Nacos at " + ", ".join(redact_url(s) for s in config.server),
            timeout=config.request_timeout,
            headers={"Accept": "application/json", "User-Agent": f"sdbridge/{__version__}"},
            limit=config.max_concurrency + 2,
            count_request=count,
        )
        self.server: Server | None = None
        self._next = 0  # index of the server to try first
        self._token: str | None = None
        self._token_renew_at = 0.0
        self.clock: Callable[[], float] = time.monotonic
        self.logins = 0

    async def close(self) -> None:
        await self.http.close()

    # --- servers -----------------------------------------------------------------------

    def _base(self, address: str) -> str:
        url = address if "://" in address else f"{self.config.scheme}://{address}"
        return url.rstrip("/") + self.config.context_path

    def drop_server(self) -> None:
        """Forget the server in use: the next request starts with the next one."""
        if self.server is not None:
            self._next = (self.config.server.index(self.server.address) + 1) % len(
                self.config.server
            )
        self.server = None
        self._token = None

    async def connect(self) -> Server:
        """The server in use, trying each of ``server`` in turn when there is none."""
        if self.server is not None:
            return self.server
        failures = []
        count = len(self.config.server)
        for n in range(count):
            address = self.config.server[(self._next + n) % count]
            try:
                server = await self._detect(address)
                self.server = server
                if self.config.username:
                    await self._login()
            except BackendError as exc:
                self.server = None
                failures.append(describe(exc))
                continue
            self._next = (self._next + n) % count
            return server
        raise BackendError("no Nacos server answered: " + "; ".join(failures))

    async def _detect(self, address: str) -> Server:
        base = self._base(address)
        parts = urlsplit(base)
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
        where = redact_url(base + "/v1/console/server/state")
        answer = await self.http.fetch(
            "GET", base + "/v1/console/server/state", where=where, check=False
        )
        version = ""
        if answer.status == 200:
            data = answer.json()
            version = str(data.get("version") or "") if isinstance(data, dict) else ""
            major = int(version[0]) if version[:1].isdigit() else 1
        elif answer.status == 410:
            major, version = 3, "3.x"  # the old console API, switched off by 3.x
        elif answer.status in (401, 403, 404):
            # Hidden or absent: 3.x answers its client API, older servers 404 there.
            probe = await self.http.fetch(
                "GET",
                base + "/v3/client/ns/instance/list",
                params={"serviceName": "sdbridge-version-probe"},
                check=False,
            )
            major = 3 if probe.status != 404 else 1
        else:
            raise status_error(where, answer.status, answer.body)
        return Server(address, base, major, version or f"{major}.x", host, port)

    # --- auth --------------------------------------------------------------------------

    def _password(self) -> str:
        if self.config.password_file is not None:
            return read_secret(self.config.password_file, "nacos password_file")
        return self.config.password.get_secret_value() if self.config.password else ""

    async def _login(self) -> None:
        server = self.server
        assert server is not None
        form = {"username": self.config.username, "password": self._password()}
        for path in ("/v3/auth/user/login", "/v1/auth/users/login"):
            where = redact_url(server.base + path)
            answer = await self.http.fetch(
                "POST", server.base + path, data=form, where=where, check=False
            )
            if answer.status in (404, 405, 410):
                continue  # not this version's login
            if answer.status != 200:
                raise status_error(where, answer.status, answer.body, " (login refused)")
            data = answer.json()
            token = data.get("accessToken") if isinstance(data, dict) else None
            if not isinstance(token, str) or not token:
                raise BackendError(f"{where}: login answer has no accessToken")
            ttl = data.get("tokenTtl")
            ttl = float(ttl) if isinstance(ttl, int | float) and ttl > 0 else 18000.0
            self._token = token
            self._token_renew_at = self.clock() + ttl * RENEW_AT
            self.logins += 1
            return
        raise BackendError(f"{redact_url(server.base)}: no login API answered (404)")

    async def token(self) -> str | None:
        """A live access token (logging in again when due), or None without auth."""
        if not self.config.username:
            return None
        if self._token is None or self.clock() >= self._token_renew_at:
            await self._login()
        return self._token

    # --- requests ----------------------------------------------------------------------

    async def get(
        self, path: str, params: Sequence[tuple[str, str]], *, accept: tuple[int, ...] = ()
    ) -> Response:
        """GET ``path`` on the server in use, with the token; a 403 logs in again once.

        A status outside 2xx and ``accept`` is an HTTPStatusError; a transport failure
        drops the server so that the next refresh tries the next one.
        """
        server = await self.connect()
        url = server.base + path
        where = redact_url(url)
        for attempt in (1, 2):
            query = list(params)
            token = await self.token()
            if token is not None:
                query.append(("accessToken", token))
            try:
                answer = await self.http.fetch("GET", url, params=query, where=where, check=False)
            except BackendError:
                self.drop_server()
                raise
            # "authorization failed!" is a permission, not a token, problem: no new login.
            denied = b"authorization failed" in answer.body
            if answer.status == 403 and token is not None and attempt == 1 and not denied:
                self._token = None  # expired or revoked before its time: log in again
                continue
            if 200 <= answer.status < 300 or answer.status in accept:
                return answer
            if answer.status >= 500:
                self.drop_server()
            hint = (
                " (check username/password and the user's permissions)"
                if answer.status == 403
                else ""
            )
            raise status_error(where, answer.status, answer.body, hint)
        raise AssertionError("unreachable")

    async def get_json(
        self, path: str, params: Sequence[tuple[str, str]], *, accept: tuple[int, ...] = ()
    ) -> tuple[int, Any]:
        answer = await self.get(path, params, accept=accept)
        if answer.status != 200:
            return answer.status, None
        return 200, answer.json()


def result_data(where: str, body: Any) -> Any:
    """The ``data`` of a v2/v3 ``Result``; a BackendError for a failed one."""
    if not isinstance(body, Mapping) or "code" not in body:
        raise BackendError(f"{where}: not a Nacos Result: {str(body)[:100]!r}")
    if body.get("code") not in (0, 200):
        raise BackendError(f"{where}: Nacos error {body.get('code')}: {body.get('message')}")
    return body.get("data")


__all__ = ["HTTPStatusError", "NacosClient", "Server", "result_data"]
