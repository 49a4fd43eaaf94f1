"""The registry's etcd backend against a real etcd: several stores on one prefix are replicas."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from sdbridge.errors import BackendError
from sdbridge.registry.config import RegistryEtcdConfig
from sdbridge.registry.etcd_store import EtcdStore
from tests.servers.common import free_port
from tests.servers.etcd import (
    EtcdCluster,
    EtcdServer,
    etcd,  # noqa: F401 - fixture
    etcd_cluster3,  # noqa: F401 - fixture
    etcd_private,  # noqa: F401 - fixture
)

pytestmark = pytest.mark.etcd


async def until(condition: Callable[[], bool], what: str, rounds: int = 400) -> None:
    """Poll ``condition`` (0.025 s apart, at most ``rounds`` times): no timing assert."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"never happened: {what}")


def _config(endpoints: list[str], prefix: str) -> RegistryEtcdConfig:
    return RegistryEtcdConfig(endpoints=endpoints, prefix=prefix, request_timeout="3s")


@pytest.fixture
async def replicas(etcd: EtcdServer) -> AsyncIterator[list[EtcdStore]]:  # noqa: F811
    prefix = f"/sdbridge-test/{uuid.uuid4().hex}/"
    stores = [await EtcdStore.open(_config([etcd.url], prefix)) for _ in range(3)]
    try:
        yield stores
    finally:
        for store in stores:
            await store.close()


async def test_a_write_through_one_replica_reaches_the_others(replicas: list[EtcdStore]) -> None:
    a, b, c = replicas
    seen: list[set[tuple[str, str]]] = []
    with c.subscribe(seen.append):
        instance, created = await a.put("web", "w1", "127.0.0.1:9100", {"env": "prod"}, 30)
        assert created
        assert instance.ttl == 30
        assert a.get(("web", "w1")) is not None  # read-your-writes on the writer
        await until(lambda: b.get(("web", "w1")) is not None, "b sees the put")
        await until(lambda: c.get(("web", "w1")) is not None, "c sees the put")
        assert seen == [{("web", "w1")}]
        again, created = await b.put("web", "w1", "127.0.0.1:9100", {"env": "prod"}, 30)
        assert not created
        assert again.registered_at == instance.registered_at
        await asyncio.sleep(0.2)
        assert seen == [{("web", "w1")}]  # the same target again notifies nobody
        assert await c.delete("web", "w1")
        assert c.get(("web", "w1")) is None
        await until(lambda: a.get(("web", "w1")) is None, "a sees the delete")
        assert not await c.delete("web", "w1")


async def test_heartbeats_through_another_replica_keep_it_alive_then_it_expires_everywhere(
    replicas: list[EtcdStore],
) -> None:
    a, b, c = replicas
    await a.put("api", "i1", "127.0.0.1:9200", {}, 2)
    await until(lambda: b.get(("api", "i1")) is not None, "b sees the put")
    gone: list[set[tuple[str, str]]] = []
    with a.subscribe(gone.append), c.subscribe(gone.append):
        for _ in range(8):  # 4 s of heartbeats through b, twice the ttl
            before = b.requests
            assert await b.heartbeat("api", "i1") is not None
            assert b.requests - before == 1  # one keep-alive per heartbeat
            await asyncio.sleep(0.5)
        assert gone == []
        assert a.get(("api", "i1")) is not None
        await until(lambda: len(gone) == 2, "expiry seen by a and c")
    assert gone == [{("api", "i1")}, {("api", "i1")}]
    assert all(r.get(("api", "i1")) is None for r in replicas)
    assert await b.heartbeat("api", "i1") is None


async def test_etcd_requests_per_write_and_at_idle(replicas: list[EtcdStore]) -> None:
    a = replicas[0]
    start = a.requests
    await a.put("db", "d1", "127.0.0.1:5432", {}, 10)
    assert a.requests - start == 2  # lease grant + put
    start = a.requests
    await a.delete("db", "d1")
    assert a.requests - start == 1
    start = a.requests
    assert await a.heartbeat("db", "unknown") is None
    assert a.requests - start == 1  # one read: memory may be behind another replica
    start = a.requests
    await asyncio.sleep(1.0)
    assert a.requests == start  # nothing at idle


async def test_garbage_under_the_prefix_is_skipped_and_counted_per_key(
    etcd: EtcdServer,  # noqa: F811
    replicas: list[EtcdStore],
) -> None:
    a, b, _ = replicas
    prefix = a.config.prefix
    await a.put("web", "good", "127.0.0.1:9100", {}, 30)
    etcd.put(prefix + "web/junk", "not json")
    etcd.put(prefix + "web/shape", '["a list"]')
    etcd.put(prefix + "web/extra", '{"address": "127.0.0.1:1", "ttl": 5, "color": "red"}')
    etcd.put(prefix + "no-slash", '{"address": "127.0.0.1:1", "ttl": 5}')
    await until(lambda: len(b.invalid_keys) == 4, "four bad keys counted")
    assert sorted(b.invalid_keys) == sorted(
        prefix + k for k in ("web/junk", "web/shape", "web/extra", "no-slash")
    )
    assert [i.instance for i in b.instances()] == ["good"]
    # A relisting replica sees the same: junk skipped, the good instance kept.
    fresh = await EtcdStore.open(a.config)
    try:
        assert [i.instance for i in fresh.instances()] == ["good"]
        assert len(fresh.invalid_keys) == 4
    finally:
        await fresh.close()
    etcd.delete(prefix + "web/junk")
    await until(lambda: len(b.invalid_keys) == 3, "a deleted bad key is forgotten")


async def test_quorum_loss_refuses_writes_keeps_reads_and_recovers(
    etcd_cluster3: EtcdCluster,  # noqa: F811
) -> None:
    cluster = etcd_cluster3
    store = await EtcdStore.open(_config(cluster.endpoints, "/sdbridge/registry/"))
    try:
        await store.put("web", "w1", "127.0.0.1:9100", {}, 60)
        assert await store.check_writable() is None
        cluster.members[1].kill()
        cluster.members[2].kill()
        with pytest.raises(BackendError, match="cannot commit to etcd"):
            await store.put("web", "w2", "127.0.0.1:9101", {}, 60)
        assert store.write_error is not None
        assert await store.check_writable() is not None
        assert [i.instance for i in store.instances()] == ["w1"]  # last known good
        cluster.members[1].start(wait=False)
        cluster.members[2].start()
        await until(lambda: bool(cluster.up()) and len(cluster.up()) == 3, "quorum back")
        for _ in range(40):
            if await store.check_writable() is None:
                break
            await asyncio.sleep(0.25)
        assert store.write_error is None
        await store.put("web", "w2", "127.0.0.1:9101", {}, 60)
        await until(lambda: len(store) == 2, "the mirror follows again")
    finally:
        await store.close()


async def test_unreachable_etcd_or_wrong_credentials_fail_the_open_clearly(
    etcd_private: EtcdServer,  # noqa: F811
) -> None:
    port = free_port()
    with pytest.raises(BackendError, match=f"127.0.0.1:{port}"):
        await EtcdStore.open(_config([f"http://127.0.0.1:{port}"], "/sdbridge/registry/"))
    etcd_private.enable_auth("right-pw")
    wrong = RegistryEtcdConfig(
        endpoints=[etcd_private.url], prefix="/x/", username="root", password="s3cret-pw"
    )
    with pytest.raises(BackendError, match="authentication failed") as refused:
        await EtcdStore.open(wrong)
    assert "s3cret-pw" not in str(refused.value)
    right = RegistryEtcdConfig(
        endpoints=[etcd_private.url], prefix="/x/", username="root", password="right-pw"
    )
    store = await EtcdStore.open(right)
    try:
        await store.put("web", "w1", "127.0.0.1:9100", {}, 5)
        assert store.get(("web", "w1")) is not None
    finally:
        await store.close()
