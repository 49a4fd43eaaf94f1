"""The aiohttp application: ``/sd/<job>``, ``/metrics``, ``/-/healthy``, ``/-/ready``, ``/-/reload``."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from ..daemon import Daemon
from ..errors import ConfigError

DAEMON_KEY = web.AppKey("daemon", Daemon)
JSON_CONTENT_TYPE = "application/json"


async def http_sd(request: web.Request) -> web.Response:
    """Serve a job's prepared snapshot in Prometheus's http_sd format."""
    daemon = request.app[DAEMON_KEY]
    name = request.match_info["job"]
    job = daemon.jobs.get(name)
    if job is None:
        return web.Response(status=404, text=f"no job named {name!r}\n")
    snapshot = job.snapshot
    if snapshot is None:
        return web.Response(status=503, text=f"job {name!r} has not completed its first sync\n")
    return web.Response(body=snapshot.body, headers={"Content-Type": JSON_CONTENT_TYPE})


async def healthy(_: web.Request) -> web.Response:
    """Liveness: the process serves requests."""
    return web.Response(text="sdbridge is Healthy.\n")


async def ready(request: web.Request) -> web.Response:
    """Readiness: every job has synced or loaded its last-known-good state."""
    if request.app[DAEMON_KEY].ready:
        return web.Response(text="sdbridge is Ready.\n")
    return web.Response(status=503, text="Service Unavailable\n")


async def reload(request: web.Request) -> web.Response:
    """Reload the config; an invalid one is refused and the running one stays."""
    try:
        await request.app[DAEMON_KEY].reload()
    except ConfigError as exc:
        return web.Response(status=500, text=f"failed to reload config: {exc}\n")
    return web.Response(text="config reloaded\n")


async def metrics_handler(_: web.Request) -> web.Response:
    """sdbridge's own metrics in the Prometheus text format."""
    body = generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(daemon: Daemon) -> web.Application:
    """Build the web application around a daemon."""
    app = web.Application()
    app[DAEMON_KEY] = daemon
    app.router.add_get("/sd/{job}", http_sd)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", reload)
    app.router.add_put("/-/reload", reload)
    return app
