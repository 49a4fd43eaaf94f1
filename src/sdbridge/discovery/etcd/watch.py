"""The etcd_sd watcher: list a prefix, then watch it from the listed revision.

Watch semantics: list the prefix (paginated, every page at the first page's revision),
then watch from ``revision + 1``. Progress notifications keep the known revision current
between events. After any gap (the watch cancelled by a compaction, a broken stream, an
etcd restart) the prefix is listed again and only the differences from the last good set
are sent; nothing is sent until that list is complete. A value that cannot be read is
skipped with an error naming its key and counted in ``sdbridge_invalid_targets_total``;
the rest of the job goes on. With ``watch: false`` the prefix is polled every
``refresh_interval`` instead (the baseline of bench/etcd_watch_latency.py).
"""

from __future__ import annotations

import asyncio
import time

from ...errors import BackendError, InvalidTargetError
from ...model import TargetGroup
from .. import register
from ..base import Backoff, DiscoveryContext, GroupDiff, RefreshDiscoverer, Send
from .config import EtcdSDConfig
from .gateway import Gateway, KeyValue, WatchCompacted, kv_from_json
from .labels import KEY_LABEL, LEASE_LABEL, PREFIX_LABEL
from .layouts import layout_parser


@register("etcd", EtcdSDConfig)
class EtcdDiscoverer(RefreshDiscoverer[EtcdSDConfig]):
    """Lists and watches a prefix; one target group per key, whose source is the key."""

    def __init__(self, config: EtcdSDConfig, context: DiscoveryContext) -> None:
        super().__init__(config, context)
        self.prefix = config.prefix.encode("utf-8")
        self.parse = layout_parser(config)
        self.revision = 0  # the newest revision known, moved by events and progress
        self._list_revision = 0
        self._gateway: Gateway | None = None
        # Invalid keys already reported, with the revision of the bad value: each bad write
        # is logged and counted once, not again on every relist or poll.
        self._reported: dict[str, int] = {}

    async def run(self, send: Send) -> None:
        """Watch (or, with ``watch: false``, poll) until cancelled."""
        self._gateway = Gateway(self.config, self.context.count_request)
        try:
            if self.config.watch:
                await self._watch_loop(self._gateway, send)
            else:
                await super().run(send)
        finally:
            await self._gateway.close()

    async def refresh(self) -> list[TargetGroup]:
        """Poll mode: the full set, listed now."""
        assert self._gateway is not None
        return list((await self._list(self._gateway)).values())

    async def _list(self, gateway: Gateway) -> dict[str, TargetGroup]:
        kvs, revision = await gateway.range_prefix(self.prefix)
        self.revision = max(self.revision, revision)
        groups: dict[str, TargetGroup] = {}
        for kv in kvs:
            key, group = self._group(kv)
            if group is not None:
                groups[key] = group
        self._list_revision = revision
        return groups

    def _group(self, kv: KeyValue) -> tuple[str, TargetGroup | None]:
        """The key as text and its group; None when it holds no (valid) instance."""
        try:
            key = kv.key.decode("utf-8")
        except UnicodeDecodeError:
            key = repr(kv.key)
            self._invalid(key, kv, f"etcd key {kv.key!r}", "key is not UTF-8")
            return key, None
        if kv.value is None:
            self._reported.pop(key, None)
            return key, None
        try:
            targets = self.parse(key, kv.value)
            labels = {KEY_LABEL: key, PREFIX_LABEL: self.config.prefix}
            if kv.lease:
                labels[LEASE_LABEL] = str(kv.lease)
            group = TargetGroup(source=key, targets=tuple(targets), labels=labels)
        except InvalidTargetError as exc:
            self._invalid(key, kv, f"etcd key {key!r} ({self.config.layout} layout)", exc)
            return key, None
        self._reported.pop(key, None)
        return key, group if targets else None

    def _invalid(self, key: str, kv: KeyValue, what: str, error: Exception | str) -> None:
        """Report a bad key once per bad write (its mod_revision)."""
        if kv.value is None:
            self._reported.pop(key, None)  # deleted: nothing to report
            return
        if self._reported.get(key) != kv.mod_revision or not kv.mod_revision:
            self._reported[key] = kv.mod_revision
            self.context.record_invalid(what, error)

    async def _watch_loop(self, gateway: Gateway, send: Send) -> None:
        backoff = Backoff(self.initial_backoff, 30.0)
        state: dict[str, TargetGroup] | None = None
        while True:
            started = time.monotonic()
            try:
                groups = await self._list(gateway)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.context.record_failure(exc, time.monotonic() - started)
                await asyncio.sleep(backoff.next_delay())
                continue
            changes = _resync_changes(state, groups)
            state = groups
            self.context.observe_duration(time.monotonic() - started)
            await send(changes)
            try:
                await self._follow(gateway, self._list_revision + 1, state, send, backoff)
            except asyncio.CancelledError:
                raise
            except WatchCompacted as exc:
                # Not a failure: the events were compacted away and the relist catches up.
                self.log.warning(
                    "watch on %r lost its history (%s); relisting", self.config.prefix, exc
                )
            except Exception as exc:
                self.context.record_failure(exc)
                await asyncio.sleep(backoff.next_delay())

    async def _watch_starting(self, revision: int) -> None:
        """A seam for tests, awaited just before a watch opens at ``revision``."""

    async def _follow(
        self,
        gateway: Gateway,
        start: int,
        state: dict[str, TargetGroup],
        send: Send,
        backoff: Backoff,
    ) -> None:
        """Apply watch events to ``state`` and send what changed; raise when the watch ends."""
        await self._watch_starting(start)
        async with gateway.watch(self.prefix, start) as stream:
            async for result in stream:
                if result.get("created"):
                    backoff.reset()  # a watch got established: the next gap starts afresh
                if result.get("canceled"):
                    compact = int(result.get("compact_revision", 0))
                    if compact:
                        raise WatchCompacted(compact)
                    reason = result.get("cancel_reason") or "no reason given"
                    raise BackendError(f"etcd {gateway.url}: watch cancelled: {reason}")
                header = result.get("header", {})
                self.revision = max(self.revision, int(header.get("revision", 0)))
                events = result.get("events")
                if not events:
                    self.context.record_current()  # created, or a progress notification
                    continue
                changed: dict[str, TargetGroup] = {}
                for event in events:
                    deleted = event.get("type") == "DELETE"
                    key, group = self._group(kv_from_json(event.get("kv", {}), deleted))
                    if group is None:
                        if state.pop(key, None) is not None or key in changed:
                            changed[key] = TargetGroup(source=key)
                    elif state.get(key) != group:
                        state[key] = group
                        changed[key] = group
                if changed:
                    await send(list(changed.values()))


def _resync_changes(
    previous: dict[str, TargetGroup] | None, current: dict[str, TargetGroup]
) -> list[TargetGroup]:
    """The first full set, or only the differences from the last good set after a relist."""
    diff = GroupDiff()
    if previous is not None:
        diff.changes(list(previous.values()))
    return diff.changes(list(current.values()))
