"""``sdbridge check --check.connect``: ask each mechanism that can to reach its backend.

A mechanism opts in with an ``async def check(self) -> None`` method on its discoverer,
which raises a :class:`~sdbridge.errors.SdbridgeError` naming what is wrong (the SQL
mechanism runs its query once and checks the columns). Without the flag, ``check`` only
validates the file and never touches a backend.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import SdbridgeError
from . import mechanisms
from .base import DiscoveryContext


async def check_backends(jobs: Iterable[Any]) -> list[str]:
    """Run every opted-in mechanism's check; return one message per failure."""
    failures = []
    registered = mechanisms()
    for job in jobs:
        seen: dict[str, int] = {}
        for name, config in job.mechanism_configs():
            index = seen[name] = seen.get(name, -1) + 1  # the entry's index in its list
            context = DiscoveryContext(job=job.name, mechanism=name, index=index)
            discoverer = registered[name].factory(config, context)
            check = getattr(discoverer, "check", None)
            if check is None:
                continue
            try:
                await check()
            except SdbridgeError as exc:
                failures.append(f"job {job.name!r}: {name}_sd_configs[{index}]: {exc}")
    return failures
