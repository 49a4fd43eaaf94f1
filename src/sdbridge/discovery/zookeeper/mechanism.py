"""The ``zookeeper`` mechanism: a session, a watch tree, and the updates they produce.

Any connection loss (SUSPENDED) or session expiry (LOST) is followed, once connected
again, by a full resync of every path; nothing is sent until it completes, and then only
the groups that changed (:class:`GroupDiff`). While disconnected the last sent targets
stay. With ``watch: false`` the mechanism polls instead, every ``refresh_interval``.
"""

from __future__ import annotations

import asyncio
import time

from kazoo.client import KazooClient

from ...errors import BackendError, SdbridgeError
from ...model import TargetGroup
from .. import register
from ..base import (
    Backoff,
    BaseDiscoverer,
    DiscoveryContext,
    GroupDiff,
    RefreshDiscoverer,
    Send,
)
from .config import LayoutName, ZookeeperSDConfig, sync_timeout
from .curator import CuratorLayout
from .dubbo import DubboLayout
from .layout import Layout
from .serverset import ServersetLayout
from .session import Gone, Session
from .tree import Tree

LAYOUTS: dict[LayoutName, Layout] = {
    "curator": CuratorLayout(),
    "dubbo": DubboLayout(),
    "serverset": ServersetLayout(),
}

# Bursts of watch events are batched: wait until they pause this long, at most _BATCH_MAX.
_BATCH_PAUSE = 0.005
_BATCH_MAX = 0.1


@register("zookeeper", ZookeeperSDConfig)
class ZookeeperDiscoverer(BaseDiscoverer[ZookeeperSDConfig]):
    """Mirrors the configured paths through watches (or polls them), one target per znode."""

    def __init__(self, config: ZookeeperSDConfig, context: DiscoveryContext) -> None:
        super().__init__(config, context)
        self.session: Session | None = None
        self._tree: Tree | None = None

    @property
    def watch_mode(self) -> str:
        """``persistent`` (recursive watches), ``one-shot`` (re-armed watches) or ``poll``."""
        if not self.config.watch:
            return "poll"
        if self._tree is not None and self._tree.persistent:
            return "persistent"
        return "one-shot"

    @property
    def client(self) -> KazooClient | None:
        """The running kazoo client (for diagnostics and tests), or None."""
        return self.session.client if self.session is not None else None

    def _operation_timeout(self) -> float:
        return sync_timeout(self.config)

    async def run(self, send: Send) -> None:
        """Follow the paths until cancelled."""
        session = Session(self.config, self.context)
        tree = Tree(session, LAYOUTS[self.config.layout], list(self.config.paths), self.context)
        self.session, self._tree = session, tree
        session.start()
        try:
            if self.config.watch:
                await self._watch(send, session, tree)
            else:
                await _Poller(self.config, self.context, session, tree).run(send)
        finally:
            self.session = self._tree = None
            await asyncio.shield(session.close())

    async def _watch(self, send: Send, session: Session, tree: Tree) -> None:
        diff = GroupDiff()
        backoff = Backoff(0.5, 30.0)
        failed = False
        while True:
            if failed:
                await asyncio.sleep(backoff.next_delay())
            await self._connected(session)
            session.resyncing()
            started = time.monotonic()
            try:
                async with asyncio.timeout(self._operation_timeout()):
                    await tree.resync(watch=True)
            except (SdbridgeError, Gone, TimeoutError) as exc:
                self.context.record_failure(_resync_error(exc, session), time.monotonic() - started)
                failed = True
                continue
            failed = False
            backoff.reset()
            self.context.observe_duration(time.monotonic() - started)
            await send(diff.changes(tree.groups()))
            try:
                await self._follow(send, session, tree, diff)
            except (SdbridgeError, Gone, TimeoutError) as exc:
                self.context.record_failure(_resync_error(exc, session))
                failed = True

    async def _connected(self, session: Session) -> None:
        """Wait for the connection; report a failure for each session timeout it takes."""
        while not session.connected.is_set():
            try:
                async with asyncio.timeout(self.config.timeout):
                    await session.connected.wait()
            except TimeoutError:
                self.context.record_failure(
                    BackendError(f"ZooKeeper {session.hosts}: cannot connect (still trying)")
                )

    async def _follow(self, send: Send, session: Session, tree: Tree, diff: GroupDiff) -> None:
        """Apply watch events until the session needs a full resync."""
        while not session.must_resync():
            await session.changed.wait()
            await _settle(tree)
            session.changed.clear()
            if session.must_resync():
                return
            events = tree.take_pending()
            if events is None:
                continue
            async with asyncio.timeout(self._operation_timeout()):
                changed = await tree.apply(events)
            if changed and not session.must_resync():
                await send(diff.changes(tree.groups()))
            # If the connection dropped meanwhile, the resync that follows sends the truth.


async def _settle(tree: Tree) -> None:
    deadline = time.monotonic() + _BATCH_MAX
    while time.monotonic() < deadline:
        seen = tree.pending_count()
        await asyncio.sleep(_BATCH_PAUSE)
        if tree.pending_count() == seen:
            return


def _resync_error(exc: BaseException, session: Session) -> SdbridgeError:
    if isinstance(exc, SdbridgeError):
        return exc
    if isinstance(exc, TimeoutError):
        return BackendError(f"ZooKeeper {session.hosts}: sync timed out")
    return BackendError(f"ZooKeeper {session.hosts}: {exc} vanished during the sync")


class _Poller(RefreshDiscoverer[ZookeeperSDConfig]):
    """``watch: false``: read every path without watches every ``refresh_interval``."""

    def __init__(
        self,
        config: ZookeeperSDConfig,
        context: DiscoveryContext,
        session: Session,
        tree: Tree,
    ) -> None:
        super().__init__(config, context)
        self.session = session
        self.tree = tree

    async def refresh(self) -> list[TargetGroup]:
        """Read the whole tree once; raise if not connected within the session timeout."""
        try:
            async with asyncio.timeout(self.config.timeout):
                await self.session.connected.wait()
        except TimeoutError:
            raise BackendError(f"ZooKeeper {self.session.hosts}: not connected") from None
        try:
            async with asyncio.timeout(sync_timeout(self.config)):
                await self.tree.resync(watch=False)
        except (Gone, TimeoutError) as exc:
            raise _resync_error(exc, self.session) from None
        return self.tree.groups()
