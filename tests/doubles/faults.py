"""Fault injection shared by the HTTP doubles: faults per path regex, and a TCP reset."""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Fault:
    """One injected fault: applies to requests whose path matches ``path``.

    ``kind`` is the double's to read: ``status``, ``delay``, ``reset``, ``malformed``,
    ``truncated``, ``short``, ``index`` ...
    """

    kind: str
    path: str = ".*"
    status: int = 500
    body: str = "injected fault"
    delay: float = 0.0
    index: int = 0  # Consul's "index": the X-Consul-Index to announce instead
    count: int | None = None  # None: until cleared
    after: int = 0  # let this many matching requests through first (page 2 fails)
    hits: int = 0
    pattern: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        self.pattern = re.compile(self.path)


class Faults:
    """The faults of one double, safe to change from the test's thread."""

    def __init__(self, lock: threading.RLock, body: str) -> None:
        self._lock = lock
        self._body = body  # what the server says of an injected error, in its own words
        self._items: list[Fault] = []

    def add(self, kind: str, path: str = ".*", **options: Any) -> Fault:
        options.setdefault("body", self._body)
        fault = Fault(kind, path, **options)
        with self._lock:
            self._items.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def match(self, path: str, kinds: tuple[str, ...]) -> Fault | None:
        """The first fault of one of ``kinds`` for ``path``, counted (and used up)."""
        with self._lock:
            for fault in self._items:
                if fault.kind in kinds and fault.pattern.search(path):
                    if fault.after > 0:
                        fault.after -= 1
                        continue
                    fault.hits += 1
                    if fault.count is not None:
                        fault.count -= 1
                        if fault.count <= 0:
                            self._items.remove(fault)
                    return fault
        return None


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
