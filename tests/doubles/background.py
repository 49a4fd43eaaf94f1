"""A double's event loop in a background thread, for tests that drive it synchronously."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Self

Step = Callable[[], Coroutine[Any, Any, None]]


class BackgroundLoop:
    """Runs ``start_async`` in a new loop on a daemon thread, then the loop until
    :meth:`stop`, then ``stop_async``; ends the tasks still pending (handlers of reset
    connections may linger) before closing the loop."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, start_async: Step, stop_async: Step) -> None:
        """Start serving; re-raises what ``start_async`` raised."""
        ready = threading.Event()
        errors: list[BaseException] = []

        def serve() -> None:
            loop = self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(start_async())
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(stop_async())
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=serve, name=self.name, daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]

    def stop(self) -> None:
        """Stop the loop (running ``stop_async``) and wait for the thread."""
        if self.loop is not None and self._thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(30)
            self._thread = None


class Served:
    """``start``/``stop`` and ``with`` for a double with ``start_async``/``stop_async``,
    served by a :class:`BackgroundLoop` named ``_background``."""

    _background: BackgroundLoop

    async def start_async(self) -> None:
        raise NotImplementedError

    async def stop_async(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        """Serve from a background thread with its own event loop."""
        self._background.start(self.start_async, self.stop_async)
        return self

    def stop(self) -> None:
        """Stop the background thread."""
        self._background.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
