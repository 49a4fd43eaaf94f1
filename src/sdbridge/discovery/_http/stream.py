"""Reading a streamed HTTP answer one line at a time (etcd's watch, Docker's /events).

aiohttp's ``readline`` refuses a line longer than its buffer limit (64 KiB by default),
and one etcd watch message or Docker event can be bigger than that. :func:`read_lines`
has no such limit below ``max_line`` (256 MiB by default), and maps transport failures
to :class:`~sdbridge.errors.BackendError` like the rest of the layer.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator

import aiohttp

from ...errors import BackendError
from .client import TRANSPORT_ERRORS, request_error

MAX_LINE = 256 * 1024 * 1024


async def read_lines(
    response: aiohttp.ClientResponse, *, where: str, max_line: int = MAX_LINE
) -> AsyncIterator[bytes]:
    """The non-blank lines of a streamed body, without their newline; ends at EOF.

    A broken stream is a BackendError starting with ``where``; so is a line longer than
    ``max_line`` bytes (rather than buffering without bound).
    """
    buffer = bytearray()
    scanned = 0  # bytes of ``buffer`` known to hold no newline
    chunks = response.content.iter_any()
    while True:
        try:
            chunk = await anext(chunks, None)
        except TRANSPORT_ERRORS as exc:
            raise request_error(where, exc) from exc
        if chunk is None:
            break
        buffer.extend(chunk)
        start = 0
        search = scanned
        while (end := buffer.find(b"\n", search)) >= 0:
            line = bytes(buffer[start:end])
            start = search = end + 1
            if line.strip():
                yield line
        del buffer[:start]
        scanned = len(buffer)
        if len(buffer) > max_line:
            raise BackendError(f"{where}: a line exceeds {max_line} bytes")
    if buffer.strip():
        yield bytes(buffer)


def enable_tcp_keepalive(response: aiohttp.ClientResponse) -> None:
    """TCP keepalive on a long-lived response's connection: a vanished peer is noticed in
    about a minute (30 s idle, then 3 probes 10 s apart) instead of never."""
    connection = response.connection
    transport = connection.transport if connection is not None else None
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
