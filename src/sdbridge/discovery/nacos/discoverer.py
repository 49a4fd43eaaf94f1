"""The ``nacos`` discoverer: full listings on a timer, gRPC pushes in between.

Every ``refresh_interval`` the scope is listed whole (:mod:`.listing`) unless the gRPC
subscription (:mod:`.push`) is live, in which case listings come every
``resync_interval`` and a push updates its one service at once: the push calls
:meth:`request_refresh`, and the refresh that follows sends the pushed state without a
request to the server.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from ...model import TargetGroup
from .. import register
from ..base import DiscoveryContext, RefreshDiscoverer, Send
from .client import NacosClient
from .config import NacosSDConfig
from .labels import ServiceKey, Skips
from .listing import Lister, Listing


class Subscription(Protocol):
    """What the discoverer needs of the gRPC subscription."""

    def live(self) -> bool:
        """Whether pushes arrive for every followed service."""
        ...

    def follow(self, keys: Sequence[ServiceKey]) -> None:
        """Subscribe to these services (and only these)."""
        ...


@register("nacos", NacosSDConfig)
class NacosDiscoverer(RefreshDiscoverer[NacosSDConfig]):
    """Nacos naming: one target group per service, keyed ``nacos/<ns>/<group>/<service>``."""

    def __init__(self, config: NacosSDConfig, context: DiscoveryContext) -> None:
        super().__init__(config, context)
        self.client = NacosClient(config, context.count_request)
        self.lister = Lister(self.client, config)
        self.state: Listing = {}
        self.skipped: list[str] = []  # invalid instances of the last listing
        self.last_listing: float | None = None
        self.clock = time.monotonic
        self.push: Subscription | None = None  # the gRPC subscription (see watch)

    async def run(self, send: Send) -> None:
        try:
            await super().run(send)
        finally:
            await self.client.close()

    def pushing(self) -> bool:
        """Whether the gRPC subscription is live and holds every listed service."""
        return self.push is not None and self.push.live()

    async def refresh(self) -> list[TargetGroup]:
        due = (
            self.last_listing is None
            or not self.pushing()
            or self.clock() - self.last_listing >= self.config.resync_interval
        )
        if due:
            skips = Skips([])
            listing = await self.lister.list_all(skips)
            self._count_skips(skips.items)
            self.state = listing
            self.last_listing = self.clock()
            if self.push is not None:
                self.push.follow(sorted(listing, key=lambda k: k.source))
        return self.groups()

    def apply_push(self, key: ServiceKey, targets: list[dict[str, str]] | None) -> None:
        """A pushed service state (None: the service is gone); sent by the next refresh."""
        if key not in self.state and targets is None:
            return
        if targets is None:
            self.state.pop(key, None)
        else:
            self.state[key] = targets
        self.request_refresh()

    def groups(self) -> list[TargetGroup]:
        return [
            TargetGroup(source=key.source, targets=tuple(targets))
            for key, targets in sorted(self.state.items(), key=lambda item: item[0].source)
            if targets
        ]

    def _count_skips(self, skips: list[str]) -> None:
        previous = set(self.skipped)
        for what in skips:
            if what not in previous:  # counted and logged once, not on every listing
                self.context.record_invalid(what, "port 0 or malformed address")
        self.skipped = skips
