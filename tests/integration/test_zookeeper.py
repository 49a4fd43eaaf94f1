"""zookeeper_sd_configs against a real ZooKeeper 3.8 (Debian's package).

Fixtures write znodes byte for byte as each framework does; each writer names the source
that defines the format. Every test runs a real Job with a file output and reads the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import orjson
import pytest
from kazoo.client import KazooClient

from sdbridge import metrics
from sdbridge.config import parse_config
from sdbridge.discovery.zookeeper import ZookeeperDiscoverer
from sdbridge.errors import ConfigError
from sdbridge.job import Job
from tests.servers import zookeeper as zookeeper_servers
from tests.servers.common import free_port
from tests.servers.tls import self_signed
from tests.servers.zookeeper import ZooKeeperServer, four_letter_word
from tests.unit.fakes import RecordingOutput

pytestmark = pytest.mark.zookeeper

zookeeper = zookeeper_servers.zookeeper  # the session-scoped server fixture

# --- framework writers ------------------------------------------------------------------


def java_url_encode(text: str) -> str:
    """Java's ``URLEncoder.encode(s, "UTF-8")``, which Dubbo's ``URL.encode`` calls.

    Unreserved: letters, digits and ``.-*_``; a space becomes ``+``; the rest is %XX
    in upper case (openjdk ``java/net/URLEncoder.java``).
    """
    return quote_plus(text, safe="*").replace("~", "%7E")


def dubbo_provider_url(
    interface: str, port: int, *, host: str = "127.0.0.1", protocol: str = "dubbo", **params: str
) -> str:
    """A provider URL as Dubbo's ``URL.toFullString()`` writes it: parameters sorted (TreeMap).

    Parameter set as a Dubbo 3.2 provider registers it at interface level.
    """
    base = {
        "anyhost": "true",
        "application": "demo-provider",
        "deprecated": "false",
        "dubbo": "2.0.2",
        "dynamic": "true",
        "generic": "false",
        "interface": interface,
        "methods": "sayHello,sayHelloAsync",
        "pid": "4242",
        "release": "3.2.0",
        "side": "provider",
        "timestamp": "1700000000000",
    }
    base.update(params)
    query = "&".join(f"{k}={v}" for k, v in sorted(base.items()))
    return f"{protocol}://{host}:{port}/{interface}?{query}"


def dubbo_provider_path(root: str, interface: str, url: str) -> str:
    """``ZookeeperRegistry#toUrlPath``: ``<root>/<encode(interface)>/providers/<encode(url)>``.

    https://github.com/apache/dubbo/blob/3.2/dubbo-registry/dubbo-registry-zookeeper/src/main/java/org/apache/dubbo/registry/zookeeper/ZookeeperRegistry.java
    """
    return f"{root}/{java_url_encode(interface)}/providers/{java_url_encode(url)}"


def curator_instance(
    name: str,
    instance_id: str,
    address: str,
    port: int | None,
    *,
    ssl_port: int | None = None,
    payload: Any = None,
    enabled: bool | None = None,
) -> bytes:
    """A ``ServiceInstance`` as Curator's ``JsonInstanceSerializer`` (Jackson) writes it.

    Field order and names: apache/curator curator-x-discovery ``ServiceInstance.java``
    (https://github.com/apache/curator/blob/master/curator-x-discovery/src/main/java/org/apache/curator/x/discovery/ServiceInstance.java);
    ``enabled`` was added by CURATOR-275. The uriSpec is Spring Cloud Zookeeper's default.
    """
    instance: dict[str, Any] = {
        "name": name,
        "id": instance_id,
        "address": address,
        "port": port,
        "sslPort": ssl_port,
        "payload": payload,
        "registrationTimeUTC": 1700000000000,
        "serviceType": "DYNAMIC",
        "uriSpec": {
            "parts": [
                {"value": "scheme", "variable": True},
                {"value": "://", "variable": False},
                {"value": "address", "variable": True},
                {"value": ":", "variable": False},
                {"value": "port", "variable": True},
            ]
        },
    }
    if enabled is not None:
        instance["enabled"] = enabled
    return json.dumps(instance, separators=(",", ":")).encode()


def spring_cloud_payload(name: str, instance_id: str, **metadata: str) -> dict[str, Any]:
    """Spring Cloud Zookeeper's ``ZookeeperInstance`` payload, with Jackson's ``@class``.

    https://github.com/spring-cloud/spring-cloud-zookeeper/blob/main/spring-cloud-zookeeper-discovery/src/main/java/org/springframework/cloud/zookeeper/discovery/ZookeeperInstance.java
    """
    return {
        "@class": "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance",
        "id": instance_id,
        "name": name,
        "metadata": {"instance_status": "UP", **metadata},
    }


def serverset_member(
    host: str, port: int, *, status: str = "ALIVE", shard: int = 0, **extra: tuple[str, int]
) -> bytes:
    """A Finagle/Twitter serverset member, as Prometheus's ``parseServersetMember`` reads it.

    https://github.com/prometheus/prometheus/blob/main/discovery/zookeeper/zookeeper.go
    (the JSON form of twitter/commons ``ServiceInstance``, ``endpoint.thrift``).
    """
    member = {
        "serviceEndpoint": {"host": host, "port": port},
        "additionalEndpoints": {k: {"host": h, "port": p} for k, (h, p) in extra.items()},
        "status": status,
        "shard": shard,
    }
    return json.dumps(member).encode()


# --- harness ----------------------------------------------------------------------------


class Recorder(RecordingOutput):
    """An output that keeps every snapshot the job publishes."""

    def target_counts(self) -> list[int]:
        return [s.target_count for s in self.snapshots]


@dataclass
class Running:
    job: Job
    file: Path
    recorder: Recorder

    @property
    def discoverer(self) -> ZookeeperDiscoverer:
        discoverer = self.job.runners[0].discoverer
        assert isinstance(discoverer, ZookeeperDiscoverer)
        return discoverer

    def targets(self) -> dict[str, dict[str, str]]:
        """The file's targets by address, with their labels."""
        if not self.file.exists():
            return {}
        out = {}
        for group in orjson.loads(self.file.read_bytes()):
            for target in group["targets"]:
                out[target] = group["labels"]
        return out

    async def until(
        self, condition: Callable[[dict[str, dict[str, str]]], bool], what: str = ""
    ) -> dict[str, dict[str, str]]:
        """Wait until the file's targets satisfy ``condition``; fail after 20 s."""
        for _ in range(400):
            targets = self.targets()
            if condition(targets):
                return targets
            await asyncio.sleep(0.05)
        pytest.fail(f"timed out waiting for {what or condition}; file has {self.targets()}")

    async def addresses(self, *expected: str) -> dict[str, dict[str, str]]:
        """Wait until the file holds exactly ``expected``."""
        return await self.until(lambda t: set(t) == set(expected), f"targets {expected}")


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, hosts: str, *, layout: str, paths: list[str], **options: Any
) -> AsyncIterator[Running]:
    config = parse_config(
        {
            "global": {
                "data_dir": str(tmp_path / "data"),
                "publish_delay": {"min": "50ms", "max": "200ms"},
            },
            "jobs": [
                {
                    "name": "zk",
                    "guard": {"enabled": False},
                    "output": {"file": str(tmp_path / "zk.json")},
                    "zookeeper_sd_configs": [
                        {"servers": [hosts], "paths": paths, "layout": layout, **options}
                    ],
                }
            ],
        }
    )
    recorder = Recorder()
    job = Job(config.jobs[0], config.global_, extra_outputs=[recorder])
    task = asyncio.create_task(job.run())
    try:
        yield Running(job, tmp_path / "zk.json", recorder)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def zk(zookeeper: ZooKeeperServer) -> Iterator[KazooClient]:
    """A kazoo client playing the frameworks' part (registering instances)."""
    client = KazooClient(hosts=zookeeper.hosts, timeout=30.0, connection_retry={"max_tries": -1})
    client.start(timeout=30)
    try:
        yield client
    finally:
        client.stop()
        client.close()


@pytest.fixture(params=[True, False], ids=["persistent", "one-shot"])
def persistent(request: pytest.FixtureRequest) -> bool:
    """Run the test with persistent recursive watches, and with one-shot watches."""
    return bool(request.param)


def check_mode(run: Running, persistent: bool) -> None:
    assert run.discoverer.watch_mode == ("persistent" if persistent else "one-shot")


@pytest.fixture
def base() -> str:
    """A znode prefix of this test's own."""
    return f"/sdbridge-test-{uuid.uuid4().hex[:10]}"


def invalid_count() -> float:
    value = metrics.INVALID_TARGETS.labels(job="zk", mechanism="zookeeper")._value.get()
    return float(value)


# --- layouts: register, update, deregister ----------------------------------------------


async def test_curator_register_update_deregister(
    tmp_path: Path,
    zookeeper: ZooKeeperServer,
    zk: KazooClient,
    base: str,
    persistent: bool,
) -> None:
    root = f"{base}/services"
    zk.create(
        f"{root}/web/a1",
        curator_instance("web", "a1", "127.0.0.1", 8080, payload=spring_cloud_payload("web", "a1")),
        makepath=True,
    )
    async with running(
        tmp_path, zookeeper.hosts, layout="curator", paths=[root], persistent_watches=persistent
    ) as run:
        targets = await run.addresses("127.0.0.1:8080")
        check_mode(run, persistent)
        assert targets["127.0.0.1:8080"] == {
            "__meta_zookeeper_path": f"{root}/web/a1",
            "__meta_zookeeper_curator_name": "web",
            "__meta_zookeeper_curator_id": "a1",
            "__meta_zookeeper_curator_address": "127.0.0.1",
            "__meta_zookeeper_curator_port": "8080",
            "__meta_zookeeper_curator_service_type": "DYNAMIC",
            "__meta_zookeeper_curator_registration_time_utc": "1700000000000",
            "__meta_zookeeper_curator_enabled": "true",
            "__meta_zookeeper_curator_uri_spec": "{scheme}://{address}:{port}",
            "__meta_zookeeper_curator_payload_class": "org.springframework.cloud.zookeeper.discovery.ZookeeperInstance",
            "__meta_zookeeper_curator_payload_id": "a1",
            "__meta_zookeeper_curator_payload_name": "web",
            "__meta_zookeeper_curator_payload_metadata_instance_status": "UP",
        }
        # Register: a second instance, ephemeral as Curator registers them, in a new service.
        zk.create(
            f"{root}/api/b1",
            curator_instance("api", "b1", "127.0.0.2", None, ssl_port=8443, enabled=True),
            ephemeral=True,
            makepath=True,
        )
        targets = await run.addresses("127.0.0.1:8080", "127.0.0.2:8443")
        assert targets["127.0.0.2:8443"]["__meta_zookeeper_curator_ssl_port"] == "8443"
        # Update: the instance re-registers with a new port and metadata.
        zk.set(
            f"{root}/web/a1",
            curator_instance(
                "web", "a1", "127.0.0.1", 9090, payload=spring_cloud_payload("web", "a1", zone="z1")
            ),
        )
        targets = await run.addresses("127.0.0.1:9090", "127.0.0.2:8443")
        assert targets["127.0.0.1:9090"]["__meta_zookeeper_curator_payload_metadata_zone"] == "z1"
        # Deregister.
        zk.delete(f"{root}/api/b1")
        await run.addresses("127.0.0.1:9090")
        zk.delete(f"{root}/web", recursive=True)
        await run.addresses()
        assert run.recorder.target_counts()[-1] == 0


async def test_dubbo_register_update_deregister(
    tmp_path: Path,
    zookeeper: ZooKeeperServer,
    zk: KazooClient,
    base: str,
    persistent: bool,
) -> None:
    root = f"{base}/dubbo"
    iface = "org.apache.dubbo.demo.DemoService"
    url1 = dubbo_provider_url(iface, 20880, version="1.0.0", group="g1")
    zk.create(dubbo_provider_path(root, iface, url1), ephemeral=True, makepath=True)
    # A consumer registers too; it is not a target.
    consumer = (
        f"consumer://127.0.0.9/{iface}?application=demo-consumer&category=consumers&side=consumer"
    )
    zk.create(
        f"{root}/{iface}/consumers/{java_url_encode(consumer)}", ephemeral=True, makepath=True
    )
    async with running(
        tmp_path, zookeeper.hosts, layout="dubbo", paths=[root], persistent_watches=persistent
    ) as run:
        targets = await run.addresses("127.0.0.1:20880")
        check_mode(run, persistent)
        labels = targets["127.0.0.1:20880"]
        assert labels["__meta_zookeeper_path"] == dubbo_provider_path(root, iface, url1)
        assert labels["__meta_zookeeper_dubbo_protocol"] == "dubbo"
        assert labels["__meta_zookeeper_dubbo_interface"] == iface
        assert labels["__meta_zookeeper_dubbo_path"] == iface
        assert labels["__meta_zookeeper_dubbo_application"] == "demo-provider"
        assert labels["__meta_zookeeper_dubbo_version"] == "1.0.0"
        assert labels["__meta_zookeeper_dubbo_group"] == "g1"
        assert labels["__meta_zookeeper_dubbo_side"] == "provider"
        assert labels["__meta_zookeeper_dubbo_param_methods"] == "sayHello,sayHelloAsync"
        assert labels["__meta_zookeeper_dubbo_param_release"] == "3.2.0"
        # Register: a Triple provider of another interface.
        other = "org.example.GreeterService"
        url2 = dubbo_provider_url(other, 50051, protocol="tri", host="127.0.0.2")
        zk.create(dubbo_provider_path(root, other, url2), ephemeral=True, makepath=True)
        targets = await run.addresses("127.0.0.1:20880", "127.0.0.2:50051")
        assert targets["127.0.0.2:50051"]["__meta_zookeeper_dubbo_protocol"] == "tri"
        # Update: Dubbo re-registers a changed URL as a new znode and removes the old one.
        url1b = dubbo_provider_url(iface, 20880, version="1.1.0", group="g1")
        zk.create(dubbo_provider_path(root, iface, url1b), ephemeral=True)
        zk.delete(dubbo_provider_path(root, iface, url1))
        targets = await run.until(
            lambda t: t.get("127.0.0.1:20880", {}).get("__meta_zookeeper_dubbo_version") == "1.1.0",
            "version 1.1.0",
        )
        assert set(targets) == {"127.0.0.1:20880", "127.0.0.2:50051"}
        # Deregister: the provider znodes go; the interface and category znodes stay.
        zk.delete(dubbo_provider_path(root, other, url2))
        zk.delete(dubbo_provider_path(root, iface, url1b))
        await run.addresses()


async def test_serverset_register_update_deregister(
    tmp_path: Path,
    zookeeper: ZooKeeperServer,
    zk: KazooClient,
    base: str,
    persistent: bool,
) -> None:
    path = f"{base}/aurora/prod/web"
    zk.ensure_path(path)
    first = zk.create(
        f"{path}/member_",
        serverset_member("127.0.0.1", 8080, admin=("127.0.0.1", 9990), http=("127.0.0.1", 8080)),
        ephemeral=True,
        sequence=True,
    )
    async with running(
        tmp_path, zookeeper.hosts, layout="serverset", paths=[path], persistent_watches=persistent
    ) as run:
        targets = await run.addresses("127.0.0.1:8080")
        check_mode(run, persistent)
        assert targets["127.0.0.1:8080"] == {
            "__meta_serverset_path": first,
            "__meta_serverset_endpoint_host": "127.0.0.1",
            "__meta_serverset_endpoint_port": "8080",
            "__meta_serverset_endpoint_host_admin": "127.0.0.1",
            "__meta_serverset_endpoint_port_admin": "9990",
            "__meta_serverset_endpoint_host_http": "127.0.0.1",
            "__meta_serverset_endpoint_port_http": "8080",
            "__meta_serverset_status": "ALIVE",
            "__meta_serverset_shard": "0",
        }
        second = zk.create(
            f"{path}/member_",
            serverset_member("127.0.0.2", 8080, shard=1),
            ephemeral=True,
            sequence=True,
        )
        targets = await run.addresses("127.0.0.1:8080", "127.0.0.2:8080")
        assert targets["127.0.0.2:8080"]["__meta_serverset_shard"] == "1"
        zk.set(second, serverset_member("127.0.0.2", 8080, shard=1, status="STOPPING"))
        await run.until(
            lambda t: t.get("127.0.0.2:8080", {}).get("__meta_serverset_status") == "STOPPING"
        )
        zk.delete(first)
        await run.addresses("127.0.0.2:8080")
        zk.delete(second)
        await run.addresses()


async def test_base_path_created_later_is_followed(
    tmp_path: Path,
    zookeeper: ZooKeeperServer,
    zk: KazooClient,
    base: str,
    persistent: bool,
) -> None:
    root = f"{base}/services"
    async with running(
        tmp_path, zookeeper.hosts, layout="curator", paths=[root], persistent_watches=persistent
    ) as run:
        await run.until(lambda t: run.file.exists() and t == {}, "an empty first sync")
        check_mode(run, persistent)
        zk.create(f"{root}/web/a", curator_instance("web", "a", "127.0.0.1", 80), makepath=True)
        await run.addresses("127.0.0.1:80")
        zk.delete(root, recursive=True)
        await run.addresses()
        zk.create(f"{root}/web/b", curator_instance("web", "b", "127.0.0.1", 81), makepath=True)
        await run.addresses("127.0.0.1:81")


async def test_poll_mode_follows_changes(
    tmp_path: Path,
    zookeeper: ZooKeeperServer,
    zk: KazooClient,
    base: str,
) -> None:
    path = f"{base}/ss"
    member = zk.create(
        f"{path}/member_", serverset_member("127.0.0.1", 1), sequence=True, makepath=True
    )
    async with running(
        tmp_path,
        zookeeper.hosts,
        layout="serverset",
        paths=[path],
        watch=False,
        refresh_interval="200ms",
    ) as run:
        await run.addresses("127.0.0.1:1")
        zk.set(member, serverset_member("127.0.0.1", 2))
        await run.addresses("127.0.0.1:2")
        # Polling leaves no watch on the server (nothing else in this test sets one).
        assert "Total watches:0" in four_letter_word(zookeeper.port, "wchs")


# --- bad input -------------------------------------------------------------------------


async def test_bad_curator_znodes_are_skipped_and_counted(
    tmp_path: Path,
    zookeeper: ZooKeeperServer,
    zk: KazooClient,
    base: str,
) -> None:
    root = f"{base}/services"
    zk.create(f"{root}/web/good", curator_instance("web", "good", "127.0.0.1", 80), makepath=True)
    # A host name instead of an IP is valid: Spring Cloud registers host names by default.
    zk.create(f"{root}/web/named", curator_instance("web", "named", "localhost", 81))
    zk.create(f"{root}/web/binary", b"\xff\xfe\x00garbage")  # undecodable
    zk.create(f"{root}/web/noport", curator_instance("web", "noport", "127.0.0.1", None))
    zk.create(f"{root}/web/array", b"[1, 2]")
    zk.create(f"{root}/web/empty", b"")
    zk.create(f"{root}/web/badhost", curator_instance("web", "badhost", "two words", 80))
    before = invalid_count()
    async with running(tmp_path, zookeeper.hosts, layout="curator", paths=[root]) as run:
        targets = await run.addresses("127.0.0.1:80", "localhost:81")
        assert targets["localhost:81"]["__meta_zookeeper_curator_address"] == "localhost"
        assert invalid_count() - before == 5
        # Fixing a bad znode brings it in; the others are not parsed nor counted again.
        zk.set(f"{root}/web/noport", curator_instance("web", "noport", "127.0.0.1", 82))
        await run.addresses("127.0.0.1:80", "localhost:81", "127.0.0.1:82")
        assert invalid_count() - before == 5


async def test_odd_dubbo_encodings(
    tmp_path: Path,
    zookeeper: ZooKeeperServer,
    zk: KazooClient,
    base: str,
) -> None:
    root = f"{base}/dubbo"
    iface = "com.example.Odd"
    providers = f"{root}/{iface}/providers"
    zk.ensure_path(providers)
    # Lower-case escapes decode like upper-case ones (Java's URLDecoder accepts both).
    lower = re.sub(
        r"%[0-9A-F]{2}", lambda m: m[0].lower(), java_url_encode(dubbo_provider_url(iface, 1001))
    )
    assert lower != java_url_encode(dubbo_provider_url(iface, 1001))
    zk.create(f"{providers}/{lower}")
    # dubbo-go escapes parameter values once more before escaping the whole URL.
    go_url = f"tri://127.0.0.1:1002/{iface}?application=go%2Dapp&interface={iface}&methods=A%2CB&side=provider"
    zk.create(f"{providers}/{java_url_encode(go_url)}")
    # '+' is a space; UTF-8 escapes decode to text.
    spaced = dubbo_provider_url(iface, 1003, application="demo app", owner="田中")
    zk.create(f"{providers}/{java_url_encode(spaced)}")
    # Bad: a malformed escape, escapes that are not UTF-8, not a URL, no port.
    zk.create(f"{providers}/dubbo%3A%2F%2F127.0.0.1%3A1004%2F{iface}%3Fa%3D%zz")
    zk.create(f"{providers}/dubbo%3A%2F%2F127.0.0.1%3A1005%2F{iface}%3Fa%3D%FF%FE")
    zk.create(f"{providers}/just-a-name")
    zk.create(f"{providers}/{java_url_encode(f'dubbo://127.0.0.1/{iface}?side=provider')}")
    before = invalid_count()
    async with running(tmp_path, zookeeper.hosts, layout="dubbo", paths=[root]) as run:
        targets = await run.addresses("127.0.0.1:1001", "127.0.0.1:1002", "127.0.0.1:1003")
        assert targets["127.0.0.1:1002"]["__meta_zookeeper_dubbo_application"] == "go-app"
        assert targets["127.0.0.1:1002"]["__meta_zookeeper_dubbo_param_methods"] == "A,B"
        assert targets["127.0.0.1:1003"]["__meta_zookeeper_dubbo_application"] == "demo app"
        assert targets["127.0.0.1:1003"]["__meta_zookeeper_dubbo_param_owner"] == "田中"
        assert invalid_count() - before == 4


def test_unknown_layout_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "jobs": [
                    {
                        "name": "zk",
                        "zookeeper_sd_configs": [
                            {"servers": ["127.0.0.1:2181"], "paths": ["/x"], "layout": "nacos"}
                        ],
                    }
                ]
            }
        )
    assert "jobs[0].zookeeper_sd_configs[0].layout" in str(info.value)


# --- faults ----------------------------------------------------------------------------


def assert_never_shrank(recorder: Recorder, expected: int) -> None:
    """Every publish held all ``expected`` targets (no loss, no empty intermediate publish)."""
    counts = recorder.target_counts()
    assert counts, "nothing was published"
    assert all(count >= expected for count in counts), counts


async def test_zookeeper_restart_loses_no_target(
    tmp_path: Path,
    zookeeper: ZooKeeperServer,
    zk: KazooClient,
    base: str,
    persistent: bool,
) -> None:
    root = f"{base}/services"
    for i in range(5):
        zk.create(
            f"{root}/web/i{i}",
            curator_instance("web", f"i{i}", "127.0.0.1", 8000 + i),
            makepath=True,
        )
    async with running(
        tmp_path,
        zookeeper.hosts,
        layout="curator",
        paths=[root],
        timeout="20s",
        persistent_watches=persistent,
    ) as run:
        await run.until(lambda t: len(t) == 5, "5 targets")
        check_mode(run, persistent)
        before = run.file.read_bytes()
        zookeeper.stop(kill=True)
        # The mechanism notices the outage and keeps what it has.
        for _ in range(100):
            if run.discoverer.session is not None and not run.discoverer.session.connected.is_set():
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the mechanism never noticed the server going away")
        await asyncio.sleep(0.5)
        assert run.file.read_bytes() == before
        await asyncio.to_thread(zookeeper.start)
        # Writes after the restart are followed (the watches came back with the resync).
        await asyncio.to_thread(
            zk.create, f"{root}/web/i5", curator_instance("web", "i5", "127.0.0.1", 8005)
        )
        await run.until(lambda t: len(t) == 6, "6 targets")
        assert_never_shrank(run.recorder, 5)


async def test_session_expiry_resyncs_without_loss(
    tmp_path: Path,
    zookeeper: ZooKeeperServer,
    zk: KazooClient,
    base: str,
    persistent: bool,
) -> None:
    root = f"{base}/dubbo"
    iface = "com.example.Expiring"
    for port in (1, 2, 3):
        zk.create(dubbo_provider_path(root, iface, dubbo_provider_url(iface, port)), makepath=True)
    async with running(
        tmp_path, zookeeper.hosts, layout="dubbo", paths=[root], persistent_watches=persistent
    ) as run:
        await run.until(lambda t: len(t) == 3, "3 targets")
        check_mode(run, persistent)
        client = run.discoverer.client
        assert client is not None
        session_id, password = client.client_id
        syncs = run.job.runners[0].context.status.refreshes
        # Expire the session the way ZooKeeper does: another client takes it over and closes it.
        thief = KazooClient(hosts=zookeeper.hosts, client_id=(session_id, password))
        await asyncio.to_thread(thief.start, 30)
        await asyncio.to_thread(thief.stop)
        thief.close()
        # A change made while the old session is gone is found by the resync.
        zk.delete(dubbo_provider_path(root, iface, dubbo_provider_url(iface, 3)))
        zk.create(dubbo_provider_path(root, iface, dubbo_provider_url(iface, 4)))
        await run.until(lambda t: set(t) == {f"127.0.0.1:{p}" for p in (1, 2, 4)}, "1, 2, 4")
        for _ in range(200):
            current = run.discoverer.client
            if current is not None and current.client_id and current.client_id[0] != session_id:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("no new session after the expiry")
        assert run.job.runners[0].context.status.refreshes > syncs
        assert_never_shrank(run.recorder, 2)
        # Watches work in the new session.
        zk.create(dubbo_provider_path(root, iface, dubbo_provider_url(iface, 5)))
        await run.until(lambda t: "127.0.0.1:5" in t, "provider 5")


async def test_unreachable_server_is_reported_and_nothing_is_published(tmp_path: Path) -> None:
    closed_port = f"127.0.0.1:{free_port()}"
    async with running(
        tmp_path, closed_port, layout="serverset", paths=["/x"], timeout="1s"
    ) as run:
        status = run.job.runners[0].context.status
        for _ in range(100):
            if status.last_error:
                break
            await asyncio.sleep(0.05)
        assert status.last_error is not None
        assert "cannot connect" in status.last_error
        assert not status.synced
        assert run.job.snapshot is None
        assert not run.file.exists()


async def test_provider_session_end_deregisters(
    tmp_path: Path, zookeeper: ZooKeeperServer, zk: KazooClient, base: str, persistent: bool
) -> None:
    root = f"{base}/dubbo"
    iface = "com.example.Ephemeral"
    zk.ensure_path(f"{root}/{iface}/providers")
    provider = KazooClient(hosts=zookeeper.hosts, timeout=5.0)
    await asyncio.to_thread(provider.start, 30)
    provider.create(dubbo_provider_path(root, iface, dubbo_provider_url(iface, 7)), ephemeral=True)
    zk.create(dubbo_provider_path(root, iface, dubbo_provider_url(iface, 8)))
    async with running(
        tmp_path, zookeeper.hosts, layout="dubbo", paths=[root], persistent_watches=persistent
    ) as run:
        await run.addresses("127.0.0.1:7", "127.0.0.1:8")
        check_mode(run, persistent)
        # The provider process ends: ZooKeeper removes its ephemeral znode.
        await asyncio.to_thread(provider.stop)
        provider.close()
        await run.addresses("127.0.0.1:8")


async def test_digest_auth_reads_protected_znodes(
    tmp_path: Path, zookeeper: ZooKeeperServer, zk: KazooClient, base: str
) -> None:
    from kazoo.security import make_digest_acl

    acl = [make_digest_acl("sd", "s3cret", read=True, write=True, create=True, delete=True)]
    path = f"{base}/secure"
    zk.ensure_path(base)
    zk.create(path, acl=acl)
    owner = KazooClient(hosts=zookeeper.hosts, auth_data=[("digest", "sd:s3cret")])
    await asyncio.to_thread(owner.start, 30)
    try:
        owner.create(f"{path}/member_1", serverset_member("127.0.0.1", 5), acl=acl)
        auth = {"username": "sd", "password": "s3cret"}
        async with running(
            tmp_path, zookeeper.hosts, layout="serverset", paths=[path], digest_auth=auth
        ) as run:
            await run.addresses("127.0.0.1:5")
            assert "s3cret" not in json.dumps(run.job.status().mechanisms[0].config)
        # Without credentials the read is refused: a failed sync, and nothing published.
        async with running(
            tmp_path / "noauth", zookeeper.hosts, layout="serverset", paths=[path]
        ) as run:
            status = run.job.runners[0].context.status
            for _ in range(100):
                if status.last_error:
                    break
                await asyncio.sleep(0.05)
            assert status.last_error is not None
            assert "NoAuth" in status.last_error
            assert run.job.snapshot is None
    finally:
        await asyncio.to_thread(owner.stop)
        owner.close()


async def test_tls(tmp_path: Path) -> None:
    cert = self_signed(tmp_path)
    with zookeeper_servers.zookeeper_server(tls=cert) as server:
        writer = KazooClient(hosts=server.hosts)
        await asyncio.to_thread(writer.start, 30)
        try:
            writer.create("/ss/member_1", serverset_member("127.0.0.1", 6), makepath=True)
        finally:
            await asyncio.to_thread(writer.stop)
            writer.close()
        tls = {"ca_file": str(cert.cert)}
        async with running(
            tmp_path, server.secure_hosts, layout="serverset", paths=["/ss"], tls_config=tls
        ) as run:
            await run.addresses("127.0.0.1:6")
