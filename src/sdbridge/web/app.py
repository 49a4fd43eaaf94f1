"""The aiohttp application: http_sd, metrics, health, reload, API and UI.

Routes:

- ``GET /sd/<job>``: the job's targets in Prometheus's http_sd format (:mod:`.sd`)
- ``GET /metrics``: sdbridge's own metrics, plus the process and Python collectors
- ``GET /-/healthy``, ``GET /-/ready``, ``POST|PUT /-/reload`` (``--web.enable-lifecycle``)
- ``GET /api/v1/jobs``, ``GET /api/v1/jobs/<job>`` (:mod:`.api`)
- ``GET /api/v1/openapi.json``: the description of ``/api/v1`` (:mod:`.openapi`)
- ``GET /``, ``GET /jobs/<job>``, ``/static/*``: the UI (:mod:`.ui`)

Other parts of sdbridge add their own routes by passing a ``RouteHook`` in
``create_app(..., route_hooks=...)``; each is called once with the app. A hook whose
routes authenticate requests themselves may append a predicate to
``app[AUTH_EXEMPT_KEY]``: requests it accepts skip basic auth.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from ..daemon import Daemon
from ..errors import ConfigError
from ..masking import mask_text
from ..render import Snapshot
from . import api, openapi, ui
from .auth import CredentialChecker
from .flags import WebFlags
from .keys import (
    AUTH_EXEMPT_KEY,
    AUTH_KEY,
    DAEMON_KEY,
    FLAGS_KEY,
    HEADERS_KEY,
    SD_CACHE_KEY,
    SD_CLIENTS_KEY,
    TARGET_INDEX_KEY,
    WRITE_GUARD_KEY,
)
from .sd import JSON_CONTENT_TYPE, ClientTracker, SDCache, make_handler
from .status import TargetIndex
from .webconfig import NO_WEB_CONFIG, WebSettings
from .writeguard import WriteGuard

__all__ = ["AUTH_EXEMPT_KEY", "DAEMON_KEY", "JSON_CONTENT_TYPE", "RouteHook", "create_app"]

RouteHook = Callable[[web.Application], None]
"""Adds routes to the app; called once by :func:`create_app`."""


async def healthy(_: web.Request) -> web.Response:
    """Liveness: the process serves requests."""
    return web.Response(text="sdbridge is Healthy.\n")


async def ready(request: web.Request) -> web.Response:
    """Readiness: every job has synced or loaded its last-known-good state."""
    if request.app[DAEMON_KEY].ready:
        return web.Response(text="sdbridge is Ready.\n")
    return web.Response(status=503, text="Service Unavailable\n")


async def reload(request: web.Request) -> web.Response:
    """Reload the config; an invalid one is refused and the running one stays.

    As Prometheus, only with ``--web.enable-lifecycle`` (403 otherwise); SIGHUP always works.
    """
    if not request.app[FLAGS_KEY].enable_lifecycle:
        return web.Response(status=403, text="Lifecycle API is not enabled.\n")
    refused = request.app[WRITE_GUARD_KEY].refusal(request)
    if refused is not None:
        return web.Response(status=403, text=f"{refused}\n")
    try:
        await request.app[DAEMON_KEY].reload()
    except ConfigError as exc:
        return web.Response(status=500, text=f"failed to reload config: {mask_text(str(exc))}\n")
    return web.Response(text="config reloaded\n")


async def metrics_handler(_: web.Request) -> web.Response:
    """sdbridge's own metrics in the Prometheus text format."""
    body = generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _header_middleware(headers: dict[str, str]) -> Middleware:
    @web.middleware
    async def add_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        if headers:
            response.headers.update(headers)
        return response

    return add_headers


def create_app(
    daemon: Daemon,
    *,
    settings: WebSettings = NO_WEB_CONFIG,
    route_hooks: Iterable[RouteHook] = (),
    flags: WebFlags | None = None,
    listen_host: str = "127.0.0.1",
) -> web.Application:
    """Build the web application around a daemon.

    ``settings`` (from ``--web.config.file``) turns on basic auth and extra headers;
    TLS is applied where the server listens (:func:`.server.start_server`).
    """
    # Both are always installed (and cheap when empty), so a reloaded web config can
    # add headers or turn basic auth on without rebuilding the app.
    headers = dict(settings.headers)
    auth = CredentialChecker(settings.users)
    middlewares: list[Middleware] = [_header_middleware(headers), auth.middleware()]
    app = web.Application(middlewares=middlewares, client_max_size=64 * 1024)
    app[HEADERS_KEY] = headers
    app[AUTH_KEY] = auth
    app[DAEMON_KEY] = daemon
    app[FLAGS_KEY] = flags = flags or WebFlags()
    app[WRITE_GUARD_KEY] = WriteGuard(listen_host, flags.external_hosts)
    app[AUTH_EXEMPT_KEY] = []
    sd_cache = app[SD_CACHE_KEY] = SDCache()
    sd_clients = app[SD_CLIENTS_KEY] = ClientTracker()
    targets = app[TARGET_INDEX_KEY] = TargetIndex()

    def forget_removed_jobs(d: Daemon) -> None:
        sd_cache.retain(set(d.jobs))
        sd_clients.retain(set(d.jobs))
        targets.retain(set(d.jobs))

    daemon.on_jobs_changed.append(forget_removed_jobs)

    async def stop_threads(_: web.Application) -> None:
        auth.close()
        sd_cache.close()

    app.on_cleanup.append(stop_threads)

    def lookup(name: str) -> tuple[bool, Snapshot | None]:
        job = daemon.jobs.get(name)
        return (job is not None, job.snapshot if job is not None else None)

    app.router.add_get("/sd/{job}", make_handler(lookup, sd_cache, sd_clients))
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", reload)
    app.router.add_put("/-/reload", reload)
    api.add_routes(app)
    openapi.add_routes(app)
    ui.add_routes(app)
    for hook in route_hooks:
        hook(app)
    return app
