"""The ZooKeeper tree mirror against a fake kazoo client that fires watches like ZooKeeper.

The fake answers only the three reads sdbridge makes (get, get_children, exists); any
other call fails the test. It records every read, so tests can check what is (not) read.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import EventType, KeeperState, WatchedEvent

from sdbridge.discovery.base import DiscoveryContext
from sdbridge.discovery.zookeeper import LAYOUTS
from sdbridge.discovery.zookeeper.session import Session
from sdbridge.discovery.zookeeper.tree import Tree


class FakeResult:
    def __init__(self, value: Any = None, exception: BaseException | None = None) -> None:
        self.value, self.exception = value, exception

    def rawlink(self, callback: Callable[[FakeResult], None]) -> None:
        callback(self)


class FakeZooKeeper:
    """Znodes in a dict; one-shot watches fired as ZooKeeper fires them."""

    def __init__(self) -> None:
        self.nodes: dict[str, bytes] = {"/": b""}
        self.data_watches: dict[str, set[Callable[[WatchedEvent], None]]] = defaultdict(set)
        self.child_watches: dict[str, set[Callable[[WatchedEvent], None]]] = defaultdict(set)
        self.reads: list[tuple[str, str]] = []
        self.recursive_watches: set[str] = set()
        self.sink: Callable[[int, str], None] | None = None

    def read_many(self, ops: list[tuple[int, str]]) -> FakeResult:
        """``multiRead``: each read answered on its own, errors included."""
        answers: list[Any] = []
        for op_type, path in ops:
            self.reads.append(("multiRead", path))
            if path not in self.nodes:
                answers.append(NoNodeError())
            elif op_type == 4:
                answers.append((self.nodes[path], None))
            else:
                answers.append(self._children(path))
        return FakeResult(answers)

    def add_watch(self, path: str) -> FakeResult:
        """``addWatch(path, PERSISTENT_RECURSIVE)``."""
        self.reads.append(("addWatch", path))
        self.recursive_watches.add(path)
        return FakeResult(True)

    def _fire_recursive(self, event_type: int, path: str) -> None:
        if self.sink is not None and any(
            path == w or path.startswith(w.rstrip("/") + "/") for w in self.recursive_watches
        ):
            self.sink(event_type, path)

    def _children(self, path: str) -> list[str]:
        prefix = "/" if path == "/" else path + "/"
        return [
            p[len(prefix) :]
            for p in self.nodes
            if p.startswith(prefix) and p != "/" and "/" not in p[len(prefix) :]
        ]

    def _fire(self, watches: dict[str, set[Any]], path: str, kind: str) -> None:
        for watcher in watches.pop(path, set()):
            watcher(WatchedEvent(kind, KeeperState.CONNECTED, path))

    def get_async(self, path: str, watch: Any = None) -> FakeResult:
        self.reads.append(("get", path))
        if path not in self.nodes:
            return FakeResult(exception=NoNodeError())
        if watch:
            self.data_watches[path].add(watch)
        return FakeResult((self.nodes[path], None))

    def get_children_async(self, path: str, watch: Any = None) -> FakeResult:
        self.reads.append(("children", path))
        if path not in self.nodes:
            return FakeResult(exception=NoNodeError())
        if watch:
            self.child_watches[path].add(watch)
        return FakeResult(self._children(path))

    def exists_async(self, path: str, watch: Any = None) -> FakeResult:
        self.reads.append(("exists", path))
        if watch:
            self.data_watches[path].add(watch)
        return FakeResult(object() if path in self.nodes else None)

    def create(self, path: str, data: bytes = b"") -> None:
        parent = path.rsplit("/", 1)[0] or "/"
        if parent not in self.nodes:
            self.create(parent)
        self.nodes[path] = data
        self._fire(self.data_watches, path, EventType.CREATED)
        self._fire(self.child_watches, parent, EventType.CHILD)
        self._fire_recursive(1, path)

    def set(self, path: str, data: bytes) -> None:
        self.nodes[path] = data
        self._fire(self.data_watches, path, EventType.CHANGED)
        self._fire_recursive(3, path)

    def delete(self, path: str) -> None:
        for child in self._children(path):
            self.delete(f"{path}/{child}")
        del self.nodes[path]
        self._fire(self.data_watches, path, EventType.DELETED)
        self._fire(self.child_watches, path, EventType.DELETED)
        self._fire(self.child_watches, path.rsplit("/", 1)[0] or "/", EventType.CHILD)
        self._fire_recursive(2, path)


@pytest.fixture(params=[False, True], ids=["one-shot", "persistent"])
def persistent(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def make_tree(
    layout: str, roots: list[str], persistent: bool = False
) -> tuple[Tree, FakeZooKeeper]:
    fake = FakeZooKeeper()
    context = DiscoveryContext(job="unit", mechanism="zookeeper")
    session = Session.__new__(Session)  # no real kazoo client
    session.loop = asyncio.get_running_loop()
    session.context = context
    session.hosts = "fake"
    session.changed = asyncio.Event()
    session.client = fake
    session.persistent = persistent
    session.multi_read = persistent  # unwatched reads go in multiRead requests then
    session.read_many = fake.read_many  # type: ignore[method-assign]
    session.event_sink = None
    session.add_watch = fake.add_watch  # type: ignore[method-assign]
    tree = Tree(session, LAYOUTS[layout], roots, context)
    fake.sink = session.event_sink
    return tree, fake


async def settle(tree: Tree) -> bool:
    """Deliver fired watches and apply them, as the discoverer does."""
    await asyncio.sleep(0)
    events = tree.take_pending()
    return await tree.apply(events) if events is not None else False


def addresses(tree: Tree) -> set[str]:
    return {g.targets[0]["__address__"] for g in tree.groups()}


def member(port: int) -> bytes:
    return json.dumps({"serviceEndpoint": {"host": "127.0.0.1", "port": port}}).encode()


def curator(port: int) -> bytes:
    return json.dumps({"name": "s", "id": str(port), "address": "127.0.0.1", "port": port}).encode()


async def test_dubbo_reads_only_providers(persistent: bool) -> None:
    tree, zk = make_tree("dubbo", ["/dubbo"], persistent)
    zk.create("/dubbo/a.B/providers/dubbo%3A%2F%2F127.0.0.1%3A1%2Fa.B")
    zk.create("/dubbo/a.B/consumers/consumer%3A%2F%2F127.0.0.9%2Fa.B")
    await tree.resync(watch=True)
    assert addresses(tree) == {"127.0.0.1:1"}
    zk.create("/dubbo/a.B/providers/dubbo%3A%2F%2F127.0.0.1%3A2%2Fa.B")
    zk.create("/dubbo/a.B/consumers/consumer%3A%2F%2F127.0.0.8%2Fa.B")
    zk.create("/dubbo/c.D/providers/tri%3A%2F%2F127.0.0.1%3A3%2Fc.D")
    assert await settle(tree)
    assert addresses(tree) == {"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}
    assert not [r for r in zk.reads if "/consumers" in r[1]]
    assert not [r for r in zk.reads if r[0] == "get"]  # Dubbo keeps nothing in znode data
    zk.delete("/dubbo/a.B/providers/dubbo%3A%2F%2F127.0.0.1%3A1%2Fa.B")
    assert await settle(tree)
    assert addresses(tree) == {"127.0.0.1:2", "127.0.0.1:3"}
    zk.delete("/dubbo/c.D")
    assert await settle(tree)
    assert addresses(tree) == {"127.0.0.1:2"}


async def test_curator_base_path_absent_then_created_then_deleted(persistent: bool) -> None:
    tree, zk = make_tree("curator", ["/services"], persistent)
    await tree.resync(watch=True)
    assert tree.groups() == []
    assert ("addWatch" if persistent else "exists", "/services") in zk.reads
    zk.create("/services/web/a", curator(1))
    assert await settle(tree)
    assert addresses(tree) == {"127.0.0.1:1"}
    zk.set("/services/web/a", curator(2))
    assert await settle(tree)
    assert addresses(tree) == {"127.0.0.1:2"}
    zk.set("/services/web/a", curator(2))  # same data: nothing changes
    assert not await settle(tree)
    zk.delete("/services")
    assert await settle(tree)
    assert tree.groups() == []
    zk.create("/services/api/b", curator(3))
    assert await settle(tree)
    assert addresses(tree) == {"127.0.0.1:3"}


async def test_serverset_any_depth_and_bad_data(persistent: bool) -> None:
    tree, zk = make_tree("serverset", ["/ss"], persistent)
    zk.create("/ss/a/member_1", member(1))
    zk.create("/ss/b/c/member_2", member(2))
    zk.create("/ss/b/bad", b"{not json")
    await tree.resync(watch=True)
    assert addresses(tree) == {"127.0.0.1:1", "127.0.0.1:2"}
    zk.set("/ss/b/bad", member(3))
    assert await settle(tree)
    assert addresses(tree) == {"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"}
    zk.delete("/ss/b")
    assert await settle(tree)
    assert addresses(tree) == {"127.0.0.1:1"}


async def test_resync_reuses_parsed_groups() -> None:
    tree, zk = make_tree("serverset", ["/ss"])
    zk.create("/ss/member_1", member(1))
    await tree.resync(watch=True)
    before = tree.groups()
    await tree.resync(watch=True)
    assert tree.groups()[0] is before[0]


async def test_unexpected_calls_fail() -> None:
    tree, zk = make_tree("curator", ["/services"])
    with pytest.raises(AttributeError):
        zk.sync_async("/")  # type: ignore[attr-defined]
    await tree.resync(watch=False)
    assert {kind for kind, _ in zk.reads} <= {"get", "children", "exists"}


async def test_persistent_mode_sets_no_one_shot_watch_and_reads_nothing_for_dubbo() -> None:
    tree, zk = make_tree("dubbo", ["/dubbo"], persistent=True)
    zk.create("/dubbo/a.B/providers/dubbo%3A%2F%2F127.0.0.1%3A1%2Fa.B")
    await tree.resync(watch=True)
    assert tree.persistent
    assert not zk.data_watches
    assert not zk.child_watches
    zk.reads.clear()
    zk.create("/dubbo/a.B/providers/dubbo%3A%2F%2F127.0.0.1%3A2%2Fa.B")
    zk.create("/dubbo/a.B/consumers/consumer%3A%2F%2F127.0.0.8%2Fa.B")
    assert await settle(tree)
    assert addresses(tree) == {"127.0.0.1:1", "127.0.0.1:2"}
    assert zk.reads == []  # the event names the provider: nothing to read


# --- model-based: any sequence of changes ends in the state a fresh read gives -------------

_UNIVERSES = {
    "serverset": ("/ss", ["/ss", "/ss/a", "/ss/b", "/ss/a/x", "/ss/a/y", "/ss/b/x", "/ss/b/x/z"]),
    "curator": (
        "/services",
        [
            "/services",
            "/services/web",
            "/services/web/a",
            "/services/web/b",
            "/services/api/a",
            "/services/web/a/too-deep",
        ],
    ),
    "dubbo": (
        "/dubbo",
        [
            "/dubbo",
            "/dubbo/a.B/providers",
            "/dubbo/a.B/providers/dubbo%3A%2F%2F127.0.0.1%3A1%2Fa.B",
            "/dubbo/a.B/providers/dubbo%3A%2F%2F127.0.0.1%3A2%2Fa.B",
            "/dubbo/a.B/consumers/consumer%3A%2F%2F127.0.0.9%2Fa.B",
            "/dubbo/c.D/providers/tri%3A%2F%2F127.0.0.1%3A3%2Fc.D",
            "/dubbo/c.D/providers/not-a-url",
        ],
    ),
}
_DATA = {
    "serverset": st.one_of(st.just(b""), st.integers(1, 5).map(member), st.just(b"{bad")),
    "curator": st.one_of(st.just(b""), st.integers(1, 5).map(curator), st.just(b"{bad")),
    "dubbo": st.just(b""),
}


@st.composite
def _scenarios(draw: st.DrawFn) -> tuple[str, list[tuple[str, str, bytes, bool]]]:
    layout = draw(st.sampled_from(sorted(_UNIVERSES)))
    op = st.tuples(
        st.sampled_from(["create", "set", "delete"]),
        st.sampled_from(_UNIVERSES[layout][1]),
        _DATA[layout],
        st.booleans(),  # apply the events now, or let them pile up into one batch
    )
    return layout, draw(st.lists(op, max_size=25))


@settings(max_examples=100)
@given(scenario=_scenarios(), persistent=st.booleans())
def test_any_change_sequence_converges(
    scenario: tuple[str, list[tuple[str, str, bytes, bool]]], persistent: bool
) -> None:
    layout, ops = scenario
    root = _UNIVERSES[layout][0]

    async def run() -> None:
        tree, zk = make_tree(layout, [root], persistent)
        await tree.resync(watch=True)
        for op, path, data, settle_now in ops:
            if op == "create" and path not in zk.nodes:
                zk.create(path, data)
            elif op == "set" and path in zk.nodes:
                zk.set(path, data)
            elif op == "delete" and path in zk.nodes:
                zk.delete(path)
            if settle_now:
                await settle(tree)
        while tree.pending_count() or await settle(tree):
            await settle(tree)
        fresh, _ = make_tree(layout, [root])
        fresh.session.client = zk
        await fresh.resync(watch=False)
        assert sorted(g.source for g in tree.groups()) == sorted(g.source for g in fresh.groups())
        assert addresses(tree) == addresses(fresh)

    asyncio.run(run())
