"""dockerswarm_sd and docker_sd through a Job with a file output, on a real engine.

The refresh interval is set to 10 minutes throughout, so every change seen here reached
the file through the engine's /events stream, not through polling. Faults are real too:
a socket path that disappears, a dockerd that is stopped and started again, an engine
not in swarm mode, a filter the engine rejects, a user without access to the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from sdbridge.config import parse_config
from sdbridge.discovery import mechanisms
from sdbridge.discovery._dockerapi import negotiate_api_version
from sdbridge.discovery._dockerbase import EngineWatcher
from sdbridge.discovery.base import DiscoveryContext
from sdbridge.errors import BackendError
from sdbridge.job import Job
from sdbridge.model import TargetGroup
from tests.integration.test_docker_parity import as_prometheus_242, assert_parity
from tests.servers.dockerd import (
    Dockerd,
    DockerEngine,
    TLSEngine,
    docker_engine,  # noqa: F401 - fixture
    private_dockerd,  # noqa: F401 - fixture
    private_dockerd_tls,  # noqa: F401 - fixture
)

pytestmark = pytest.mark.docker

Targets = dict[str, dict[str, str]]  # address -> labels
KEEP_RUNNING = [
    {
        "source_labels": [
            "__meta_dockerswarm_task_desired_state",
            "__meta_dockerswarm_task_state",
        ],
        "regex": "running;running",
        "action": "keep",
    }
]


async def until(condition: Callable[[], bool], what: str, limit: float = 60) -> None:
    """Wait for ``condition`` without blocking the loop; fail after ``limit`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {limit}s waiting for {what}")
        await asyncio.sleep(0.05)


class RunningJob:
    """A Job running one mechanism config with a file output."""

    def __init__(self, job: Job, path: Path) -> None:
        self.job = job
        self.path = path

    @property
    def status(self) -> Any:
        return self.job.runners[0].context.status

    def targets(self) -> Targets:
        """The output file as address -> labels (one group per target)."""
        if not self.path.exists():
            return {}
        return {g["targets"][0]: g["labels"] for g in json.loads(self.path.read_bytes())}

    async def wait(self, condition: Callable[[Targets], bool], what: str) -> Targets:
        await until(lambda: condition(self.targets()), what)
        return self.targets()


@contextlib.asynccontextmanager
async def running_job(
    tmp_path: Path, mechanism: str, config: dict[str, Any], **job: Any
) -> AsyncIterator[RunningJob]:
    """Run a job with ``config`` as its only mechanism until the block ends."""
    path = tmp_path / "targets.json"
    parsed = parse_config(
        {
            "global": {
                "data_dir": str(tmp_path / "data"),
                "publish_delay": {"min": "10ms", "max": "100ms"},
            },
            "jobs": [
                {
                    "name": "docker",
                    f"{mechanism}_sd_configs": [{"refresh_interval": "10m", **config}],
                    "output": {"file": str(path)},
                    **job,
                }
            ],
        }
    )
    job_obj = Job(parsed.jobs[0], parsed.global_)
    task = asyncio.create_task(job_obj.run())
    try:
        yield RunningJob(job_obj, path)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def discoverer(mechanism: str, config: dict[str, Any]) -> EngineWatcher[Any]:
    """A discoverer built from a config as the config file would give it."""
    parsed = parse_config({"jobs": [{"name": "j", f"{mechanism}_sd_configs": [config]}]})
    entry = getattr(parsed.jobs[0], f"{mechanism}_sd_configs")[0]
    found = mechanisms()[mechanism].factory(entry, DiscoveryContext(job="j", mechanism=mechanism))
    assert isinstance(found, EngineWatcher)
    return found


async def sends_nothing(found: EngineWatcher[Any], seconds: float = 1.5) -> list[list[TargetGroup]]:
    """Run a discoverer for a while; return what it sent."""
    sent: list[list[TargetGroup]] = []

    async def send(groups: list[TargetGroup]) -> None:
        sent.append(groups)

    task = asyncio.create_task(found.run(send))
    await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return sent


# --- scaling and events -----------------------------------------------------------------


async def test_service_scale_reaches_the_file(
    docker_engine: DockerEngine,  # noqa: F811
    tmp_path: Path,
) -> None:
    engine = docker_engine
    with engine.network() as net, engine.service("--replicas=1", "--network", net) as service:
        config = {
            "host": engine.host,
            "role": "tasks",
            "port": 8080,
            "filters": [{"name": "service", "values": [service]}],
        }
        async with running_job(
            tmp_path, "dockerswarm", config, relabel_configs=KEEP_RUNNING
        ) as job:
            await job.wait(lambda t: len(t) == 1, "one running task")
            await asyncio.to_thread(engine.cli, "service", "scale", "-d", f"{service}=3")
            targets = await job.wait(lambda t: len(t) == 3, "three running tasks")
            assert {labels["__meta_dockerswarm_service_name"] for labels in targets.values()} == {
                service
            }
            assert all(address.endswith(":8080") for address in targets)
            await asyncio.to_thread(engine.cli, "service", "scale", "-d", f"{service}=1")
            await job.wait(lambda t: len(t) == 1, "one running task again")
            # With a 10-minute interval, only events can have driven these refreshes.
            assert job.status.refreshes > 2
            assert job.status.failures == 0


async def test_container_start_and_removal_reach_the_file(
    docker_engine: DockerEngine,  # noqa: F811
    tmp_path: Path,
) -> None:
    engine = docker_engine
    label = f"sdbridge.run={engine.run_id}-events"
    config = {"host": engine.host, "filters": [{"name": "label", "values": [label]}]}
    with engine.network(driver="bridge") as net:
        # Removing the only container drops 100% of the targets, which the job's guard
        # would hold until 3 further refreshes confirm it: not what this test is about.
        async with running_job(tmp_path, "docker", config, guard={"enabled": False}) as job:
            await until(job.path.exists, "the first publish")
            assert job.path.read_bytes() == b"[]"
            with engine.container("--label", label, "--network", net, "--expose", "9000") as cid:
                targets = await job.wait(lambda t: len(t) == 1, "the new container")
                (labels,) = targets.values()
                assert labels["__meta_docker_container_id"] == cid
                assert labels["__meta_docker_port_private"] == "9000"
            await job.wait(lambda t: t == {}, "the container to be gone")


async def test_vanishing_socket_keeps_the_last_good_targets(
    docker_engine: DockerEngine,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The socket path disappears mid-run: errors, but the file keeps its targets."""
    engine = docker_engine
    link = tmp_path / "docker.sock"
    link.symlink_to(engine.sock)
    label = f"sdbridge.run={engine.run_id}-vanish"
    config = {"host": f"unix://{link}", "filters": [{"name": "label", "values": [label]}]}
    with (
        engine.network(driver="bridge") as net,
        engine.container("--label", label, "--network", net) as first,
    ):
        async with running_job(tmp_path, "docker", config) as job:
            await job.wait(lambda t: len(t) == 1, "the first container")
            before = job.path.read_bytes()
            link.unlink()
            # A change on the engine: its event (on the still open stream) triggers
            # a refresh, which cannot connect any more.
            with engine.container("--label", label, "--network", net) as second:
                await until(lambda: job.status.failures > 0, "a failed refresh")
                assert "the socket does not exist" in (job.status.last_error or "")
                assert job.path.read_bytes() == before
                link.symlink_to(engine.sock)
                targets = await job.wait(lambda t: len(t) == 2, "recovery")
                ids = {labels["__meta_docker_container_id"] for labels in targets.values()}
                assert ids == {first, second}
                assert job.status.last_error is None


async def test_stopped_dockerd_keeps_the_last_good_targets(
    private_dockerd: tuple[Dockerd, DockerEngine],  # noqa: F811
    tmp_path: Path,
) -> None:
    """dockerd stops mid-run: the file keeps its targets; a restart brings recovery."""
    daemon, engine = private_dockerd
    engine.cli("network", "create", "--driver", "bridge", "sdbt-private")
    engine.cli(
        "run", "-d", "--name", "sdbt-keep", "--restart=always", "--network", "sdbt-private",
        "--stop-signal=SIGKILL", engine.image, "/bin/busybox", "httpd", "-f", "-p", "8080",
    )  # fmt: skip
    async with running_job(tmp_path, "docker", {"host": engine.host}) as job:
        targets = await job.wait(lambda t: len(t) == 1, "the container")
        before = job.path.read_bytes()
        await asyncio.to_thread(daemon.stop)
        await until(lambda: job.status.failures > 0, "a failed refresh", limit=90)
        assert job.path.read_bytes() == before
        await asyncio.to_thread(daemon.start)
        # The restarted engine starts its container again; a new one proves fresh data.
        await asyncio.to_thread(
            engine.cli, "run", "-d", "--name", "sdbt-new", "--network", "sdbt-private",
            "--stop-signal=SIGKILL", engine.image, "/bin/busybox", "sleep", "600",
        )  # fmt: skip
        targets = await job.wait(lambda t: len(t) == 2, "recovery after the restart")
        names = {labels["__meta_docker_container_name"] for labels in targets.values()}
        assert names == {"/sdbt-keep", "/sdbt-new"}
        assert job.status.last_error is None


# --- bad input: a clear error, nothing sent ---------------------------------------------


async def test_missing_socket_is_a_clear_error(tmp_path: Path) -> None:
    found = discoverer("docker", {"host": f"unix://{tmp_path}/nope.sock"})
    with pytest.raises(BackendError, match=r"nope\.sock: the socket does not exist"):
        await found.refresh()
    await found.client.close()
    assert await sends_nothing(found) == []
    assert "does not exist" in (found.context.status.last_error or "")


async def test_unknown_filter_is_a_clear_error(docker_engine: DockerEngine) -> None:  # noqa: F811
    for mechanism, extra in (("docker", {}), ("dockerswarm", {"role": "tasks"})):
        config = {"host": docker_engine.host, "filters": [{"name": "colour", "values": ["red"]}]}
        found = discoverer(mechanism, {**config, **extra})
        with pytest.raises(BackendError, match=r"HTTP 400: Invalid filter 'colour'.*filters"):
            await found.refresh()
        await found.client.close()
        assert await sends_nothing(found) == []


async def test_swarm_mode_inactive_is_a_clear_error(
    private_dockerd: tuple[Dockerd, DockerEngine],  # noqa: F811
) -> None:
    _, engine = private_dockerd
    for role in ("services", "tasks", "nodes"):
        found = discoverer("dockerswarm", {"host": engine.host, "role": role})
        with pytest.raises(
            BackendError, match=r"HTTP 503: This node is not a swarm manager.*manager"
        ):
            await found.refresh()
        await found.client.close()
    assert await sends_nothing(found) == []
    # The same engine serves docker_sd fine.
    plain = discoverer("docker", {"host": engine.host})
    try:
        assert await plain.refresh() == []
    finally:
        await plain.client.close()


def test_permission_denied_is_a_clear_error() -> None:
    """As an unprivileged user, the root-only socket gives a clear error (sdbridge once)."""
    workdir = Path(tempfile.mkdtemp(prefix="sdbridge-docker-perm-"))
    try:
        os.chmod(workdir, 0o777)
        config = workdir / "sdbridge.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {"data_dir": str(workdir / "data")},
                    "jobs": [
                        {
                            "name": "d",
                            "docker_sd_configs": [{"host": "unix:///var/run/docker.sock"}],
                        }
                    ],
                }
            )
        )
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             str(Path(sys.executable).parent / "sdbridge"), "once", "--config", str(config)],
            capture_output=True, text=True, timeout=60, check=False, cwd=workdir,
        )  # fmt: skip
    finally:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    assert result.returncode == 1, result
    assert "permission denied on the socket" in result.stderr, result.stderr


def test_engine_too_old_is_a_clear_error() -> None:
    with pytest.raises(BackendError, match=r"speaks API 1\.23, older than 1\.24.*upgrade"):
        negotiate_api_version("unix:///x.sock", {"ApiVersion": "1.23", "Version": "1.11.0"})
    with pytest.raises(BackendError, match=r"no longer accepts API 1\.47.*upgrade sdbridge"):
        negotiate_api_version("unix:///x.sock", {"ApiVersion": "1.60", "MinAPIVersion": "1.50"})
    assert negotiate_api_version("h", {"ApiVersion": "1.41", "MinAPIVersion": "1.12"}) == "1.41"
    assert negotiate_api_version("h", {"ApiVersion": "1.52", "MinAPIVersion": "1.44"}) == "1.47"


async def test_real_engine_negotiates_its_own_version(docker_engine: DockerEngine) -> None:  # noqa: F811
    found = discoverer("docker", {"host": docker_engine.host})
    try:
        version = await found.client.negotiate()
    finally:
        await found.client.close()
    assert version == docker_engine.api("GET", "/version")["ApiVersion"]


# --- TCP with TLS -----------------------------------------------------------------------


@pytest.mark.prometheus
async def test_tcp_tls_engine_matches_prometheus(
    private_dockerd_tls: TLSEngine,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A dockerd with --tlsverify on 127.0.0.1: client certificates, parity with promtool."""
    tls = private_dockerd_tls
    tls.engine.cli("network", "create", "--driver", "bridge", "sdbt-tls")
    tls.engine.cli(
        "run", "-d", "--network", "sdbt-tls", "--label", "x.y=z", "--expose", "9000",
        "--stop-signal=SIGKILL", tls.engine.image, "/bin/busybox", "sleep", "600",
    )  # fmt: skip
    tls_config = {
        "ca_file": str(tls.server.cert),
        "cert_file": str(tls.client.cert),
        "key_file": str(tls.client.key),
    }
    # Prometheus applies tls_config to http(s):// hosts only; sdbridge also takes tcp://.
    config = {"host": f"https://{tls.address}", "tls_config": tls_config}
    targets = await assert_parity(
        "docker",
        config,
        tmp_path,
        adjust=as_prometheus_242(""),
        sdbridge_only={"host": f"tcp://{tls.address}"},
    )
    (target,) = map(dict, targets)
    assert target["__meta_docker_container_label_x_y"] == "z"
    assert target["__address__"].endswith(":9000")

    # Without a client certificate the engine refuses the handshake: a clear error.
    found = discoverer(
        "docker", {"host": f"tcp://{tls.address}", "tls_config": {"ca_file": str(tls.server.cert)}}
    )
    with pytest.raises(BackendError, match=rf"cannot reach Docker Engine at tcp://{tls.address}"):
        await found.refresh()
    await found.client.close()
    # Nor does sdbridge trust an engine whose certificate it cannot verify.
    found = discoverer(
        "docker",
        {
            "host": f"https://{tls.address}",
            "tls_config": {**tls_config, "ca_file": str(tls.client.cert)},
        },
    )
    with pytest.raises(BackendError, match="certificate verify failed"):
        await found.refresh()
    await found.client.close()
