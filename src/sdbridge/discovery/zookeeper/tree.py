"""The watch tree: the znodes a layout needs under each base path, mirrored in memory.

On ZooKeeper 3.6+ each path gets one persistent recursive watch (``addWatch``): it stays
armed, covers the whole subtree, and each event names the znode and what happened to it,
so a Dubbo registration costs no read and a Curator update one. Without it (a server
before 3.6, kazoo internals that changed, or ``persistent_watches: false``) the tree uses
one-shot child and data watches instead, re-armed by the very read that answers each
event, so no change can slip between an event and the re-read. Either way only what the
layout needs is read. Reads that set no watch go in ``multiRead`` requests (3.6+), a few
hundred reads per request.

Bad znodes are skipped one by one with an error naming the znode, counted in
``sdbridge_invalid_targets_total``; a znode that cannot be read at all fails the sync
(the caller keeps the last targets).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kazoo.protocol.states import EventType, WatchedEvent

from ...errors import BackendError, InvalidTargetError
from ...model import ADDRESS_LABEL, TargetGroup, is_valid_address
from ..base import DiscoveryContext
from ._kazoo_ext import GET_CHILDREN, GET_DATA, NODE_CREATED, NODE_DATA_CHANGED, NODE_DELETED
from .layout import Layout
from .paths import is_under, join, parent_of
from .session import Gone, Request, Session, unimplemented

_MULTI_READ_MAX = 500  # reads per request: with ~1 KB per instance, ~0.5 MB per answer
_VERB = {GET_DATA: "reading", GET_CHILDREN: "listing"}


@dataclass(slots=True)
class _Node:
    depth: int
    exists: bool = True
    data: bytes | None = None
    children: frozenset[str] = frozenset()
    group: TargetGroup | None = None


@dataclass
class Tree:
    """The znodes a layout needs under each path, with their target groups."""

    session: Session
    layout: Layout
    roots: list[str]
    context: DiscoveryContext
    nodes: dict[str, _Node] = field(default_factory=dict)
    # Events of one-shot watches: (kind, path); each is answered by a read of the path.
    pending: set[tuple[str, str]] = field(default_factory=set)
    # Events of the persistent recursive watches: path -> type of its latest event.
    recursive: dict[str, int] = field(default_factory=dict)
    persistent: bool = False

    def __post_init__(self) -> None:
        self.persistent = getattr(self.session, "persistent", False)
        if self.persistent:
            self.session.event_sink = self._recursive_fired

    # Watchers are bound methods: kazoo keeps them in sets, so re-arming one is idempotent.
    def data_watcher(self, event: WatchedEvent) -> None:
        """kazoo thread: a data (or exists) watch fired."""
        self._fired("data", event)

    def child_watcher(self, event: WatchedEvent) -> None:
        """kazoo thread: a child watch fired."""
        self._fired("children", event)

    def _fired(self, kind: str, event: WatchedEvent) -> None:
        if event.type == EventType.NONE or event.path is None:
            return  # a session event; the state listener handles those
        with contextlib.suppress(RuntimeError):
            self.session.loop.call_soon_threadsafe(self._note, kind, event.path)

    def _note(self, kind: str, path: str) -> None:
        self.pending.add((kind, path))
        self.session.changed.set()

    def _recursive_fired(self, event_type: int, path: str) -> None:
        """kazoo thread: any watch event; those of the persistent watches matter here."""
        if event_type in (NODE_CREATED, NODE_DELETED, NODE_DATA_CHANGED):
            with contextlib.suppress(RuntimeError):
                self.session.loop.call_soon_threadsafe(self._note_recursive, path, event_type)

    def _note_recursive(self, path: str, event_type: int) -> None:
        # Only the latest event of a path matters, in the order of the latest events.
        self.recursive.pop(path, None)
        self.recursive[path] = event_type
        self.session.changed.set()

    def pending_count(self) -> int:
        """How many watch events wait to be applied."""
        return len(self.pending) + len(self.recursive)

    def take_pending(self) -> tuple[set[tuple[str, str]], dict[str, int]] | None:
        """The waiting events, or None; they are applied with :meth:`apply`."""
        if not self.pending and not self.recursive:
            return None
        taken = (self.pending, self.recursive)
        self.pending, self.recursive = set(), {}
        return taken

    def groups(self) -> list[TargetGroup]:
        """The current target groups, one per target znode."""
        return [n.group for n in self.nodes.values() if n.group is not None]

    async def resync(self, *, watch: bool) -> None:
        """Read every path again (re-arming watches) and replace the tree; raise on failure.

        With persistent watches, each path's watch is added before it is read, so a change
        is either in the read or in an event that follows it.
        """
        self.pending.clear()
        self.recursive.clear()
        one_shot = watch and not (self.persistent and await self._add_watches())
        nodes = await self._fetch([(root, 0) for root in self.roots], watch=one_shot)
        old = self.nodes
        for path, node in nodes.items():
            self._parse(path, node, old.get(path))
        self.nodes = nodes

    async def _add_watches(self) -> bool:
        """Add a persistent recursive watch on every path; False if the server has none."""
        session = self.session
        requests: list[Request] = [(session.add_watch, (r,), f"watching {r}") for r in self.roots]
        for result in await session.batch(requests):
            if unimplemented(result):
                self.context.logger.warning(
                    "ZooKeeper %s has no persistent watches (it predates 3.6); "
                    "using one-shot watches",
                    session.hosts,
                )
                self.persistent = False
                session.event_sink = None
                return False
            if isinstance(result, BaseException):
                raise result
        return True

    async def apply(self, events: tuple[set[tuple[str, str]], dict[str, int]]) -> bool:
        """Apply watch events from :meth:`take_pending`; return whether any target changed."""
        one_shot, recursive = events
        changed = await self._apply_one_shot(one_shot) if one_shot else False
        if recursive:
            changed |= await self._apply_recursive(recursive)
        return changed

    async def _apply_recursive(self, events: dict[str, int]) -> bool:
        """Apply persistent-watch events: the event names the znode and what happened.

        Reads happen after all events of the batch are sorted out, so they see a state at
        least as new as the last event; anything later comes as another event.
        """
        changed = False
        reads: list[str] = []
        fetches: dict[str, int] = {}
        for path, event_type in events.items():
            place = self._locate(path)
            if place is None:
                continue  # outside what the layout reads (e.g. Dubbo consumers)
            depth, missing = place
            if event_type == NODE_DELETED:
                for start in [f for f in fetches if f == path or is_under(f, path)]:
                    del fetches[start]
                changed |= self._remove(path)
            elif missing is not None:
                fetches.setdefault(*missing)
            elif self.layout.reads_data(depth):
                reads.append(path)
        answers = await self._read_all([(GET_DATA, p) for p in reads], watch=False)
        for path, result in zip(reads, answers, strict=True):
            node = self.nodes.get(path)
            if node is None:
                continue
            if isinstance(result, Gone):
                changed |= self._remove(path)
            elif isinstance(result, BaseException):
                raise result
            elif result[0] != node.data:
                old_group = node.group
                node.data, node.group = result[0], None
                self._parse(path, node, None)
                changed |= node.group != old_group
        if fetches:
            subtree = await self._fetch(list(fetches.items()), watch=False)
            for start, depth in fetches.items():
                previous = self.nodes.get(start)  # None, or an absent base path
                changed |= self._drop(start)
                if start not in subtree:
                    continue  # gone again; its deletion event follows
                self._parse(start, subtree[start], previous)
                parent = self.nodes.get(parent_of(start)) if depth > 0 else None
                if parent is not None:
                    parent.children = parent.children | {start.rpartition("/")[2]}
            for path, node in subtree.items():
                if path not in fetches:
                    self._parse(path, node, None)
                self.nodes[path] = node
                changed |= node.group is not None
        return changed

    def _locate(self, path: str) -> tuple[int, tuple[str, int] | None] | None:
        """The depth of ``path`` and the first of its ancestors-or-self missing in the tree.

        None if the layout does not read ``path`` (not under a base path, or filtered out).
        """
        for root in self.roots:
            if path != root and not is_under(path, root):
                continue
            parts = [p for p in path[len(root) :].split("/") if p]
            for depth, name in enumerate(parts, 1):
                if not self.layout.lists_children(depth - 1):
                    return None
                if not self.layout.descends_into(depth, name):
                    return None
            node = self.nodes.get(root)
            if node is None or not node.exists:
                return len(parts), (root, 0)
            current = root
            for depth, name in enumerate(parts, 1):
                current = join(current, name)
                if current not in self.nodes:
                    return len(parts), (current, depth)
            return len(parts), None
        return None

    def _remove(self, path: str) -> bool:
        """A znode was deleted: forget it and its subtree, and unlink it from its parent."""
        changed = self._drop(path)
        if path in self.roots:
            self.nodes[path] = _Node(0, exists=False)
        elif (parent := self.nodes.get(parent_of(path))) is not None:
            parent.children = parent.children - {path.rpartition("/")[2]}
        return changed

    async def _apply_one_shot(self, events: Iterable[tuple[str, str]]) -> bool:
        """Re-read the znodes named by one-shot watch events; return whether a target changed."""
        work = [(kind, path, node) for kind, path in events if (node := self.nodes.get(path))]
        refetch: dict[str, int] = {}
        reads = [(kind, path, node) for kind, path, node in work if node.exists]
        results = iter(await self.session.batch([self._request(*read) for read in reads]))
        changed = False
        for kind, path, node in work:
            if not node.exists:  # an absent base path whose exists-watch fired
                refetch[path] = node.depth
                continue
            result = next(results)
            if self.nodes.get(path) is not node:
                continue  # removed by an earlier event of this batch
            probe = self._probes(kind, node)
            if isinstance(result, Gone) or (probe and result is None):
                changed |= self._drop(path)
                if path in self.roots:
                    refetch[path] = 0  # watch for it to come back
                continue
            if isinstance(result, BaseException):
                raise result
            if probe:
                continue  # still there, and nothing of it is read
            if kind == "data":
                data = result[0]
                if data != node.data:
                    old_group = node.group
                    node.data, node.group = data, None
                    self._parse(path, node, None)
                    changed |= node.group != old_group
            else:
                names = frozenset(c for c in result if self.layout.descends_into(node.depth + 1, c))
                for gone in node.children - names:
                    changed |= self._drop(join(path, gone))
                for new in names - node.children:
                    refetch[join(path, new)] = node.depth + 1
                node.children = names
        if refetch:
            subtree = await self._fetch(list(refetch.items()), watch=True)
            previous = {path: self.nodes.get(path) for path in refetch}
            for path in refetch:
                changed |= self._drop(path)
            for sub_path, sub_node in subtree.items():
                self._parse(sub_path, sub_node, previous.get(sub_path))
                self.nodes[sub_path] = sub_node
                changed |= sub_node.group is not None
        return changed

    def _drop(self, path: str) -> bool:
        """Forget a znode and everything under it; return whether a target went away."""
        node = self.nodes.pop(path, None)
        if node is None:
            return False
        changed = node.group is not None
        for child in node.children:
            changed |= self._drop(join(path, child))
        return changed

    def _parse(self, path: str, node: _Node, previous: _Node | None) -> None:
        if previous is not None and previous.data == node.data and previous.depth == node.depth:
            node.group = previous.group  # unchanged: neither parse nor report it again
            return
        if not node.exists:
            return
        try:
            labels = self.layout.parse(path, node.depth, node.data)
            if labels is not None:
                address = labels[ADDRESS_LABEL]
                if not is_valid_address(address):
                    raise InvalidTargetError(f"address {address!r} is not a valid host:port")
                node.group = TargetGroup(source=path, targets=(labels,))
        except InvalidTargetError as exc:
            prefix = f"znode {path}: "
            message = str(exc)
            self.context.record_invalid(f"znode {path}", message.removeprefix(prefix))

    def _probes(self, kind: str, node: _Node) -> bool:
        """Whether an event of ``kind`` on ``node`` is answered by a bare existence check.

        A deletion fires every watch of a znode, including the kind this layout does not
        read for it; that is answered by ``exists`` without a new watch.
        """
        if kind == "data":
            return not self.layout.reads_data(node.depth)
        return not self.layout.lists_children(node.depth)

    def _request(self, kind: str, path: str, node: _Node) -> Request:
        """The read that answers a watch event on ``path`` and re-arms its watch."""
        client = self.session.client
        if self._probes(kind, node):
            return (client.exists_async, (path,), f"checking {path}")
        if kind == "data":
            return (client.get_async, (path, self.data_watcher), f"reading {path}")
        return (client.get_children_async, (path, self.child_watcher), f"listing {path}")

    async def _read_all(self, ops: list[tuple[int, str]], *, watch: bool) -> list[Any]:
        """Run (op type, path) reads; each answer is a value, :class:`Gone` or BackendError.

        Without watches they go in ``multiRead`` requests when the server has them.
        """
        session = self.session
        if not watch and session.multi_read and len(ops) > 1:
            chunks = [ops[i : i + _MULTI_READ_MAX] for i in range(0, len(ops), _MULTI_READ_MAX)]
            requests: list[Request] = [
                (session.read_many, (chunk,), f"reading {len(chunk)} znodes") for chunk in chunks
            ]
            replies = await session.batch(requests)
            if not any(unimplemented(reply) for reply in replies):
                answers: list[Any] = []
                for chunk, reply in zip(chunks, replies, strict=True):
                    if isinstance(reply, BaseException):
                        raise reply
                    if len(reply) != len(chunk):
                        raise BackendError(
                            f"ZooKeeper {session.hosts}: multiRead answered {len(reply)} "
                            f"results for {len(chunk)} reads"
                        )
                    answers.extend(
                        session.wrap(answer, f"{_VERB[op_type]} {path}")
                        for (op_type, path), answer in zip(chunk, reply, strict=True)
                    )
                return answers
            self.context.logger.info(
                "ZooKeeper %s has no multiRead (it predates 3.6): one request per znode",
                session.hosts,
            )
            session.multi_read = False
        client = session.client
        data_watch = self.data_watcher if watch else None
        child_watch = self.child_watcher if watch else None
        singles: list[Request] = [
            (client.get_async, (path, data_watch), f"reading {path}")
            if op_type == GET_DATA
            else (client.get_children_async, (path, child_watch), f"listing {path}")
            for op_type, path in ops
        ]
        return await session.batch(singles)

    async def _fetch(self, starts: list[tuple[str, int]], *, watch: bool) -> dict[str, _Node]:
        """Read the subtrees at ``starts`` (path, depth), level by level; pure I/O.

        A base path that does not exist gets an exists-watch and an absent node; any other
        znode that vanished mid-read is left out (its parent's watch reports it).
        """
        client, layout = self.session.client, self.layout
        data_watch = self.data_watcher if watch else None
        out: dict[str, _Node] = {}
        frontier = starts
        while frontier:
            ops: list[tuple[int, str]] = []
            for path, depth in frontier:
                if layout.reads_data(depth):
                    ops.append((GET_DATA, path))
                if layout.lists_children(depth):
                    ops.append((GET_CHILDREN, path))
            results = iter(await self._read_all(ops, watch=watch))
            missing_roots: list[str] = []
            next_frontier: list[tuple[str, int]] = []
            for path, depth in frontier:
                answers = [
                    next(results)
                    for wanted in (layout.reads_data(depth), layout.lists_children(depth))
                    if wanted
                ]
                if any(isinstance(a, Gone) for a in answers):
                    if depth == 0:
                        missing_roots.append(path)
                    continue
                for answer in answers:
                    if isinstance(answer, BaseException):
                        raise answer
                node = _Node(depth)
                if layout.reads_data(depth):
                    node.data = answers.pop(0)[0]
                if layout.lists_children(depth):
                    node.children = frozenset(
                        c for c in answers.pop(0) if layout.descends_into(depth + 1, c)
                    )
                out[path] = node
                next_frontier.extend((join(path, c), depth + 1) for c in node.children)
            for path in missing_roots:
                # Watch for the base path to be created; if it was meanwhile, read it next.
                if await self.session.call(
                    client.exists_async, path, data_watch, what=f"checking {path}"
                ):
                    next_frontier.append((path, 0))
                else:
                    out[path] = _Node(0, exists=False)
            frontier = next_frontier
        return out
