"""A tiny HTTP forward proxy on loopback, for tests of ``proxy_url`` and ``no_proxy``.

It speaks the two ways a client uses a proxy: an absolute-form request
(``GET http://host:port/path HTTP/1.1``) for plain HTTP, which it forwards with the
request line rewritten to origin-form, and ``CONNECT host:port`` for HTTPS, which it
answers with 200 and then tunnels bytes both ways. It records what it saw (the target,
the Proxy-Authorization header) and refuses any target outside loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Seen:
    """One request the proxy handled."""

    method: str
    target: str  # host:port
    proxy_authorization: str | None


@dataclass
class HTTPProxy:
    """The running proxy: its URL and what it has seen."""

    port: int = 0
    seen: list[Seen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ", 2)
        headers = {}
        for line in header_lines:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            path = ""
        else:
            parts = urlsplit(target)
            host, port = parts.hostname or "", str(parts.port or 80)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.seen.append(Seen(method, f"{host}:{port}", headers.get("proxy-authorization")))
        if not ipaddress.ip_address(host.strip("[]")).is_loopback:
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(host.strip("[]"), port)
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
        else:
            kept = [
                line
                for line in header_lines
                if line and not line.lower().startswith(("proxy-authorization:", "proxy-"))
            ]
            rewritten = "\r\n".join([f"{method} {path or '/'} {version}", *kept]) + "\r\n\r\n"
            upstream_writer.write(rewritten.encode("latin-1"))
        await asyncio.gather(
            _pipe(reader, upstream_writer), _pipe(upstream_reader, writer), return_exceptions=True
        )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@contextlib.asynccontextmanager
async def running_proxy() -> AsyncIterator[HTTPProxy]:
    """A proxy on a free loopback port, closed on exit."""
    proxy = HTTPProxy()
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()
