"""The ``nacos`` discoverer: listings on a timer, gRPC pushes in between.

Every ``refresh_interval`` the scope is listed: whole where a bulk call serves it (a few
pages). Where the server lists per service only and the gRPC subscription (:mod:`.push`)
is live, a refresh reads only a page of names (to find new and gone services), and every
service is read again only every ``resync_interval``. A push updates its one service at
once: it calls :meth:`request_refresh`, and the refresh that follows sends the pushed
state without a request to the server.
"""

from __future__ import annotations

import asyncio
import contextlib
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

    connected: bool  # a session is up (pushes may arrive)

    def live(self) -> bool:
        """Whether pushes arrive for every followed service."""
        ...

    def follow(self, keys: Sequence[ServiceKey]) -> None:
        """Subscribe to these services (and only these)."""
        ...

    async def service_names(self, namespace: str, group: str) -> list[str] | None:
        """A group's service names over the channel; None while there is none."""
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
        self._connected = asyncio.Event()  # set once a server has answered
        self._woken_by_push = False
        self._services_moved = False  # 3.x fuzzy watch: a service came or went
        self._subscription_started = asyncio.Event()
        if config.grpc:
            # Where no HTTP API lists services to this user (3.x), the channel can.
            self.lister.grpc_service_names = self._names_over_grpc

    async def run(self, send: Send) -> None:
        try:
            await super().run(send)
        finally:
            await self.client.close()

    def pushing(self) -> bool:
        """Whether the gRPC subscription is live and holds every listed service."""
        return self.push is not None and self.push.live()

    async def refresh(self) -> list[TargetGroup]:
        await self.client.connect()
        self._connected.set()  # the subscription may start (and list services over gRPC)
        woken, self._woken_by_push = self._woken_by_push, False
        services_moved, self._services_moved = self._services_moved, False
        channel_up = self.push is not None and self.push.connected
        if woken and not services_moved and self.last_listing is not None and channel_up:
            # The pushed state (a notification, or the answer of a new subscription):
            # no request to the server.
            return self.groups()
        due = (
            self.last_listing is None
            or not self.pushing()
            or self.lister.mode == "bulk"  # a few pages: cheap enough to catch new services
            or self.clock() - self.last_listing >= self.config.resync_interval
        )
        if not due and self.push is not None:
            # Per service, pushes keep instances current: only look for new or gone
            # services (a page of names), and let the subscription fetch new ones.
            keys = set(await self.lister.all_service_keys())
            for gone in self.state.keys() - keys:
                del self.state[gone]
            if keys != set(self.state):
                self.push.follow(sorted(keys, key=lambda k: k.source))
        if due:
            skips = Skips([])
            listing = await self.lister.list_all(skips)
            self._count_skips(skips.items)
            self.state = listing
            self.last_listing = self.clock()
            if self.push is not None:
                self.push.follow(sorted(listing, key=lambda k: k.source))
        return self.groups()

    async def watch(self) -> None:
        """Subscribe over gRPC once a server has answered and said what it is."""
        forever = asyncio.Event()
        if not self.config.grpc:
            await forever.wait()
        await self._connected.wait()
        server = self.client.server
        if server is not None and server.major < 2:
            self.log.info("Nacos %s has no gRPC channel: polling only", server.version)
            await forever.wait()
        try:
            from .push import GrpcSubscription
        except ImportError:
            self.log.warning(
                "the Nacos gRPC subscription needs grpcio (pip install 'sdbridge[nacos]'):"
                " polling every %ss only",
                self.config.refresh_interval,
            )
            await forever.wait()
        subscription = GrpcSubscription(self)
        self.push = subscription
        self._subscription_started.set()
        if self.last_listing is not None:
            subscription.follow(sorted(self.state, key=lambda k: k.source))
        await subscription.run()

    async def _names_over_grpc(self, namespace: str, group: str) -> list[str] | None:
        """A group's service names over the gRPC channel; None where there is none."""
        server = self.client.server
        if server is None or server.major < 2:
            return None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):  # watch() starts it as the server answers
                await self._subscription_started.wait()
        if self.push is None:
            return None  # no grpcio, or 1.x: polling only
        return await self.push.service_names(namespace, group)

    def services_moved(self) -> None:
        """A service was created or deleted (3.x fuzzy watch): look for it at once."""
        self._services_moved = True
        self.request_refresh()

    def apply_push(self, key: ServiceKey, targets: list[dict[str, str]] | None) -> None:
        """A pushed service state (None: the service is gone); sent by the next refresh."""
        if key not in self.state and targets is None:
            return
        if targets is None:
            self.state.pop(key, None)
        else:
            self.state[key] = targets
        self._woken_by_push = True
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
