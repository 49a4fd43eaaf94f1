"""The three-member etcd cluster fixture: a member killed with -9 leaves a quorum, two lose it."""

from __future__ import annotations

import base64

import pytest

from tests.servers.etcd import EtcdCluster, etcd_cluster3  # noqa: F401 - fixture

pytestmark = pytest.mark.etcd


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_cluster_survives_one_member_and_recovers(etcd_cluster3: EtcdCluster) -> None:  # noqa: F811
    cluster = etcd_cluster3
    assert len(cluster.up()) == 3
    first = cluster.members[0]
    first.put("/fixture/a", "1")
    first.kill()
    assert first.process is None
    assert len(cluster.up()) == 2
    cluster.members[1].put("/fixture/b", "2")  # two of three: still a quorum
    first.start()  # same ports and data: it catches up from its peers
    answer = first.call("/v3/kv/range", {"key": _b64("/fixture/b")})
    assert [base64.b64decode(kv["value"]) for kv in answer["kvs"]] == [b"2"]
