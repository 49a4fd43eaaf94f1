"""Start and stop the web server: listen address, TLS and basic auth.

``sdbridge run`` calls :func:`start_server` before starting the jobs, so a bad
``--web.listen-address`` or ``--web.config.file`` stops it at once with a clear error.
Every successful config reload also re-reads the web config file (users, headers,
certificate and key); an invalid one is logged and the running one stays.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from ..config import DEFAULT_MAX_CONFIG_SIZE
from ..daemon import Daemon
from ..errors import ConfigError
from .app import RouteHook, create_app
from .flags import WebFlags
from .keys import AUTH_KEY, HEADERS_KEY
from .limits import AcceptErrorLog, ClientErrorFilter, ConnectionGuard
from .webconfig import WebSettings, load_web_config

log = logging.getLogger("sdbridge.web")

DEFAULT_LISTEN_ADDRESS = "127.0.0.1:9099"
# Prometheus fleets poll together; a deep backlog keeps a burst from stalling in SYN retries.
LISTEN_BACKLOG = 1024
_YEAR = 365 * 86400.0


def parse_listen_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` (``[::1]:9099`` for IPv6; an empty host means all addresses)."""
    host, sep, port = address.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit() and len(port) <= 5) or int(port) > 65535:
        raise ConfigError(
            f"--web.listen-address {address!r} must be host:port with a port in 0..65535 "
            "(0 picks a free port)"
        )
    return host.strip("[]") or "0.0.0.0", int(port)


class _LiveTLS:
    """Hands every new TLS handshake the newest context, so certificates can be rotated.

    The listening socket keeps its first context; its SNI callback (called for every
    ClientHello, with or without a server name) swaps in the current one, as the
    exporter-toolkit's GetConfigForClient does.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self.current = context
        context.sni_callback = self._select

    def _select(self, conn: ssl.SSLObject, _name: str | None, context: ssl.SSLContext) -> None:
        if self.current is not context:
            conn.context = self.current


class _GuardedSite(web.TCPSite):
    """A TCP site whose connections go through a :class:`.limits.ConnectionGuard`."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, **kwargs: Any) -> None:
        self.guard: ConnectionGuard = kwargs.pop("guard")
        self._tls_timeout: float = kwargs.pop("tls_timeout")
        super().__init__(runner, host, port, **kwargs)

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        server = self._runner.server
        assert server is not None
        guard = self.guard
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: guard.wrap(server()),
            self._host,
            self._port,
            ssl=self._ssl_context,
            ssl_handshake_timeout=(self._tls_timeout or None) if self._ssl_context else None,
            backlog=self._backlog,
            reuse_address=True,
        )


@dataclass
class Server:
    """A running web server; :meth:`close` stops it."""

    runner: web.AppRunner
    settings: WebSettings
    host: str
    port: int
    web_config_file: Path | None = None
    _tls: _LiveTLS | None = None
    max_config_size: int = DEFAULT_MAX_CONFIG_SIZE
    guard: ConnectionGuard | None = None

    def reload_web_config(self) -> None:
        """Re-read the web config file: users, headers, certificate and key.

        Raises ConfigError, and keeps the running settings, if the file is invalid or
        would switch TLS on or off (which needs a restart).
        """
        if self.web_config_file is None:
            return
        new = load_web_config(self.web_config_file, max_size=self.max_config_size)
        if (new.ssl_context is None) != (self._tls is None):
            raise ConfigError(
                f"{self.web_config_file}: turning TLS on or off needs a restart of sdbridge"
            )
        if self._tls is not None and new.ssl_context is not None:
            self._tls.current = new.ssl_context
        app = self.runner.app
        app[AUTH_KEY].replace_users(new.users)
        headers = app[HEADERS_KEY]
        headers.clear()
        headers.update(new.headers)
        self.settings = new

    def _reload_after_config_reload(self, _: Daemon) -> None:
        # A failure fails the reload: the daemon logs and counts it.
        try:
            self.reload_web_config()
        except ConfigError as exc:
            raise ConfigError(
                f"web config reload failed, the running web config stays: {exc}", errors=exc.errors
            ) from None
        if self.web_config_file is not None:
            log.info("web config reloaded from %s", self.web_config_file)

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
    max_config_size: int = DEFAULT_MAX_CONFIG_SIZE,
    flags: WebFlags | None = None,
) -> Server:
    """Serve ``daemon``'s web app on ``listen_address`` (port 0 picks a free port).

    Raises ConfigError for a malformed web config or an address that cannot be bound.
    """
    flags = flags or WebFlags()
    limits = flags.limits
    settings = load_web_config(web_config_file, max_size=max_config_size)
    host, port = parse_listen_address(listen_address)
    app = create_app(
        daemon, settings=settings, route_hooks=route_hooks, flags=flags, listen_host=host
    )
    # aiohttp's keep-alive timeout is Prometheus's idle timeout: --web.read-timeout
    # (0 turns it off; aiohttp's own 0 would end keep-alive, so a year stands in).
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=limits.read_timeout or _YEAR,
    )
    await runner.setup()
    guard = ConnectionGuard(limits)
    site = _GuardedSite(
        runner,
        host,
        port,
        ssl_context=settings.ssl_context,
        backlog=LISTEN_BACKLOG,
        guard=guard,
        tls_timeout=limits.header_deadline,
    )
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {listen_address}: {exc.strerror or exc}") from exc
    bound = _bound_port(runner, port)
    tls = _LiveTLS(settings.ssl_context) if settings.ssl_context is not None else None
    AcceptErrorLog(asyncio.get_running_loop()).install()
    ClientErrorFilter.install()
    server = Server(
        runner, settings, host, bound, web_config_file, tls, max_config_size, guard=guard
    )
    # The web config is re-read with every successful config reload (SIGHUP, /-/reload).
    daemon.on_jobs_changed.append(server._reload_after_config_reload)
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
