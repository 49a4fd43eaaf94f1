"""etcd_sd_configs against a real etcd: every layout, faults and bad input, through a Job.

Keys are written byte for byte as each framework writes them (tests/servers/etcd.py links
each layout's definition). Every test reads the job's file output and records every
snapshot the job publishes, so a target lost or an empty publish in between is seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from sdbridge.config import parse_config
from sdbridge.discovery.etcd import EtcdDiscoverer
from sdbridge.job import Job
from tests.servers.common import free_port
from tests.servers.etcd import (
    EtcdServer,
    coredns_record,
    etcd,  # noqa: F401 - fixture
    etcd_private,  # noqa: F401 - fixture
    etcd_tls,  # noqa: F401 - fixture
    go_micro_instance,
    go_zero_instance,
    kratos_instance,
    naming_endpoint,
)
from tests.unit.fakes import RecordingOutput, until

pytestmark = pytest.mark.etcd


Targets = dict[str, dict[str, str]]  # address → labels


@dataclass
class RunningJob:
    """A Job running etcd_sd_configs with a file output and a recording output."""

    job: Job
    path: Path
    recording: RecordingOutput
    task: asyncio.Task[None]
    name: str = "etcd"
    seen: list[Targets] = field(default_factory=list)

    @property
    def discoverer(self) -> EtcdDiscoverer:
        discoverer = self.job.runners[0].discoverer
        assert isinstance(discoverer, EtcdDiscoverer)
        return discoverer

    def targets(self) -> Targets:
        """The file's content as address → labels (one group per target)."""
        if not self.path.exists():
            return {}
        groups = json.loads(self.path.read_bytes())
        return {g["targets"][0]: g["labels"] for g in groups}

    def published(self) -> list[set[str]]:
        """The addresses of every snapshot the job published, in order."""
        return [{e.labels["__address__"] for e in s.entries} for s in self.recording.snapshots]

    async def wait(self, condition: Callable[[Targets], bool], what: str) -> Targets:
        """Wait until the file's targets satisfy ``condition``; return them."""
        await until(lambda: condition(self.targets()), within=30, what=what)
        return self.targets()

    async def wait_addresses(self, *addresses: str) -> Targets:
        """Wait until the file holds exactly ``addresses``."""
        return await self.wait(lambda t: set(t) == set(addresses), f"targets {addresses}")


@contextlib.asynccontextmanager
async def running_job(
    tmp_path: Path, server: EtcdServer, *, start: bool = True, **sd_config: Any
) -> AsyncIterator[RunningJob]:
    """Run a job with one etcd_sd_configs entry until the block ends."""
    config = parse_config(
        {
            "global": {
                "data_dir": str(tmp_path / "data"),
                "publish_delay": {"min": "0s", "max": "0s"},
            },
            "jobs": [
                {
                    "name": "etcd",
                    "etcd_sd_configs": [{"endpoints": [server.url]} | sd_config],
                    "output": {"file": str(tmp_path / "targets.json")},
                    # The mass-deletion guard would hold back deregistrations: not tested here.
                    "guard": {"enabled": False},
                }
            ],
        }
    )
    recording = RecordingOutput()
    job = Job(config.jobs[0], config.global_, extra_outputs=[recording])
    handle = RunningJob(job, tmp_path / "targets.json", recording, asyncio.Future())
    if start:
        handle.task = asyncio.create_task(job.run())
    try:
        yield handle
    finally:
        handle.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await handle.task


def start(handle: RunningJob) -> None:
    """Start a job created with ``start=False``."""
    handle.task = asyncio.create_task(handle.job.run())


def unique() -> str:
    return uuid.uuid4().hex[:10]


def no_empty_publish(handle: RunningJob) -> None:
    """No snapshot the job published was empty."""
    assert all(handle.published()), handle.published()


def invalid_count() -> float:
    value = REGISTRY.get_sample_value(
        "sdbridge_invalid_targets_total", {"job": "etcd", "mechanism": "etcd"}
    )
    return value or 0.0


# --- every layout: register, update, deregister -------------------------------------------


async def test_endpoints_layout(tmp_path: Path, etcd: EtcdServer) -> None:  # noqa: F811
    target = f"/{unique()}/greeter"
    a = naming_endpoint(target, "127.0.0.1:9001", "127.0.0.1:9001", {"zone": "eu-1", "w": 10})
    b = naming_endpoint(target, "instance-b", "127.0.0.1:9002")
    etcd.put(*a)
    async with running_job(tmp_path, etcd, prefix=target + "/", layout="endpoints") as job:
        targets = await job.wait_addresses("127.0.0.1:9001")
        assert targets["127.0.0.1:9001"] == {
            "__meta_etcd_key": a[0],
            "__meta_etcd_prefix": target + "/",
            "__meta_etcd_service": target,
            "__meta_etcd_metadata_zone": "eu-1",
            "__meta_etcd_metadata_w": "10",
        }
        etcd.put(*b)  # register
        await job.wait_addresses("127.0.0.1:9001", "127.0.0.1:9002")
        etcd.put(*naming_endpoint(target, "instance-b", "127.0.0.1:9003"))  # update
        await job.wait_addresses("127.0.0.1:9001", "127.0.0.1:9003")
        etcd.delete(a[0])  # deregister: endpoints.Manager.DeleteEndpoint deletes the key
        await job.wait_addresses("127.0.0.1:9003")
        # gRPC naming's older Delete update (Op 1) also removes the instance.
        etcd.put(b[0], '{"Op":1,"Addr":"127.0.0.1:9003","Metadata":null}')
        await job.wait(lambda t: not t, "no targets")
        no_empty_publish_until_last(job)


def no_empty_publish_until_last(handle: RunningJob) -> None:
    """Only the last snapshot (after the last deregistration) may be empty."""
    assert all(handle.published()[:-1]), handle.published()


async def test_kratos_layout(tmp_path: Path, etcd: EtcdServer) -> None:  # noqa: F811
    namespace = f"/{unique()}/microservices"
    a = kratos_instance(
        "helloworld",
        "host-a",
        ["grpc://127.0.0.1:9000?isSecure=false", "http://127.0.0.1:8000?isSecure=false"],
        version="v1.0.0",
        metadata={"app.kubernetes.io/name": "helloworld"},
        namespace=namespace,
    )
    b = kratos_instance(
        "helloworld",
        "host-b",
        ["grpc://127.0.0.2:9000", "https://127.0.0.2:8443"],
        namespace=namespace,
    )
    etcd.put(*a)
    prefix = namespace + "/helloworld/"
    async with running_job(tmp_path, etcd, prefix=prefix, layout="kratos") as job:
        targets = await job.wait_addresses("127.0.0.1:9000", "127.0.0.1:8000")
        assert targets["127.0.0.1:8000"] == {
            "__meta_etcd_key": f"{namespace}/helloworld/host-a",
            "__meta_etcd_prefix": prefix,
            "__meta_etcd_service": "helloworld",
            "__meta_etcd_instance_id": "host-a",
            "__meta_etcd_version": "v1.0.0",
            "__meta_etcd_metadata_app_kubernetes_io_name": "helloworld",
            "__meta_etcd_endpoint": "http://127.0.0.1:8000?isSecure=false",
            "__meta_etcd_endpoint_scheme": "http",
        }
        assert targets["127.0.0.1:9000"]["__meta_etcd_endpoint_scheme"] == "grpc"
        etcd.put(*b)
        targets = await job.wait(lambda t: len(t) == 4, "two instances")
        assert targets["127.0.0.2:8443"]["__meta_etcd_endpoint_scheme"] == "https"
        update = kratos_instance(
            "helloworld",
            "host-b",
            ["grpc://127.0.0.2:9000", "https://127.0.0.2:8443"],
            version="v1.1.0",
            namespace=namespace,
        )
        etcd.put(*update)
        await job.wait(
            lambda t: t.get("127.0.0.2:9000", {}).get("__meta_etcd_version") == "v1.1.0",
            "version update",
        )
        etcd.delete(a[0])  # Registry.Deregister deletes the key
        await job.wait_addresses("127.0.0.2:9000", "127.0.0.2:8443")
        no_empty_publish(job)


async def test_go_zero_layout(tmp_path: Path, etcd: EtcdServer) -> None:  # noqa: F811
    service = f"{unique()}.rpc"
    lease_a, lease_b = etcd.grant(60), etcd.grant(60)
    a = go_zero_instance(service, lease_a, "127.0.0.1:8080")
    etcd.put(*a, lease=lease_a)
    async with running_job(tmp_path, etcd, prefix=service + "/", layout="go-zero") as job:
        targets = await job.wait_addresses("127.0.0.1:8080")
        assert targets["127.0.0.1:8080"] == {
            "__meta_etcd_key": f"{service}/{lease_a}",
            "__meta_etcd_prefix": service + "/",
            "__meta_etcd_service": service,
            "__meta_etcd_instance_id": str(lease_a),
            "__meta_etcd_lease": str(lease_a),
        }
        etcd.put(*go_zero_instance(service, lease_b, "127.0.0.1:8081"), lease=lease_b)
        await job.wait_addresses("127.0.0.1:8080", "127.0.0.1:8081")
        etcd.put(*go_zero_instance(service, lease_b, "127.0.0.1:8082"), lease=lease_b)
        await job.wait_addresses("127.0.0.1:8080", "127.0.0.1:8082")
        etcd.revoke(lease_a)  # Publisher.Stop revokes its lease, which deletes the key
        await job.wait_addresses("127.0.0.1:8082")
        no_empty_publish(job)
    etcd.revoke(lease_b)


async def test_go_micro_layout(tmp_path: Path, etcd: EtcdServer) -> None:  # noqa: F811
    name = f"greeter-{unique()}"
    node_meta = {"broker": "http", "protocol": "mucp", "registry": "etcd", "server": "mucp"}
    a = go_micro_instance(
        name, f"{name}-a", "127.0.0.1:54321", metadata={"team": "x"}, node_metadata=node_meta
    )
    etcd.put(*a)
    prefix = f"/micro/registry/{name}/"
    async with running_job(tmp_path, etcd, prefix=prefix, layout="go-micro") as job:
        targets = await job.wait_addresses("127.0.0.1:54321")
        assert targets["127.0.0.1:54321"] == {
            "__meta_etcd_key": f"/micro/registry/{name}/{name}-a",
            "__meta_etcd_prefix": prefix,
            "__meta_etcd_service": name,
            "__meta_etcd_version": "latest",
            "__meta_etcd_instance_id": f"{name}-a",
            "__meta_etcd_metadata_team": "x",
            "__meta_etcd_metadata_broker": "http",
            "__meta_etcd_metadata_protocol": "mucp",
            "__meta_etcd_metadata_registry": "etcd",
            "__meta_etcd_metadata_server": "mucp",
        }
        etcd.put(*go_micro_instance(name, f"{name}-b", "127.0.0.1:54322"))
        await job.wait_addresses("127.0.0.1:54321", "127.0.0.1:54322")
        etcd.put(*go_micro_instance(name, f"{name}-b", "127.0.0.1:54322", version="2"))
        await job.wait(
            lambda t: t.get("127.0.0.1:54322", {}).get("__meta_etcd_version") == "2", "update"
        )
        etcd.delete(a[0])  # Deregister deletes nodePath(service, node id)
        await job.wait_addresses("127.0.0.1:54322")
        no_empty_publish(job)


async def test_coredns_layout(tmp_path: Path, etcd: EtcdServer) -> None:  # noqa: F811
    zone = unique()
    a = coredns_record(f"x1.web.{zone}.skydns.local", "127.0.0.1", 8080, priority=10, ttl=60)
    etcd.put(*a)
    prefix = f"/skydns/local/skydns/{zone}/"
    async with running_job(tmp_path, etcd, prefix=prefix, layout="coredns") as job:
        targets = await job.wait_addresses("127.0.0.1:8080")
        assert targets["127.0.0.1:8080"] == {
            "__meta_etcd_key": f"/skydns/local/skydns/{zone}/web/x1",
            "__meta_etcd_prefix": prefix,
            "__meta_etcd_service": f"x1.web.{zone}.skydns.local",
            "__meta_etcd_dns_priority": "10",
            "__meta_etcd_dns_ttl": "60",
        }
        etcd.put(*coredns_record(f"x2.web.{zone}.skydns.local", "127.0.0.2", 8080, group="g"))
        await job.wait_addresses("127.0.0.1:8080", "127.0.0.2:8080")
        etcd.put(*coredns_record(f"x2.web.{zone}.skydns.local", "127.0.0.2", 9090))
        await job.wait_addresses("127.0.0.1:8080", "127.0.0.2:9090")
        etcd.delete(a[0])
        await job.wait_addresses("127.0.0.2:9090")
        no_empty_publish(job)


async def test_json_layout(tmp_path: Path, etcd: EtcdServer) -> None:  # noqa: F811
    prefix = f"/{unique()}/instances/"

    def instance(ip: str, port: int, zone: str) -> str:
        return json.dumps({"svc": {"name": "api", "net": {"ip": ip, "port": port}}, "tags": [zone]})

    etcd.put(prefix + "a", instance("127.0.0.1", 7001, "z1"))
    fields = {
        "host": "svc.net.ip",
        "port": "svc.net.port",
        "labels": {"name": "svc.name", "zone": "tags[0]"},
    }
    async with running_job(tmp_path, etcd, prefix=prefix, layout="json", fields=fields) as job:
        targets = await job.wait_addresses("127.0.0.1:7001")
        assert targets["127.0.0.1:7001"] == {
            "__meta_etcd_key": prefix + "a",
            "__meta_etcd_prefix": prefix,
            "__meta_etcd_json_name": "api",
            "__meta_etcd_json_zone": "z1",
        }
        etcd.put(prefix + "b", instance("127.0.0.2", 7001, "z2"))
        await job.wait_addresses("127.0.0.1:7001", "127.0.0.2:7001")
        etcd.put(prefix + "b", instance("127.0.0.2", 7002, "z2"))
        await job.wait_addresses("127.0.0.1:7001", "127.0.0.2:7002")
        etcd.delete(prefix + "a")
        await job.wait_addresses("127.0.0.2:7002")
        no_empty_publish(job)


async def test_poll_mode_follows_changes(tmp_path: Path, etcd: EtcdServer) -> None:  # noqa: F811
    prefix = f"/{unique()}/"
    etcd.put(*go_zero_instance(prefix + "svc", 1, "127.0.0.1:8080"))
    async with running_job(
        tmp_path, etcd, prefix=prefix, layout="go-zero", watch=False, refresh_interval="1s"
    ) as job:
        await job.wait_addresses("127.0.0.1:8080")
        etcd.put(*go_zero_instance(prefix + "svc", 2, "127.0.0.1:8081"))
        await job.wait_addresses("127.0.0.1:8080", "127.0.0.1:8081")
        no_empty_publish(job)


async def test_paginated_list_reads_one_revision(tmp_path: Path, etcd: EtcdServer) -> None:  # noqa: F811
    prefix = f"/{unique()}/"
    items = [go_zero_instance(prefix + "svc", i, f"127.0.0.1:{10000 + i}") for i in range(25)]
    etcd.put_many(items)
    async with running_job(tmp_path, etcd, prefix=prefix, layout="go-zero", page_size=4) as job:
        targets = await job.wait(lambda t: len(t) == 25, "25 targets")
        assert set(targets) == {f"127.0.0.1:{10000 + i}" for i in range(25)}
        assert len(job.recording.snapshots) == 1  # one complete list, one publish


# --- faults ---------------------------------------------------------------------------


async def test_compaction_past_the_watch_revision_relists(
    tmp_path: Path,
    etcd: EtcdServer,  # noqa: F811
) -> None:
    prefix = f"/{unique()}/"
    keep = go_zero_instance(prefix + "svc", 1, "127.0.0.1:8001")
    gone = go_zero_instance(prefix + "svc", 2, "127.0.0.1:8002")
    etcd.put(*keep)
    etcd.put(*gone)
    async with running_job(tmp_path, etcd, start=False, prefix=prefix, layout="go-zero") as job:
        starts: list[int] = []

        async def between_list_and_watch(revision: int) -> None:
            # While the discoverer is between its list and its watch, the registry changes
            # and the history is compacted past the revision the watch will start from.
            starts.append(revision)
            if len(starts) == 1:
                etcd.delete(gone[0])
                etcd.put(*go_zero_instance(prefix + "svc", 3, "127.0.0.1:8003"))
                etcd.compact()

        job.discoverer._watch_starting = between_list_and_watch  # type: ignore[method-assign]
        start(job)
        await job.wait_addresses("127.0.0.1:8001", "127.0.0.1:8003")
        assert len(starts) >= 2  # the compacted watch was given up and a new one opened
        assert job.discoverer.context.status.failures == 0  # a compaction is no failure
        # No target loss: the instance that never left was in every publish.
        assert all("127.0.0.1:8001" in addresses for addresses in job.published())
        # A later change still arrives through the new watch.
        etcd.put(*go_zero_instance(prefix + "svc", 4, "127.0.0.1:8004"))
        await job.wait_addresses("127.0.0.1:8001", "127.0.0.1:8003", "127.0.0.1:8004")


async def test_etcd_restart_loses_no_target(
    tmp_path: Path,
    etcd_private: EtcdServer,  # noqa: F811
) -> None:
    server = etcd_private
    prefix = "/microservices/api/"
    instances = [kratos_instance("api", f"i{n}", [f"http://127.0.0.{n}:8000"]) for n in range(1, 4)]
    for key, value in instances:
        server.put(key, value)
    async with running_job(tmp_path, server, prefix=prefix, layout="kratos") as job:
        await job.wait_addresses("127.0.0.1:8000", "127.0.0.2:8000", "127.0.0.3:8000")
        server.stop()
        await until(
            lambda: job.discoverer.context.status.failures > 0, within=30, what="stream broken"
        )
        server.start()
        server.put(*kratos_instance("api", "i4", ["http://127.0.0.4:8000"]))
        await job.wait_addresses(
            "127.0.0.1:8000", "127.0.0.2:8000", "127.0.0.3:8000", "127.0.0.4:8000"
        )
        await until(
            lambda: job.discoverer.context.status.failing_since is None, within=30, what="recovered"
        )
        published = job.published()
        assert all(len(addresses) >= 3 for addresses in published), published
        # The resync after the restart sent only the change: one publish per state.
        assert len(published) == 2, published


async def test_fails_over_to_the_next_endpoint(tmp_path: Path, etcd: EtcdServer) -> None:  # noqa: F811
    prefix = f"/{unique()}/"
    etcd.put(*go_zero_instance(prefix + "svc", 1, "127.0.0.1:8001"))
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with running_job(
        tmp_path, etcd, prefix=prefix, layout="go-zero", endpoints=[dead, etcd.url]
    ) as job:
        await job.wait_addresses("127.0.0.1:8001")
        etcd.put(*go_zero_instance(prefix + "svc", 2, "127.0.0.1:8002"))
        await job.wait_addresses("127.0.0.1:8001", "127.0.0.1:8002")


async def test_progress_notifications_move_the_revision(
    tmp_path: Path,
    etcd: EtcdServer,  # noqa: F811
) -> None:
    prefix = f"/{unique()}/"
    etcd.put(*go_zero_instance(prefix + "svc", 1, "127.0.0.1:8001"))
    async with running_job(tmp_path, etcd, prefix=prefix, layout="go-zero") as job:
        await job.wait_addresses("127.0.0.1:8001")
        # Writes elsewhere move etcd's revision; no event reaches this watch, but the
        # server's progress notifications (every second in tests) carry the new revision.
        revision = etcd.put(f"/{unique()}/elsewhere", "x")
        await until(
            lambda: job.discoverer.revision >= revision, within=30, what="revision progress"
        )


async def test_authentication(tmp_path: Path, etcd_private: EtcdServer) -> None:  # noqa: F811
    server = etcd_private
    server.enable_auth("s3cret")
    server.put(*go_zero_instance("api.rpc", 1, "127.0.0.1:8001"))
    async with running_job(
        tmp_path, server, prefix="api.rpc/", layout="go-zero", username="root", password="s3cret"
    ) as job:
        await job.wait_addresses("127.0.0.1:8001")
        server.put(*go_zero_instance("api.rpc", 2, "127.0.0.1:8002"))
        await job.wait_addresses("127.0.0.1:8001", "127.0.0.1:8002")
    async with running_job(
        tmp_path / "wrong",
        server,
        prefix="api.rpc/",
        layout="go-zero",
        username="root",
        password="wrong",
    ) as job:
        status = job.discoverer.context.status
        await until(lambda: status.failures > 0, within=30, what="authentication failure")
        assert "authentication failed" in (status.last_error or "")
        assert not job.recording.snapshots


async def test_tls(tmp_path: Path, etcd_tls: EtcdServer) -> None:  # noqa: F811
    server = etcd_tls
    assert server.url.startswith("https://")
    server.put(*go_zero_instance("api.rpc", 1, "127.0.0.1:8001"))
    ca = server.workdir / "etcd.crt"
    async with running_job(
        tmp_path, server, prefix="api.rpc/", layout="go-zero", tls_config={"ca_file": str(ca)}
    ) as job:
        await job.wait_addresses("127.0.0.1:8001")
        server.put(*go_zero_instance("api.rpc", 2, "127.0.0.1:8002"))
        await job.wait_addresses("127.0.0.1:8001", "127.0.0.1:8002")
    # server_name: the certificate is checked against another name than the URL's host.
    tls = {"ca_file": str(ca), "server_name": "localhost"}
    async with running_job(
        tmp_path / "named", server, prefix="api.rpc/", layout="go-zero", tls_config=tls
    ) as job:
        await job.wait_addresses("127.0.0.1:8001", "127.0.0.1:8002")
    tls = {"ca_file": str(ca), "server_name": "etcd.example"}
    async with running_job(
        tmp_path / "misnamed", server, prefix="api.rpc/", layout="go-zero", tls_config=tls
    ) as job:
        status = job.discoverer.context.status
        await until(lambda: status.failures > 0, within=30, what="TLS name mismatch")
        assert "etcd.example" in (status.last_error or "")
    async with running_job(
        tmp_path / "untrusted", server, prefix="api.rpc/", layout="go-zero"
    ) as job:
        status = job.discoverer.context.status
        await until(lambda: status.failures > 0, within=30, what="TLS verification failure")
        assert "CERTIFICATE_VERIFY_FAILED" in (status.last_error or "")


# --- bad input ------------------------------------------------------------------------


async def test_bad_values_are_skipped_and_counted(
    tmp_path: Path,
    etcd: EtcdServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    target = f"/{unique()}/greeter"
    good = naming_endpoint(target, "ok", "127.0.0.1:9001")
    etcd.put(*good)
    etcd.put(f"{target}/binary", b"\xff\xfe\x00garbage")
    etcd.put(f"{target}/no-addr", '{"Op":0,"Metadata":null}')
    etcd.put(f"{target}/bad-addr", '{"Op":0,"Addr":"not an address"}')
    etcd.put(f"{target}/".encode() + b"\xc3\x28", '{"Op":0,"Addr":"127.0.0.1:9"}')
    before = invalid_count()
    caplog.set_level(logging.WARNING, logger="sdbridge.discovery.etcd")
    async with running_job(tmp_path, etcd, prefix=target + "/", layout="endpoints") as job:
        await job.wait_addresses("127.0.0.1:9001")
        assert invalid_count() - before == 4
        text = caplog.text
        for key in ("binary", "no-addr", "bad-addr"):
            assert f"{target}/{key}" in text
        assert "key is not UTF-8" in text
        # Fixed through the watch: it appears; broken again: it goes, and is counted.
        etcd.put(*naming_endpoint(target, "bad-addr", "127.0.0.1:9002"))
        await job.wait_addresses("127.0.0.1:9001", "127.0.0.1:9002")
        etcd.put(f"{target}/bad-addr", "{")
        await job.wait_addresses("127.0.0.1:9001")
        assert invalid_count() - before == 5
        assert job.discoverer.context.status.failures == 0
        no_empty_publish(job)


async def test_wrong_field_paths_are_skipped_and_counted(
    tmp_path: Path,
    etcd: EtcdServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    prefix = f"/{unique()}/"
    etcd.put(prefix + "a", '{"addr": "127.0.0.1:7001"}')
    etcd.put(prefix + "b", '{"address": "127.0.0.1:7002"}')
    etcd.put(prefix + "c", '["127.0.0.1:7003"]')
    before = invalid_count()
    caplog.set_level(logging.WARNING, logger="sdbridge.discovery.etcd")
    async with running_job(
        tmp_path, etcd, prefix=prefix, layout="json", fields={"address": "addr"}
    ) as job:
        await job.wait_addresses("127.0.0.1:7001")
        assert invalid_count() - before == 2
        assert f"{prefix}b" in caplog.text
        assert "no field 'addr'" in caplog.text


async def test_a_bad_write_is_reported_once_not_on_every_poll(
    tmp_path: Path,
    etcd: EtcdServer,  # noqa: F811
) -> None:
    prefix = f"/{unique()}/"
    etcd.put(*go_zero_instance(prefix + "svc", 1, "127.0.0.1:8001"))
    etcd.put(prefix + "svc/2", "not-an-address")
    before = invalid_count()
    async with running_job(
        tmp_path, etcd, prefix=prefix, layout="go-zero", watch=False, refresh_interval="1s"
    ) as job:
        await job.wait_addresses("127.0.0.1:8001")
        status = job.discoverer.context.status
        await until(lambda: status.refreshes >= 3, within=30, what="three polls")
        assert invalid_count() - before == 1
        etcd.put(prefix + "svc/2", "still-not-an-address")  # a new bad write: reported
        await until(
            lambda: invalid_count() - before == 2, within=30, what="the new bad write counted"
        )
