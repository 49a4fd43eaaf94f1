"""Several ``sdbridge run`` replicas sharing the built-in registry through etcd.

A write through any replica reaches every replica's ``/sd/registry``; heartbeats through
one keep alive an instance registered through another; an expiry happens once, in etcd,
and everywhere. Replicas serve byte-identical bodies with the same ETag, for the registry
and for an ``etcd_sd_configs`` job. Faults: under a steady load of acknowledged writes,
``kill -9`` a replica and an etcd member, restart both, and check every acknowledged write.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.servers.common import wait_until
from tests.servers.etcd import (
    EtcdCluster,
    EtcdServer,
    etcd,  # noqa: F401 - fixture
    etcd_cluster3,  # noqa: F401 - fixture
)
from tests.servers.sdbridge import Sdbridge

pytestmark = pytest.mark.etcd

JOB = "registry"
ETCD_JOB = "from-etcd"


def replica_config(workdir: Path, endpoints: list[str], prefix: str) -> dict[str, Any]:
    backend = {"endpoints": endpoints, "prefix": prefix, "request_timeout": "3s"}
    return {
        "global": {
            "data_dir": str(workdir / "data"),
            "publish_delay": {"min": "10ms", "max": "50ms"},
        },
        "registry": {"backend": "etcd", "etcd": backend},
        "jobs": [
            {
                "name": JOB,
                "registry_sd_configs": [{}],
                "guard": {"enabled": False},
                "output": {"file": str(workdir / "out" / f"{JOB}.json")},
            },
            {
                # The same keys read as a plain etcd_sd_configs job: identical output too.
                "name": ETCD_JOB,
                "etcd_sd_configs": [
                    {
                        "endpoints": endpoints,
                        "prefix": prefix,
                        "layout": "json",
                        "fields": {"address": "address"},
                    }
                ],
                "guard": {"enabled": False},
                "output": {"file": str(workdir / "out" / f"{ETCD_JOB}.json")},
            },
        ],
    }


def call(
    base: str, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    """One registry API request; (status, decoded JSON body)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        base + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw or b"{}")
        except ValueError:
            return exc.code, {"raw": raw.decode(errors="replace")}


def sd(replica: Sdbridge, job: str = JOB) -> tuple[int, bytes, str]:
    """Status, body and ETag of ``/sd/<job>``."""
    try:
        with urllib.request.urlopen(f"{replica.url}/sd/{job}", timeout=10) as response:
            return int(response.status), response.read(), response.headers.get("ETag", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("ETag", "")


def addresses(replica: Sdbridge, job: str = JOB) -> list[str]:
    status, body, _ = sd(replica, job)
    if status != 200:
        return []
    return sorted(t for group in json.loads(body) for t in group["targets"])


def agree(replicas: list[Sdbridge], job: str = JOB) -> bool:
    answers = {sd(r, job) for r in replicas}
    return len(answers) == 1 and next(iter(answers))[0] == 200


@pytest.fixture
def replicas(tmp_path: Path, etcd: EtcdServer) -> Iterator[list[Sdbridge]]:  # noqa: F811
    prefix = f"/sdbridge-replicas/{uuid.uuid4().hex}/"
    started: list[Sdbridge] = []
    try:
        for name in "abc":
            workdir = tmp_path / name
            workdir.mkdir()
            config = replica_config(workdir, [etcd.url], prefix)
            started.append(Sdbridge(workdir, config, wait_ready=False))
        for replica in started:  # started together: the imports overlap
            wait_until(replica.is_ready, timeout=60, what="replica ready")
        yield started
    finally:
        for replica in started:
            replica.stop()


def test_replicas_share_writes_heartbeats_expiry_and_bytes(replicas: list[Sdbridge]) -> None:
    a, b, c = replicas
    status, answer = call(
        a.url, "PUT", "/api/v1/registry/api/one", {"address": "127.0.0.2:9100", "ttl": "2s"}
    )
    assert status == 201, answer
    for replica in (b, c):
        wait_until(lambda r=replica: addresses(r) == ["127.0.0.2:9100"], what="seen by b and c")
    # Heartbeats through b (every 0.5 s, for twice the ttl) keep it alive everywhere.
    for _ in range(8):
        status, answer = call(b.url, "POST", "/api/v1/registry/api/one/heartbeat")
        assert status == 200, answer
        time.sleep(0.5)
    assert all(addresses(r) == ["127.0.0.2:9100"] for r in replicas)
    # Heartbeats stop: it expires in etcd, so once, and everywhere.
    for replica in replicas:
        wait_until(lambda r=replica: addresses(r) == [], what="expired everywhere")
    status, _ = call(c.url, "POST", "/api/v1/registry/api/one/heartbeat")
    assert status == 404

    for index, replica in enumerate(replicas * 2):
        body = {"address": f"127.0.0.{3 + index}:9100", "labels": {"n": str(index)}, "ttl": "1m"}
        assert call(replica.url, "PUT", f"/api/v1/registry/web/w{index}", body)[0] == 201
    for job in (JOB, ETCD_JOB):
        wait_until(
            lambda j=job: agree(replicas, j) and len(json.loads(sd(a, j)[1])) == 6,
            what=f"/sd/{job} identical on all replicas",
        )
    health = [call(r.url, "GET", "/api/v1/registry/health") for r in replicas]
    assert [h[0] for h in health] == [200, 200, 200]
    assert health[0][1]["data"]["backend"] == "etcd", health
    assert health[0][1]["data"]["writable"] is True


def test_bad_writes_are_refused_by_any_replica_and_reach_no_etcd(
    replicas: list[Sdbridge],
    etcd: EtcdServer,  # noqa: F811
) -> None:
    a, b, _ = replicas
    status, answer = call(b.url, "PUT", "/api/v1/registry/web/x", {"address": "nope"})
    assert status == 400, answer
    status, answer = call(
        a.url, "PUT", "/api/v1/registry/web/x", {"address": "127.0.0.1:1", "ttl": "1s"}
    )
    assert status == 400, answer  # below etcd's minimum lease ttl (min_ttl 2s)
    assert "ttl" in answer.get("error", "") + json.dumps(answer)


@dataclass
class Ledger:
    """The last acknowledged operation on each key, and keys whose state is unknown."""

    acked: dict[str, str] = field(default_factory=dict)  # key -> "put" or "delete"
    unknown: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=lambda: {"put": 0, "delete": 0, "heartbeat": 0})
    lost: list[str] = field(default_factory=list)  # acknowledged PUTs found missing
    lock: threading.Lock = field(default_factory=threading.Lock)


def load(urls: list[list[str]], worker: int, ledger: Ledger, stop: threading.Event) -> None:
    """PUT, DELETE and heartbeat keys of this worker's own, over the replicas' URLs.

    ``urls`` is shared and updated when a replica restarts on a new port. Each key is
    written by one worker in sequence, so its last acknowledged operation is its state.
    """
    rng = random.Random(worker)
    keys = [f"w{worker}k{i}" for i in range(12)]
    while not stop.is_set():
        key = rng.choice(keys)
        base = rng.choice(urls[0])
        state = ledger.acked.get(key)
        op = rng.choice(["put", "put", "delete", "heartbeat"] if state == "put" else ["put"])
        path = f"/api/v1/registry/load/{key}"
        try:
            if op == "put":
                status, _ = call(base, "PUT", path, {"address": "127.0.0.9:9100", "ttl": "1m"})
                ok = status in (200, 201)
            elif op == "delete":
                status, _ = call(base, "DELETE", path)
                ok = status in (200, 404)  # either way it is gone now
                if status == 404 and key not in ledger.unknown:
                    ledger.lost.append(key)  # an acknowledged PUT was not there
            else:
                status, _ = call(base, "POST", path + "/heartbeat")
                ok = status == 200
                if status == 404 and key not in ledger.unknown:
                    ledger.lost.append(key)
        except OSError:
            ok = False  # no answer (a replica killed): the write is not acknowledged
        with ledger.lock:
            if op == "heartbeat":
                if ok:
                    ledger.counts[op] += 1
                continue
            if ok:
                ledger.acked[key] = op
                ledger.unknown.discard(key)
                ledger.counts[op] += 1
            else:
                ledger.unknown.add(key)


@pytest.mark.parametrize("repetition", range(3))
def test_acknowledged_writes_survive_a_killed_replica_and_etcd_member(
    tmp_path: Path,
    etcd_cluster3: EtcdCluster,  # noqa: F811
    repetition: int,
) -> None:
    cluster = etcd_cluster3
    prefix = f"/sdbridge-faults/{repetition}/"
    replicas: list[Sdbridge] = []
    workdirs = []
    for name in "abc":
        workdir = tmp_path / name
        workdir.mkdir()
        workdirs.append(workdir)
    stop = threading.Event()
    ledger = Ledger()
    workers: list[threading.Thread] = []
    try:
        for workdir in workdirs:
            config = replica_config(workdir, cluster.endpoints, prefix)
            replicas.append(Sdbridge(workdir, config, wait_ready=False))
        for replica in replicas:
            wait_until(replica.is_ready, timeout=60, what="replica ready")
        urls = [[r.url for r in replicas]]
        workers = [
            threading.Thread(target=load, args=(urls, w, ledger, stop), daemon=True)
            for w in range(3)
        ]
        for worker in workers:
            worker.start()

        def acked_more(n: int) -> bool:
            with ledger.lock:
                return sum(ledger.counts.values()) >= n

        wait_until(lambda: acked_more(20), what="load running")
        victim = replicas[repetition % 3]
        victim.process.signal(9)  # kill -9 one replica
        urls[0] = [r.url for r in replicas if r is not victim]
        wait_until(lambda: acked_more(40), what="load goes on without the replica")
        member = cluster.members[repetition % 3]
        member.kill()  # kill -9 one etcd member: two of three keep the quorum
        wait_until(lambda: acked_more(60), what="load goes on without the member")
        member.start()
        index = replicas.index(victim)
        victim.process.stop()
        replicas[index] = Sdbridge(
            workdirs[index], replica_config(workdirs[index], cluster.endpoints, prefix)
        )
        urls[0] = [r.url for r in replicas]
        wait_until(lambda: acked_more(80), what="load goes on with everything back")
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
        try:
            if len(replicas) == 3:
                check_ledger(replicas, ledger)
        finally:
            for replica in replicas:
                replica.stop()


def check_ledger(replicas: list[Sdbridge], ledger: Ledger) -> None:
    assert ledger.lost == []
    assert ledger.counts["put"] > 0
    assert ledger.counts["delete"] > 0
    wait_until(lambda: agree(replicas), what="every replica converges to one body and ETag")
    status, body, _ = sd(replicas[0])
    assert status == 200
    present = {
        group["labels"]["__meta_registry_instance"]
        for group in json.loads(body)
        if group["labels"]["__meta_registry_service"] == "load"
    }
    sure = {k: op for k, op in ledger.acked.items() if k not in ledger.unknown}
    assert sure, ledger
    missing = sorted(k for k, op in sure.items() if op == "put" and k not in present)
    back = sorted(k for k, op in sure.items() if op == "delete" and k in present)
    assert missing == []  # every acknowledged PUT is there
    assert back == []  # no acknowledged DELETE came back


def test_quorum_loss_refuses_writes_keeps_sd_and_recovers(
    tmp_path: Path,
    etcd_cluster3: EtcdCluster,  # noqa: F811
) -> None:
    cluster = etcd_cluster3
    replicas = []
    try:
        for name in "ab":
            workdir = tmp_path / name
            workdir.mkdir()
            config = replica_config(workdir, cluster.endpoints, "/sdbridge/registry/")
            replicas.append(Sdbridge(workdir, config))
        a, b = replicas
        body = {"address": "127.0.0.2:9100", "ttl": "1m"}
        assert call(a.url, "PUT", "/api/v1/registry/web/one", body)[0] == 201
        wait_until(lambda: agree(replicas) and addresses(b) == ["127.0.0.2:9100"], what="synced")
        before = sd(a)
        cluster.members[0].kill()
        cluster.members[1].kill()
        status, answer = call(b.url, "PUT", "/api/v1/registry/web/two", body)
        assert status == 503, answer
        assert "etcd" in answer["error"]
        status, health = call(a.url, "GET", "/api/v1/registry/health")
        assert status == 503, health
        assert health["data"]["writable"] is False
        assert "etcd" in health["error"]
        # Reads go on from last-known-good, and the replicas stay ready.
        assert sd(a) == before
        assert sd(b)[1:] == before[1:]
        assert all(r.request("/-/ready")[0] == 200 for r in replicas)
        cluster.members[0].start(wait=False)
        cluster.members[1].start()
        wait_until(
            lambda: call(a.url, "GET", "/api/v1/registry/health")[0] == 200, what="health back"
        )
        wait_until(
            lambda: call(b.url, "PUT", "/api/v1/registry/web/two", body)[0] in (200, 201),
            what="writes back",
        )
        wait_until(lambda: agree(replicas) and len(addresses(a)) == 2, what="converged")
    finally:
        for replica in replicas:
            replica.stop()
