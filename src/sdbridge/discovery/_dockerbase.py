"""What the Docker mechanisms (``docker``, ``dockerswarm``) share beyond the API client.

:class:`EngineWatcher` is their base: a refresh on the interval and on relevant engine
``/events``, with debouncing and a settle period for changes that trail their event.
The label helpers read engine objects the way Prometheus's moby discovery does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, TypeVar

from ..errors import BackendError
from ..model import ADDRESS_LABEL, LabelSet, TargetGroup, is_valid_address, sanitize_label_name
from ._dockerapi import EngineClient, EngineConfig
from .base import Backoff, DiscoveryContext, RefreshDiscoverer, Send


def dig(obj: Any, *keys: str) -> Any:
    """``obj[k1][k2]...``, or None as soon as a level is missing or not an object."""
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def int_field(obj: Any, key: str) -> int:
    """``obj[key]`` if it is an integer (not a bool), else 0 (Go's zero value)."""
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def prefixed_labels(labels: Any, prefix: str) -> dict[str, str]:
    """An engine object's ``Labels`` as ``<prefix><sanitized key>`` labels ({} if none)."""
    if not isinstance(labels, dict):
        return {}
    return {prefix + sanitize_label_name(str(k)): str(v) for k, v in labels.items()}


def network_labels(networks: list[Any], prefix: str) -> dict[str, dict[str, str]]:
    """Labels of every network by ID (Prometheus's moby/network.go getNetworksLabels)."""
    labels: dict[str, dict[str, str]] = {}
    for network in networks:
        if not isinstance(network, dict):
            continue
        # The Engine spells it "Id" here (Go's JSON decoding ignores case; ours does not).
        nid = str(network.get("Id") or network.get("ID") or "")
        entry = {
            prefix + "network_id": nid,
            prefix + "network_name": str(network.get("Name") or ""),
            prefix + "network_scope": str(network.get("Scope") or ""),
            prefix + "network_internal": "true" if network.get("Internal") is True else "false",
            prefix + "network_ingress": "true" if network.get("Ingress") is True else "false",
        }
        entry.update(prefixed_labels(network.get("Labels"), prefix + "network_label_"))
        labels[nid] = entry
    return labels


# Container event actions that change nothing a target shows.
_IGNORED_ACTIONS = (
    "exec_",
    "health_status",
    "top",
    "attach",
    "resize",
    "export",
    "commit",
    "copy",
    "archive-path",
    "extract-to-dir",
    "detach",
)
DEBOUNCE = 0.1


EC = TypeVar("EC", bound=EngineConfig)


class EngineWatcher(RefreshDiscoverer[EC]):
    """A Docker mechanism: refreshes on its interval and on relevant ``/events``.

    Subclasses implement :meth:`list_groups` (the full set, or raise) and
    :meth:`event_types`. If the event stream drops, a full refresh follows its
    reconnection, since events may have been missed in between.

    Some engine changes trail their event (swarm's orchestrator sets tasks' desired
    state and reports their state after the service event), so a subclass may set
    ``settle_after_event`` (refresh every ``settle_interval`` for that long after each
    event) and ``settling`` (objects still converging: keep refreshing, but no longer
    than ``settle_window`` after the last event).
    """

    settle_interval: ClassVar[float] = 0.5
    settle_after_event: float = 0.0
    # A task that cannot be placed stays "pending" forever and must not keep sdbridge
    # refreshing twice a second: settling refreshes stop this long after the last event.
    settle_window: ClassVar[float] = 30.0

    def __init__(self, config: EC, context: DiscoveryContext) -> None:
        super().__init__(config, context)
        self.client = EngineClient(config, timeout=min(config.refresh_interval, 30.0))
        self.settling = False
        self._pending: asyncio.TimerHandle | None = None
        self._last_event = 0.0

    async def list_groups(self, client: EngineClient) -> list[TargetGroup]:
        """The full current set of target groups."""
        raise NotImplementedError

    def event_types(self) -> list[str]:
        """The engine event types that can change the targets."""
        raise NotImplementedError

    def valid_group(
        self, source: str, targets: Iterable[LabelSet], *, where: str = "", hint: str = ""
    ) -> TargetGroup:
        """A group of the targets with a valid address; the others are reported and skipped.

        ``where`` names the object in the report (default: ``source``); ``hint`` follows
        the problem, e.g. what to check.
        """
        valid = []
        for target in targets:
            if is_valid_address(target[ADDRESS_LABEL]):
                valid.append(target)
            else:
                self.context.record_invalid(
                    where or source, f"address {target[ADDRESS_LABEL]!r} is not host:port{hint}"
                )
        return TargetGroup(source=source, targets=tuple(valid))

    async def refresh(self) -> list[TargetGroup]:
        """List everything from the engine (see :meth:`list_groups`)."""
        return await self.list_groups(self.client)

    async def run(self, send: Send) -> None:
        """Refresh and follow events until cancelled; close the connections after."""
        try:
            await super().run(send)
        finally:
            if self._pending is not None:
                self._pending.cancel()
            await self.client.close()

    async def watch(self) -> None:
        """Follow engine events (if enabled) and refresh while objects converge."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._settle_loop())
            if self.config.watch_events:
                tasks.create_task(self._follow_events())

    async def _settle_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settle_interval)
            since = loop.time() - self._last_event
            if since < self.settle_after_event or (self.settling and since < self.settle_window):
                self.request_refresh()

    def _schedule(self) -> None:
        """Refresh soon; a burst of events within DEBOUNCE makes one refresh."""
        self._last_event = asyncio.get_running_loop().time()
        if self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(DEBOUNCE, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self.request_refresh()

    async def _follow_events(self) -> None:
        backoff = Backoff(0.5, 30.0)
        lost: str | None = None
        while True:
            connected = False

            def on_connect() -> None:
                nonlocal connected, lost
                connected = True
                backoff.reset()
                if lost is not None:
                    self.log.info("event stream of %s restored; resyncing", self.client.host)
                    lost = None
                # Events may have been missed before (or while) subscribing: resync.
                self._schedule()

            try:
                async for event in self.client.events(self.event_types(), on_connect):
                    if _relevant(event):
                        self._schedule()
                reason = "the engine closed the event stream"
            except BackendError as exc:
                reason = str(exc)
            if connected:
                self._schedule()  # a full resync, in case the stream ended on a change
            if lost is None:
                self.log.warning("lost the event stream of %s: %s", self.client.host, reason)
                lost = reason
            await asyncio.sleep(backoff.next_delay())


def _relevant(event: Mapping[str, Any]) -> bool:
    action = str(event.get("Action") or event.get("status") or "")
    return event.get("Type") != "container" or not action.startswith(_IGNORED_ACTIONS)
