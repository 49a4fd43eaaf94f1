"""The registry store: persistence, TTL expiry, notifications, validation; and the mechanism."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdbridge.config import parse_config
from sdbridge.discovery.base import DiscoveryContext
from sdbridge.discovery.registry import (
    INSTANCE_LABEL,
    SERVICE_LABEL,
    RegistryDiscoverer,
    RegistrySDConfig,
)
from sdbridge.errors import BackendError
from sdbridge.job import Job
from sdbridge.model import TargetGroup, is_valid_label_name
from sdbridge.registry import store as store_module
from sdbridge.registry.instance import (
    RegistrationError,
    check_address,
    check_instance,
    check_labels,
    check_service,
    check_ttl,
)
from sdbridge.registry.store import Store, StoreHandle, db_path


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(db_path(tmp_path))
    try:
        yield opened
    finally:
        await opened.close()


async def eventually(check: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    """Poll ``check`` (plain or async) on the event loop until true; fail after 10s."""
    try:
        async with asyncio.timeout(10):
            while True:
                result = check()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


# --- store ---------------------------------------------------------------------------------


async def test_put_get_delete(store: Store) -> None:
    instance, created = await store.put("web", "a", "127.0.0.1:80", {"env": "dev"}, 30)
    assert created
    assert instance.expires_at == pytest.approx(time.time() + 30, abs=2)
    again, created = await store.put("web", "a", "127.0.0.1:81", {}, 30)
    assert not created
    assert again.registered_at == instance.registered_at
    assert [i.address for i in store.instances("web")] == ["127.0.0.1:81"]
    assert store.instances("other") == []
    assert await store.delete("web", "a")
    assert not await store.delete("web", "a")
    assert store.get(("web", "a")) is None


class ShiftedClock:
    """The store module's ``time``, with a wall clock the test moves forward at will."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


async def test_registrations_survive_reopen_and_ttl_keeps_counting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ShiftedClock()
    monkeypatch.setattr(store_module, "time", clock)
    path = db_path(tmp_path)
    store = await Store.open(path)
    kept, _ = await store.put("web", "long", "127.0.0.1:80", {"a": "b"}, 3600)
    await store.put("web", "short", "127.0.0.2:80", {}, 1)
    await store.close()

    # While "sdbridge" is stopped, the short ttl runs out; the long one keeps its expiry.
    clock.offset = 60.0
    reopened = await Store.open(path)
    try:
        assert [i.instance for i in reopened.instances()] == ["long"]
        survivor = reopened.get(("web", "long"))
        assert survivor is not None
        assert survivor.expires_at == kept.expires_at  # absolute: not reset by the restart
        assert survivor.labels == {"a": "b"}
    finally:
        await reopened.close()
    # And the expired row is gone from the database itself.
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT instance FROM instances").fetchall() == [("long",)]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_expiry_removes_and_notifies(store: Store) -> None:
    seen: list[set[tuple[str, str]]] = []
    with store.subscribe(seen.append):
        await store.put("web", "a", "127.0.0.1:80", {}, 0.3)
        await store.put("web", "b", "127.0.0.2:80", {}, 60)
        await eventually(lambda: store.get(("web", "a")) is None, "expiry")
    assert seen == [{("web", "a")}, {("web", "b")}, {("web", "a")}]
    assert store.get(("web", "b")) is not None


async def test_heartbeat_renews_and_does_not_notify(store: Store) -> None:
    seen: list[set[tuple[str, str]]] = []
    first, _ = await store.put("web", "a", "127.0.0.1:80", {}, 0.5)
    with store.subscribe(seen.append):
        for _ in range(6):  # 0.6s in all: the instance outlives its first ttl
            await asyncio.sleep(0.1)
            renewed = await store.heartbeat("web", "a")
            assert renewed is not None
        # Re-registering the same target only renews, too.
        await store.put("web", "a", "127.0.0.1:80", {}, 0.5)
    assert store.get(("web", "a")) is not None
    assert renewed.expires_at > first.expires_at
    assert seen == []
    assert await store.heartbeat("web", "unknown") is None


async def test_changed_labels_notify(store: Store) -> None:
    seen: list[set[tuple[str, str]]] = []
    await store.put("web", "a", "127.0.0.1:80", {"v": "1"}, 60)
    with store.subscribe(seen.append):
        await store.put("web", "a", "127.0.0.1:80", {"v": "2"}, 60)
    assert seen == [{("web", "a")}]


async def test_second_process_is_locked_out(store: Store) -> None:
    with pytest.raises(BackendError, match="in use by another sdbridge"):
        await Store.open(store.path)


async def test_unopenable_database_is_a_backend_error(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    path.write_bytes(b"this is not a sqlite database, not at all" * 100)
    with pytest.raises(BackendError, match="cannot open registry database"):
        await Store.open(path)


async def test_store_handle_opens_once_follows_data_dir_and_closes(tmp_path: Path) -> None:
    handle = StoreHandle()
    one, two = await asyncio.gather(handle.get(tmp_path / "a"), handle.get(tmp_path / "a"))
    assert one is two
    assert handle.current is one
    await one.put("web", "a", "127.0.0.1:80", {}, 60)
    moved = await handle.get(tmp_path / "b")  # data_dir changed on reload: the old one closes
    assert moved is not one
    assert moved.get(("web", "a")) is None
    with pytest.raises(BackendError):
        await one.put("web", "b", "127.0.0.1:81", {}, 60)
    await handle.close()
    assert handle.current is None
    again = await handle.get(tmp_path / "a")
    try:
        assert again.get(("web", "a")) is not None
    finally:
        await handle.close()


@contextlib.asynccontextmanager
async def shared(data_dir: Path) -> AsyncIterator[tuple[StoreHandle, Store]]:
    """A store handle as the daemon holds one, with its store open in ``data_dir``."""
    handle = StoreHandle()
    try:
        yield handle, await handle.get(data_dir)
    finally:
        await handle.close()


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        None,
        "",
        5,
        "127.0.0.1",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "http://h:80",
        "h :80",
        "x" * 300 + ":80",
    ],
)
def test_invalid_addresses(address: object) -> None:
    with pytest.raises(RegistrationError) as info:
        check_address(address)
    assert info.value.field == "address"


@pytest.mark.parametrize("address", ["127.0.0.1:9100", "[::1]:80", "db-1.example:5432"])
def test_valid_addresses(address: str) -> None:
    assert check_address(address) == address


@pytest.mark.parametrize(
    ("labels", "field"),
    [
        ({"a-b": "x"}, "labels.a-b"),
        ({"1a": "x"}, "labels.1a"),
        ({"": "x"}, "labels."),
        ({"__meta_registry_service": "spoof"}, "labels.__meta_registry_service"),
        ({"__address__": "127.0.0.1:1"}, "labels.__address__"),
        ({"a": 1}, "labels.a"),
        ({"a": "x" * 5000}, "labels.a"),
        ({f"l{i}": "x" for i in range(65)}, "labels"),
        (["a"], "labels"),
    ],
)
def test_invalid_labels(labels: object, field: str) -> None:
    with pytest.raises(RegistrationError) as info:
        check_labels(labels)
    assert info.value.field == field


def test_scrape_labels_are_allowed() -> None:
    labels = {"__metrics_path__": "/m", "__scheme__": "https", "__param_module": "x", "env": ""}
    assert check_labels(labels) == labels


@given(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=5))
def test_labels_accepted_only_if_prometheus_accepts_them(labels: dict[str, str]) -> None:
    try:
        check_labels(labels)
    except RegistrationError:
        assert any(not is_valid_label_name(n) or n.startswith("__") for n in labels)
    else:
        assert all(is_valid_label_name(n) and not n.startswith("__") for n in labels)


@pytest.mark.parametrize(
    "ttl", ["0s", "0", -5, 0.5, "2d", 1e300, float("nan"), "soon", True, [1], {}]
)
def test_absurd_ttls(ttl: object) -> None:
    with pytest.raises(RegistrationError) as info:
        check_ttl(ttl, default=30, minimum=1, maximum=86400)
    assert info.value.field == "ttl"


@pytest.mark.parametrize(("ttl", "seconds"), [(None, 30), ("1m30s", 90), (10, 10), (2.5, 2.5)])
def test_ttls(ttl: object, seconds: float) -> None:
    assert check_ttl(ttl, default=30, minimum=1, maximum=86400) == seconds


@pytest.mark.parametrize("name", ["", ".", "..", "-a", "a/b", "a b", "x" * 129, "é", "web\n"])
def test_invalid_service_names(name: str) -> None:
    with pytest.raises(RegistrationError):
        check_service(name)


@pytest.mark.parametrize("name", ["", "..", "a/b", "x" * 201, "a1\n"])
def test_invalid_instance_ids(name: str) -> None:
    with pytest.raises(RegistrationError):
        check_instance(name)


def test_instance_ids_may_be_addresses() -> None:
    assert check_instance("127.0.0.1:9100") == "127.0.0.1:9100"
    assert check_instance("[::1]:9100") == "[::1]:9100"


# --- the mechanism ------------------------------------------------------------------------------


async def run_mechanism(
    data_dir: Path, config: RegistrySDConfig, handle: StoreHandle
) -> tuple[asyncio.Task[None], asyncio.Queue[list[TargetGroup]]]:
    sent: asyncio.Queue[list[TargetGroup]] = asyncio.Queue()

    async def send(groups: list[TargetGroup]) -> None:
        await sent.put(groups)

    context = DiscoveryContext(
        job="j", mechanism="registry", data_dir=data_dir, registry_store=handle
    )
    task = asyncio.create_task(RegistryDiscoverer(config, context).run(send))
    return task, sent


async def test_mechanism_sends_full_set_then_changed_sources(tmp_path: Path) -> None:
    async with shared(tmp_path) as (handle, store):
        await store.put("web", "a", "127.0.0.1:80", {"env": "dev"}, 60)
        await store.put("db", "x", "127.0.0.9:5432", {}, 60)
        task, sent = await run_mechanism(tmp_path, RegistrySDConfig(services=["web"]), handle)
        try:
            first = await asyncio.wait_for(sent.get(), 5)
            assert first == [
                TargetGroup(
                    source="web/a",
                    targets=({"__address__": "127.0.0.1:80"},),
                    labels={"env": "dev", SERVICE_LABEL: "web", INSTANCE_LABEL: "a"},
                )
            ]
            await store.put("db", "y", "127.0.0.8:5432", {}, 60)  # filtered out: no send
            await store.put("web", "b", "127.0.0.2:80", {}, 60)
            assert [g.source for g in await asyncio.wait_for(sent.get(), 5)] == ["web/b"]
            await store.heartbeat("web", "a")  # no change: no send
            await store.delete("web", "a")
            removed = await asyncio.wait_for(sent.get(), 5)
            assert removed == [TargetGroup(source="web/a")]
            assert sent.empty()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_mechanism_batches_a_burst(tmp_path: Path) -> None:
    async with shared(tmp_path) as (handle, store):
        task, sent = await run_mechanism(tmp_path, RegistrySDConfig(), handle)
        try:
            assert await asyncio.wait_for(sent.get(), 5) == []
            await asyncio.gather(
                *(store.put("web", f"i{n}", f"127.0.0.{n + 1}:80", {}, 60) for n in range(50))
            )
            received: set[str] = set()
            while len(received) < 50:
                received.update(g.source for g in await asyncio.wait_for(sent.get(), 5))
            assert received == {f"web/i{n}" for n in range(50)}
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_concurrent_writes_leave_memory_equal_to_the_database(tmp_path: Path) -> None:
    """Writes batched into group commits land in memory in the order the database saw them."""
    path = db_path(tmp_path)
    store = await Store.open(path)
    rng = random.Random(7)
    ops = []
    for n in range(400):
        key = ("web", f"i{rng.randrange(5)}")
        choice = rng.random()
        if choice < 0.5:
            ops.append(store.put(*key, f"127.0.0.{n % 250 + 1}:80", {"n": str(n)}, 60))
        elif choice < 0.8:
            ops.append(store.heartbeat(*key))
        else:
            ops.append(store.delete(*key))
    await asyncio.gather(*ops)
    in_memory = {i.key: (i.address, dict(i.labels), i.expires_at) for i in store.instances()}
    await store.close()
    reopened = await Store.open(path)
    try:
        on_disk = {i.key: (i.address, dict(i.labels), i.expires_at) for i in reopened.instances()}
    finally:
        await reopened.close()
    assert in_memory == on_disk
    assert in_memory  # the sequence leaves some registered


async def test_writes_after_close_are_refused(tmp_path: Path) -> None:
    store = await Store.open(db_path(tmp_path))
    await store.put("web", "a", "127.0.0.1:80", {}, 60)
    await store.close()
    with pytest.raises(BackendError, match="closed"):
        await store.put("web", "b", "127.0.0.1:81", {}, 60)
    with pytest.raises(BackendError, match="closed"):
        await store.heartbeat("web", "a")


async def test_heartbeats_are_written_behind_and_flushed_on_close(tmp_path: Path) -> None:
    path = db_path(tmp_path)

    def expiry_on_disk() -> float:
        with contextlib.closing(sqlite3.connect(path)) as db:
            return float(db.execute("SELECT expires_at FROM instances").fetchone()[0])

    store = await Store.open(path)
    first, _ = await store.put("web", "a", "127.0.0.1:80", {}, 60)
    await asyncio.sleep(0.05)
    renewed = await store.heartbeat("web", "a")
    assert renewed is not None
    assert renewed.expires_at > first.expires_at
    await eventually(lambda: expiry_on_disk() == renewed.expires_at, "the heartbeat on disk")

    await asyncio.sleep(0.05)
    last = await store.heartbeat("web", "a")
    assert last is not None
    await store.close()  # before the write-behind delay: close writes it
    assert expiry_on_disk() == last.expires_at


async def test_unusable_data_dir_fails_the_mechanism_and_publishes_nothing(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("a file where data_dir should be")
    config = parse_config(
        {
            "global": {"data_dir": str(tmp_path / "not-a-dir")},
            "jobs": [{"name": "registry", "registry_sd_configs": [{}]}],
        }
    )
    job = Job(config.jobs[0], config.global_)
    task = asyncio.create_task(job.run())
    try:
        status = job.runners[0].context.status
        await eventually(lambda: status.failures > 0, "the mechanism's failure")
        assert "registry database" in (status.last_error or "")
        assert job.snapshot is None  # nothing published, /sd answers 503
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_the_registry_package_imports_no_mechanism_daemon_or_web() -> None:
    # DESIGN.md "Layers": the registry's stores and client sit below the web and the daemon.
    import ast

    import sdbridge.registry

    package = Path(sdbridge.registry.__file__).parent
    upward = ("discovery", "web", "daemon", "job", "cli")
    # The one HTTP client layer and the etcd gateway client with its connection options:
    # clients, not mechanisms (the etcd backend shares them with etcd_sd_configs).
    shared = ("discovery._http", "discovery.etcd.gateway", "discovery.etcd.config")
    found = []
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if (
                isinstance(node, ast.ImportFrom)
                and node.level >= 2
                and (node.module or "").split(".")[0] in upward
                and node.module not in shared
            ):
                found.append(f"{module.name}: {node.module}")
    assert found == []
