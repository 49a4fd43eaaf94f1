"""The publisher's own bounded thread pool: rendering, hashing, file writes.

asyncio's default executor is shared with everything else in the process (web request
handling, DNS lookups, ``asyncio.to_thread`` in libraries): a flood of web requests
queued there would delay a publish. Publishing work goes here instead, on a small pool
of its own: a few threads, because publishes are CPU- and disk-bound and one job's
publish is serialised anyway.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

MAX_WORKERS = max(2, min(4, os.cpu_count() or 1))

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def publish_executor() -> ThreadPoolExecutor:
    """The process's publishing pool (created on first use)."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="sdbridge-publish")
        return _executor


_in_flight: set[asyncio.Future[Any]] = set()


async def run_publish_work(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``func`` on the publishing pool and wait for its result."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(publish_executor(), functools.partial(func, *args, **kwargs))
    _in_flight.add(future)
    future.add_done_callback(_in_flight.discard)
    return await future


async def settle() -> None:
    """Wait for the work already handed to the pool (a shielded file write) to finish.

    asyncio.run waits for its default executor at exit, not for this one: a job that
    stops calls this, so a write in flight lands (or fails) before the process ends.
    """
    loop = asyncio.get_running_loop()
    pending = [f for f in _in_flight if f.get_loop() is loop]
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
