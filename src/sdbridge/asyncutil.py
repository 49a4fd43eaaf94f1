"""Small asyncio helpers every layer may use (outputs, job, registry, discovery).

They live here, below everything else, so that a registry store or an output does not
import the discovery package just to back off or to wait for an event with a timeout.
"""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Exponential backoff with full jitter between ``initial`` and ``maximum`` seconds."""

    def __init__(self, initial: float = 1.0, maximum: float = 60.0) -> None:
        self.initial = initial
        self.maximum = max(maximum, initial)
        self.attempts = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; grows after every call until reset."""
        ceiling = min(self.maximum, self.initial * 2**self.attempts)
        self.attempts += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """Start again from ``initial`` after a success."""
        self.attempts = 0


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set, at most ``seconds``; return whether it was set."""
    # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
    # arrives as the wait ends, and then a shutdown waits for the waiting task forever.
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
