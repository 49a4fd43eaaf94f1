"""What every HTTP backend double shares: serving from a thread, and injected faults.

- :class:`ThreadedServer`: a double with ``start_async``/``stop_async`` gets ``start()``,
  ``stop()`` and ``with double:``, serving from a background thread with its own event
  loop, so that synchronous tests and benches can drive it; ``serve_app``/``close_app``
  serve its aiohttp app on 127.0.0.1;
- :class:`Fault` and :class:`FaultInjector`: faults injected per path (a regex searched in
  the request path), each for ``count`` requests or until cleared;
- :func:`reset_connection`: close a connection with a TCP RST, as a crashed server does.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web


@dataclass
class Fault:
    """One injected fault: applies to requests whose path matches ``path`` (re.search)."""

    kind: str  # what the double does: status, delay, malformed, truncated, reset ...
    path: str = ".*"
    status: int = 500
    body: str = "injected fault"
    delay: float = 0.0
    index: int = 0  # Consul's "index" fault: the X-Consul-Index to announce
    count: int | None = None  # None: until cleared
    after: int = 0  # let this many matching requests through first (page 2 fails)
    hits: int = 0
    pattern: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        self.pattern = re.compile(self.path)


class FaultInjector:
    """Keeps the injected faults of a double; thread-safe (tests inject from outside)."""

    default_fault_body = "injected fault"

    def __init__(self) -> None:
        self._fault_lock = threading.Lock()
        self._faults: list[Fault] = []

    def add_fault(self, kind: str, path: str = ".*", **options: Any) -> Fault:
        """Inject a fault for requests whose path matches the regex ``path``."""
        options.setdefault("body", self.default_fault_body)
        fault = Fault(kind, path, **options)
        with self._fault_lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        with self._fault_lock:
            self._faults.clear()

    async def arrival_fault(self, request: web.Request, path: str) -> web.Response | None:
        """Apply a ``delay``, ``status`` or ``reset`` fault for ``path`` as the request
        arrives; the answer to send instead of handling the request, if there is one."""
        fault = self._fault_for(path, ("delay", "status", "reset"))
        if fault is None:
            return None
        if fault.kind == "delay":
            await asyncio.sleep(fault.delay)
            return None
        if fault.kind == "reset":
            reset_connection(request)
            return web.Response(status=500)
        return web.Response(status=fault.status, text=fault.body)

    def _fault_for(self, path: str, kinds: tuple[str, ...]) -> Fault | None:
        """The first fault of one of ``kinds`` for ``path``, counted as used."""
        with self._fault_lock:
            for fault in self._faults:
                if fault.kind in kinds and fault.pattern.search(path):
                    if fault.after > 0:
                        fault.after -= 1
                        continue
                    fault.hits += 1
                    if fault.count is not None:
                        fault.count -= 1
                        if fault.count <= 0:
                            self._faults.remove(fault)
                    return fault
        return None


class ThreadedServer:
    """Serves a double from a background thread with its own event loop."""

    thread_name = "double"

    port: int = 0  # 0 until listening: then the port bound
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    async def serve_app(
        self,
        app: web.Application,
        *,
        backlog: int = 128,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Serve ``app`` on 127.0.0.1:``self.port``; a port of 0 becomes the one bound."""
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            "127.0.0.1",
            self.port,
            backlog=backlog,
            reuse_address=True,
            ssl_context=ssl_context,
        )
        await site.start()
        server = getattr(site, "_server", None)
        if self.port == 0 and server is not None and server.sockets:
            self.port = int(server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8848``."""
        return f"http://127.0.0.1:{self.port}"

    def serve_forever(self, name: str) -> None:
        """Serve in this process's event loop until killed (a double run with ``-m``)."""

        async def serve() -> None:
            await self.start_async()
            print(f"{name} listening on {self.url}", flush=True)
            await asyncio.Event().wait()

        asyncio.run(serve())

    async def close_app(self) -> None:
        """Stop serving the app ``serve_app`` serves, if it does."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def start_async(self) -> None:  # pragma: no cover - each double has its own
        """Start serving in the running event loop (and set ``self._loop``)."""
        raise NotImplementedError

    async def stop_async(self) -> None:  # pragma: no cover - each double has its own
        """Stop serving."""
        raise NotImplementedError

    def start(self) -> Self:
        """Serve from a background thread; returns once listening (or raises why not)."""
        ready = threading.Event()
        errors: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop_async())
            # Handlers of connections that were reset may linger: end them before closing.
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=serve, name=self.thread_name, daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        """Stop the background thread."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def reset_connection(request: web.Request) -> None:
    """Close the connection with a TCP RST, as a crashed server or proxy does."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
