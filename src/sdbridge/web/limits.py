"""What a client may cost the web server: connections, waiting time, log lines.

Prometheus scrapes through sdbridge, so a client that opens sockets and sends nothing,
or sends slowly, must not take the server down. aiohttp closes a connection idle for
its keep-alive timeout (``--web.read-timeout`` here, as Prometheus's idle timeout), but
has no limit on open connections and no separate deadline for a request's headers, so
every connection is wrapped in a :class:`GuardedConnection` that adds both:

- ``--web.max-connections``: a connection beyond the limit is closed at once, before a
  byte is read (Prometheus's listener makes it wait instead; asyncio cannot pause
  accepting, and closing frees the file descriptor at once);
- ``--web.read-header-timeout``: a connection that has not sent a complete request
  head this long after it opened (after the TLS handshake, which has the same limit) is
  closed, so sockets that never send a request go quickly.

When the process runs out of file descriptors anyway, asyncio reports every failed
``accept()`` with a traceback; :class:`AcceptErrorLog` turns those into one line per
interval with a count. :class:`ClientErrorFilter` does the same for aiohttp's reports
of what clients do wrong (a request line over 8 KiB, a malformed request, a client that
hangs up mid-body): one line without a traceback per interval, so that nobody can fill
the log from the outside.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from .. import metrics
from ..masking import mask_text

log = logging.getLogger("sdbridge.web")

DEFAULT_READ_TIMEOUT = 300.0
DEFAULT_READ_HEADER_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 512
ACCEPT_ERROR_LOG_INTERVAL = 10.0

_HEAD_END = b"\r\n\r\n"


@dataclass(frozen=True)
class ConnectionLimits:
    """The flags' values; timeouts in seconds, 0 turns a limit off."""

    read_timeout: float = DEFAULT_READ_TIMEOUT
    read_header_timeout: float = DEFAULT_READ_HEADER_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    @property
    def header_deadline(self) -> float:
        """Seconds a new connection has to send its first request head."""
        limits = [t for t in (self.read_timeout, self.read_header_timeout) if t > 0]
        return min(limits) if limits else 0.0


class RateLimitedLog:
    """Logs a recurring event at most once per ``interval`` seconds, with the count since."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._last: float | None = None
        self._suppressed = 0

    def log(self, level: int, message: str, *args: Any) -> bool:
        """Log ``message`` unless one went out within the interval; return whether it did."""
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            self._suppressed += 1
            return False
        count, self._suppressed = self._suppressed + 1, 0
        self._last = now
        suffix = f" ({count} time(s) in the last {self._interval:g}s)" if count > 1 else ""
        self._logger.log(level, message + suffix, *args)
        return True


class ConnectionGuard:
    """Counts open connections and wraps each one (see the module docstring)."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open = 0
        self._refused_log = RateLimitedLog(log, ACCEPT_ERROR_LOG_INTERVAL)

    def wrap(self, inner: asyncio.Protocol) -> asyncio.Protocol:
        """The protocol to give asyncio for one new connection served by ``inner``."""
        return GuardedConnection(self, inner)

    def admit(self) -> bool:
        """Whether one more connection fits; counts it if so."""
        limit = self.limits.max_connections
        if limit > 0 and self.open >= limit:
            metrics.WEB_CONNECTIONS_REFUSED.inc()
            self._refused_log.log(
                logging.WARNING,
                "closing new connections: %d are open, the limit (--web.max-connections)",
                self.open,
            )
            return False
        self.open += 1
        return True

    def release(self) -> None:
        """One admitted connection closed."""
        self.open -= 1


class GuardedConnection(asyncio.Protocol):
    """aiohttp's protocol for one connection, with a connection limit and a header deadline."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._admitted = False
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._tail = b""  # the last bytes seen before the first request head ended

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if not self._guard.admit():
            transport.abort()  # before aiohttp sees it: nothing to clean up there
            return
        self._admitted = True
        self._transport = transport
        deadline = self._guard.limits.header_deadline
        if deadline > 0:
            self._deadline = asyncio.get_running_loop().call_later(deadline, self._too_slow)
        self._inner.connection_made(transport)

    def _too_slow(self) -> None:
        self._deadline = None
        metrics.WEB_CONNECTIONS_TIMED_OUT.inc()
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._deadline is not None:
            # Only the first request's head is timed; later ones fall under aiohttp's
            # keep-alive timeout (--web.read-timeout).
            seen = self._tail + data
            if _HEAD_END in seen:
                self._deadline.cancel()
                self._deadline = None
                self._tail = b""
            else:
                self._tail = seen[-(len(_HEAD_END) - 1) :]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._guard.release()
        self._inner.connection_lost(exc)


class AcceptErrorLog:
    """An event loop exception handler that rate-limits asyncio's ``accept()`` errors.

    Out of file descriptors, asyncio retries ``accept()`` every second per listening
    socket and reports each failure with a traceback; this logs one line per interval
    with the count instead. Everything else goes to the handler it replaces.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, interval: float = ACCEPT_ERROR_LOG_INTERVAL
    ) -> None:
        self._loop = loop
        self._previous = loop.get_exception_handler()
        self._log = RateLimitedLog(log, interval)

    def install(self) -> None:
        """Become the loop's exception handler (once per loop)."""
        if not isinstance(self._previous, AcceptErrorLog):
            self._loop.set_exception_handler(self)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if message.startswith("socket.accept()"):
            metrics.WEB_ACCEPT_ERRORS.inc()
            error = context.get("exception")
            self._log.log(
                logging.ERROR,
                "cannot accept connections: %s (raise the open-file limit or lower "
                "--web.max-connections)",
                error if error is not None else message,
            )
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)


class ClientErrorFilter(logging.Filter):
    """On aiohttp's server logger: client mistakes become one rate-limited line, no traceback.

    Errors that are not the client's (a bug in a handler) pass unchanged.
    """

    def __init__(self, interval: float = ACCEPT_ERROR_LOG_INTERVAL) -> None:
        super().__init__()
        self.interval = interval
        self._last: float | None = None
        self._suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError | ConnectionError):
            return True
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval:
            self._suppressed += 1
            return False
        count, self._suppressed, self._last = self._suppressed + 1, 0, now
        reason = getattr(error, "message", "") or str(error) or type(error).__name__
        reason = mask_text(" ".join(str(reason).split())[:200])  # a request line may hold one
        record.msg = f"{record.getMessage()}: {type(error).__name__}: {reason}"
        if count > 1:
            record.msg += f" ({count} client error(s) in the last {self.interval:g}s)"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True

    @classmethod
    def install(cls) -> None:
        """Add one to aiohttp's server logger (once)."""
        server_log = logging.getLogger("aiohttp.server")
        if not any(isinstance(f, cls) for f in server_log.filters):
            server_log.addFilter(cls())
