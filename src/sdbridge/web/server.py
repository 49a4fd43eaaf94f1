"""Start and stop the web server: listen address, TLS and basic auth.

``sdbridge run`` calls :func:`start_server` before starting the jobs, so a bad
``--web.listen-address`` or ``--web.config.file`` stops it at once with a clear error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ..daemon import Daemon
from ..errors import ConfigError
from .app import RouteHook, create_app
from .webconfig import WebSettings, load_web_config

log = logging.getLogger("sdbridge.web")

DEFAULT_LISTEN_ADDRESS = "127.0.0.1:9099"
# Prometheus fleets poll together; a deep backlog keeps a burst from stalling in SYN retries.
LISTEN_BACKLOG = 1024


def parse_listen_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` (``[::1]:9099`` for IPv6; an empty host means all addresses)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--web.listen-address {address!r} must be host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass
class Server:
    """A running web server; :meth:`close` stops it."""

    runner: web.AppRunner
    settings: WebSettings
    host: str
    port: int

    @property
    def url(self) -> str:
        """The base URL clients use, e.g. ``https://127.0.0.1:9099``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.settings.scheme}://{host}:{self.port}"

    async def close(self) -> None:
        """Stop listening and close open connections."""
        await self.runner.cleanup()


async def start_server(
    daemon: Daemon,
    listen_address: str = DEFAULT_LISTEN_ADDRESS,
    web_config_file: Path | None = None,
    *,
    route_hooks: Iterable[RouteHook] = (),
) -> Server:
    """Serve ``daemon``'s web app on ``listen_address`` (port 0 picks a free port).

    Raises ConfigError for a malformed web config or an address that cannot be bound.
    """
    settings = load_web_config(web_config_file)
    host, port = parse_listen_address(listen_address)
    app = create_app(daemon, settings=settings, route_hooks=route_hooks)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(
        runner,
        host,
        port,
        ssl_context=settings.ssl_context,
        reuse_address=True,
        backlog=LISTEN_BACKLOG,
    )
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {listen_address}: {exc.strerror or exc}") from exc
    bound = _bound_port(runner, port)
    server = Server(runner, settings, host, bound)
    auth = f", basic auth for {len(settings.users)} user(s)" if settings.users else ""
    log.debug("listening on %s%s", server.url, auth)
    return server


def _bound_port(runner: web.AppRunner, requested: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return requested


__all__ = [
    "DEFAULT_LISTEN_ADDRESS",
    "Server",
    "parse_listen_address",
    "start_server",
]
