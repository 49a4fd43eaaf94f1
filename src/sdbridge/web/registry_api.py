"""The built-in registry's HTTP API, on sdbridge's web server.

==========================================================  =====================================
``PUT    /api/v1/registry/<service>/<instance>``             register or replace; body
                                                            ``{"address": "host:port",
                                                            "labels": {...}, "ttl": "30s"}``
``POST   /api/v1/registry/<service>/<instance>/heartbeat``   renew the ttl (404: register again)
``DELETE /api/v1/registry/<service>/<instance>``             deregister
``GET    /api/v1/registry[/<service>[/<instance>]]``         list
==========================================================  =====================================

Answers use Prometheus's API envelope: ``{"status": "success", "data": ...}`` or
``{"status": "error", "errorType": ..., "error": ..., "field": ...}``. Every invalid
request is refused with a 4xx that says what to fix, and leaves the store unchanged.

When ``registry.write_token_file`` is set, writes must present
``Authorization: Bearer <token>`` (401 without it, 403 when wrong); that token replaces
the read side's basic auth for writes, so a registering script needs no password.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from .. import metrics
from ..daemon import Daemon
from ..defaults import reachable_address
from ..errors import ConfigError, SdbridgeError
from ..registry.config import API_PREFIX, RegistryConfig
from ..registry.instance import (
    RegistrationError,
    RegistryStore,
    check_address,
    check_instance,
    check_labels,
    check_service,
    check_ttl,
)
from .auth import AUTH_EXEMPT_KEY
from .keys import FLAGS_KEY, WRITE_GUARD_KEY
from .limits import ACCEPT_ERROR_LOG_INTERVAL, RateLimitedLog

log = logging.getLogger("sdbridge.registry")

PREFIX = API_PREFIX
MAX_BODY_BYTES = 64 * 1024
SELF_SERVICE = "sdbridge"
WRITE_ROUTE_NAMES = frozenset({"registry-put", "registry-delete", "registry-heartbeat"})
_BODY_FIELDS = frozenset({"address", "labels", "ttl"})
NEEDS_TOKEN = (
    "registry writes are refused: sdbridge listens on a non-loopback address and "
    "registry.write_token_file is not set; put a random token in a file, set "
    "registry.write_token_file to it, and send 'Authorization: Bearer <token>'"
)


class RegistryAPI:
    """The API's state: the daemon (for its config and its registry store), the write token."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._token: tuple[tuple[Path, int, int], str] | None = None
        self._token_error: str | None = None  # the last one logged
        self._self_key: tuple[str, str] | None = None
        self._self_task: asyncio.Task[None] | None = None

    @property
    def config(self) -> RegistryConfig:
        """The ``registry:`` section of the running config."""
        config = getattr(self.daemon.config, "registry", None)
        return config if isinstance(config, RegistryConfig) else RegistryConfig()

    async def store(self) -> RegistryStore:
        """The daemon's registry store in the running config's ``data_dir``."""
        return await self.daemon.registry_store.get(self.daemon.config.global_.data_dir)

    async def close(self) -> None:
        """Deregister sdbridge itself; the store stays the daemon's to close."""
        if self._self_task is not None:
            self._self_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._self_task
        store = self.daemon.registry_store.current
        if self._self_key is not None and store is not None:
            with contextlib.suppress(SdbridgeError):
                await store.delete(*self._self_key)

    # --- the write token ------------------------------------------------------------

    def write_token(self) -> str | None:
        """The token writes must present, re-read when its file changes; None if not required.

        Raises ConfigError when the file is configured but unreadable or empty.
        """
        path = self.config.write_token_file
        if path is None:
            return None
        try:
            info = os.stat(path)
            stamp = (path, info.st_mtime_ns, info.st_size)
            if self._token is not None and self._token[0] == stamp:
                return self._token[1]
            token = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"registry.write_token_file {path}: cannot read it: {exc}") from exc
        if not token:
            raise ConfigError(f"registry.write_token_file {path} is empty")
        self._token = (stamp, token)
        return token

    def check_write(self, request: web.Request) -> web.Response | None:
        """None if ``request`` may write, else the 401/403/503 answer."""
        try:
            token = self.write_token()
        except ConfigError as exc:
            if str(exc) != self._token_error:  # once per problem, not once per write
                self._token_error = str(exc)
                log.error("refusing registry writes until the token file is fixed: %s", exc)
            return _error(503, "unavailable", "the registry's write token file cannot be read")
        if self._token_error is not None:
            self._token_error = None
            log.info("registry write token file readable again; accepting writes")
        if token is None:
            return self._check_tokenless_write(request)
        scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            response = _error(
                401, "unauthorized", "registry writes need 'Authorization: Bearer <token>'"
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="sdbridge registry"'
            return response
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            return _error(403, "forbidden", "wrong registry write token")
        return None

    def _check_tokenless_write(self, request: web.Request) -> web.Response | None:
        guard = request.app[WRITE_GUARD_KEY]
        if not guard.loopback_only:
            return _error(403, "forbidden", NEEDS_TOKEN)
        refused = guard.refusal(request)
        return None if refused is None else _error(403, "forbidden", refused)

    # --- sdbridge's own registration ------------------------------------------------

    async def register_self(self, url: str) -> None:
        """Register sdbridge's own ``/metrics`` at ``url`` (its base URL) and keep it alive."""
        scheme, _, address = url.partition("://")
        address = reachable_address(address)
        labels = {"__scheme__": scheme} if scheme == "https" else {}
        ttl = self.config.default_ttl
        store = await self.store()
        await store.put(SELF_SERVICE, address, address, labels, ttl)
        self._self_key = (SELF_SERVICE, address)
        self._self_task = asyncio.create_task(self._keep_self(labels, ttl), name="registry-self")
        log.info("registered sdbridge itself as %s/%s", SELF_SERVICE, address)

    async def _keep_self(self, labels: dict[str, str], ttl: float) -> None:
        assert self._self_key is not None
        service, address = self._self_key
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                store = await self.store()
                if await store.heartbeat(service, address) is None:
                    await store.put(service, address, address, labels, ttl)
            except SdbridgeError as exc:
                log.warning("cannot renew sdbridge's own registration: %s", exc)


API_KEY = web.AppKey("registry_api", RegistryAPI)


# --- handlers ---------------------------------------------------------------------------


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps({"status": "success", "data": data}),
        status=status,
        content_type="application/json",
    )


def _error(status: int, error_type: str, message: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"status": "error", "errorType": error_type, "error": message}
    if field is not None:
        body["field"] = field
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _bad(exc: RegistrationError) -> web.Response:
    return _error(400, "bad_data", str(exc), exc.field)


# Any client can trigger this while the store is broken: one line per interval.
_unavailable_log = RateLimitedLog(log, ACCEPT_ERROR_LOG_INTERVAL)


def _unavailable(exc: SdbridgeError) -> web.Response:
    _unavailable_log.log(logging.ERROR, "registry request failed: %s", exc)
    return _error(503, "unavailable", f"the registry store is unavailable: {exc}")


def _path_key(request: web.Request) -> tuple[str, str]:
    return (
        check_service(request.match_info["service"]),
        check_instance(request.match_info["instance"]),
    )


async def _read_body(request: web.Request) -> bytes | web.Response:
    """The body, or a 413 answer once it exceeds MAX_BODY_BYTES (chunked bodies too).

    A body slower than ``--web.read-timeout`` is answered 408.
    """
    too_big = _error(413, "too_large", f"request body exceeds {MAX_BODY_BYTES} bytes")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return too_big
    chunks = []
    size = 0
    limit = request.app[FLAGS_KEY].limits.read_timeout
    try:
        async with asyncio.timeout(limit or None):
            while chunk := await request.content.read(MAX_BODY_BYTES + 1):
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    return too_big
                chunks.append(chunk)
    except TimeoutError:
        slow = _error(408, "timeout", "the request body arrived slower than --web.read-timeout")
        # Send it now and close: aiohttp would otherwise linger, reading the rest.
        await slow.prepare(request)
        await slow.write_eof()
        request.protocol.force_close()
        return slow
    except ConnectionError:
        # The client hung up mid-body: nothing to answer, nothing to log.
        return _error(400, "bad_data", "the client closed the connection before the body ended")
    return b"".join(chunks)


def parse_registration(body: bytes, config: RegistryConfig) -> tuple[str, dict[str, str], float]:
    """A PUT body → (address, labels, ttl); raise RegistrationError naming the bad field."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RegistrationError(f"the body is not valid JSON: {exc}", field="body") from None
    if not isinstance(data, dict):
        raise RegistrationError(
            'the body must be a JSON object: {"address": "host:port", "labels": {}, "ttl": "30s"}',
            field="body",
        )
    unknown = sorted(set(data) - _BODY_FIELDS)
    if unknown:
        raise RegistrationError(
            f"unknown field(s) {', '.join(map(repr, unknown))}; expected address, labels, ttl",
            field=unknown[0] or "body",
        )
    address = check_address(data.get("address"))
    labels = check_labels(data.get("labels"))
    ttl = check_ttl(
        data.get("ttl"), default=config.default_ttl, minimum=config.min_ttl, maximum=config.max_ttl
    )
    return address, labels, ttl


async def put_instance(request: web.Request) -> web.Response:
    """Register or replace an instance: 201 when new, 200 when replaced."""
    api = request.app[API_KEY]
    refused = api.check_write(request)
    if refused is not None:
        return refused
    body = await _read_body(request)
    if isinstance(body, web.Response):
        return body
    try:
        service, instance = _path_key(request)
        address, labels, ttl = parse_registration(body, api.config)
    except RegistrationError as exc:
        return _bad(exc)
    try:
        store = await api.store()
        registered, created = await store.put(service, instance, address, labels, ttl)
    except SdbridgeError as exc:
        return _unavailable(exc)
    return _json(registered.to_json(), 201 if created else 200)


def _write_target(request: web.Request) -> tuple[RegistryAPI, str, str] | web.Response:
    """The API and the ``(service, instance)`` a write names, or the refusal to send."""
    api = request.app[API_KEY]
    refused = api.check_write(request)
    if refused is not None:
        return refused
    try:
        service, instance = _path_key(request)
    except RegistrationError as exc:
        return _bad(exc)
    return api, service, instance


async def _store_write(
    request: web.Request, operation: Callable[[RegistryStore, str, str], Awaitable[Any]]
) -> tuple[str, str, Any] | web.Response:
    """Run a write on the instance ``request`` names: (service, instance, result) or a refusal."""
    target = _write_target(request)
    if isinstance(target, web.Response):
        return target
    api, service, instance = target
    try:
        return service, instance, await operation(await api.store(), service, instance)
    except SdbridgeError as exc:
        return _unavailable(exc)


async def heartbeat(request: web.Request) -> web.Response:
    """Renew an instance's ttl; 404 when it is not registered (any more)."""
    outcome = await _store_write(request, lambda store, s, i: store.heartbeat(s, i))
    if isinstance(outcome, web.Response):
        return outcome
    service, instance, renewed = outcome
    if renewed is None:
        return _error(
            404, "not_found", f"{service}/{instance} is not registered; register it again with PUT"
        )
    return _json(renewed.to_json())


async def delete_instance(request: web.Request) -> web.Response:
    """Deregister an instance; 404 when it is not registered."""
    outcome = await _store_write(request, lambda store, s, i: store.delete(s, i))
    if isinstance(outcome, web.Response):
        return outcome
    service, instance, deleted = outcome
    if not deleted:
        return _error(404, "not_found", f"{service}/{instance} is not registered")
    return _json({"service": service, "instance": instance, "deleted": True})


async def list_instances(request: web.Request) -> web.Response:
    """Every registered instance, or those of one service."""
    service = request.match_info.get("service")
    try:
        if service is not None:
            check_service(service)
        store = await request.app[API_KEY].store()
    except RegistrationError as exc:
        return _bad(exc)
    except SdbridgeError as exc:
        return _unavailable(exc)
    return _json({"instances": [i.to_json() for i in store.instances(service)]})


async def get_instance(request: web.Request) -> web.Response:
    """One registered instance, or 404."""
    try:
        key = _path_key(request)
        store = await request.app[API_KEY].store()
    except RegistrationError as exc:
        return _bad(exc)
    except SdbridgeError as exc:
        return _unavailable(exc)
    found = store.get(key)
    if found is None:
        return _error(404, "not_found", f"{key[0]}/{key[1]} is not registered")
    return _json(found.to_json())


async def write_health(request: web.Request) -> web.Response:
    """200 while the registry's backend commits writes, 503 with the reason while it cannot.

    Apart from ``/-/ready`` (every job synced, last-known-good included), which stays 200
    while etcd is down so that http_sd reads keep being served: a load balancer sends
    registry writes only to replicas whose write health is 200.
    """
    config = request.app[API_KEY].config
    try:
        store = await request.app[API_KEY].store()
        problem = await store.check_writable()
    except SdbridgeError as exc:
        problem = str(exc)
        store = None
    else:
        metrics.REGISTRY_WRITABLE.set(0 if problem else 1)
    details: dict[str, Any] = {"backend": config.backend}
    if store is not None:
        details["instances"] = len(store)
        invalid = getattr(store, "invalid_keys", None)
        if invalid is not None:
            details["invalid_keys"] = len(invalid)
        watch_error = getattr(store, "watch_error", None)
        if watch_error:
            details["watch_error"] = watch_error
    details["writable"] = not problem
    if problem:
        metrics.REGISTRY_WRITABLE.set(0)
        body = {
            "status": "error",
            "errorType": "unavailable",
            "error": f"registry writes cannot be committed: {problem}",
            "data": details,
        }
        return web.Response(body=orjson.dumps(body), status=503, content_type="application/json")
    return _json(details)


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _counted(operation: str, handler: Handler) -> Handler:
    """``handler``, counting its answers in ``sdbridge_registry_requests_total``."""

    async def counted(request: web.Request) -> web.Response:
        response = await handler(request)
        metrics.REGISTRY_REQUESTS.labels(operation=operation, code=str(response.status)).inc()
        return response

    counted.__doc__ = handler.__doc__
    return counted


def add_registry_routes(app: web.Application, daemon: Daemon) -> RegistryAPI:
    """Add the registry API to ``app``; its store opens on first use and closes on cleanup."""
    api = RegistryAPI(daemon)
    app[API_KEY] = api
    one = PREFIX + "/{service}/{instance}"
    app.router.add_get(PREFIX, _counted("get", list_instances))
    # Before /{service}: the path names the health check, not a service called "health".
    app.router.add_get(PREFIX + "/health", _counted("health", write_health))
    app.router.add_get(PREFIX + "/{service}", _counted("get", list_instances))
    app.router.add_get(one, _counted("get", get_instance))
    app.router.add_put(one, _counted("put", put_instance), name="registry-put")
    app.router.add_delete(one, _counted("delete", delete_instance), name="registry-delete")
    app.router.add_post(
        one + "/heartbeat", _counted("heartbeat", heartbeat), name="registry-heartbeat"
    )
    exempt = app.get(AUTH_EXEMPT_KEY)
    if exempt is not None:
        exempt.append(authorizes_itself)  # token-guarded writes skip basic auth

    async def startup(_: web.Application) -> None:
        # A missing or empty token file fails the start, clearly.
        if api.write_token() is None and not app[WRITE_GUARD_KEY].loopback_only:
            log.warning(NEEDS_TOKEN)

    async def cleanup(_: web.Application) -> None:
        await api.close()

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    return api


def registry_routes(daemon: Daemon) -> Callable[[web.Application], None]:
    """A route hook for :func:`sdbridge.web.app.create_app` that adds the registry API."""

    def hook(app: web.Application) -> None:
        add_registry_routes(app, daemon)

    return hook


async def server_listening(app: web.Application, url: str) -> None:
    """Call once the server listens at ``url``: registers sdbridge itself if configured."""
    api = app.get(API_KEY)
    if api is not None and api.config.register_self:
        await api.register_self(url)


def authorizes_itself(request: web.Request) -> bool:
    """Whether ``request`` is a registry write that the write token guards instead of basic auth."""
    route = request.match_info.route
    if route.name not in WRITE_ROUTE_NAMES:
        return False
    api = request.app.get(API_KEY)
    return api is not None and api.config.write_token_file is not None
