"""A running daemon behind the web server: readiness, metrics, reload (good and broken).

Jobs are real exec jobs (``cat`` of a file), run in-process; the web server listens on
127.0.0.1 on a free port.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sdbridge import metrics
from sdbridge.config import load_config
from sdbridge.daemon import Daemon
from sdbridge.web.flags import WebFlags
from sdbridge.web.server import Server, start_server


def file_sd(addresses: list[str], **labels: str) -> str:
    return json.dumps([{"targets": [a], "labels": labels} for a in addresses])


class Setup:
    """A config directory with one targets file per job, a daemon and its web server."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.config_path = directory / "sdbridge.yml"
        self.daemon: Daemon | None = None
        self.server: Server | None = None

    def targets(self, job: str, addresses: list[str], **labels: str) -> None:
        (self.dir / f"{job}.json").write_text(file_sd(addresses, **labels))

    def job(self, name: str, **extra: Any) -> dict[str, Any]:
        mechanism = {"command": ["cat", f"{name}.json"], "refresh_interval": "1s"}
        return {"name": name, "exec_sd_configs": [{**mechanism, **extra}]}

    def write(self, jobs: list[dict[str, Any]]) -> None:
        config = {
            "global": {
                "data_dir": str(self.dir / "data"),
                "publish_delay": {"min": "10ms", "max": "50ms"},
            },
            "jobs": jobs,
        }
        self.config_path.write_text(yaml.safe_dump(config))

    async def start(self) -> None:
        self.daemon = Daemon(load_config(self.config_path), config_path=self.config_path)
        self.server = await start_server(
            self.daemon, "127.0.0.1:0", flags=WebFlags(enable_lifecycle=True)
        )
        self.daemon.start()

    async def stop(self) -> None:
        if self.daemon is not None:
            await self.daemon.stop()
        if self.server is not None:
            await self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    s = Setup(tmp_path)
    yield s
    await s.stop()


async def eventually(condition: Callable[[], Any], what: str, limit: float = 20.0) -> None:
    """Poll an async or sync condition until true; fail after ``limit`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def get(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.read()


async def post(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.post(url) as response:
        return response.status, await response.text()


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def ready(setup: Setup) -> bool:
    return (await get(f"{setup.url}/-/ready"))[0] == 200


async def test_metrics_readiness_and_error_state(setup: Setup) -> None:
    setup.targets("a", ["127.0.0.1:9100", "127.0.0.2:9100"], env="prod")
    setup.write([setup.job("a"), {"name": "broken", "exec_sd_configs": [{"command": ["false"]}]}])
    await setup.start()
    assert (await get(f"{setup.url}/-/healthy"))[0] == 200
    await eventually(lambda: get(f"{setup.url}/sd/a"), "job a")  # any answer
    await eventually(
        lambda: setup.daemon is not None and setup.daemon.jobs["a"].snapshot is not None, "a synced"
    )
    assert not await ready(setup)  # "broken" never synced
    status, _body = await get(f"{setup.url}/sd/broken")
    assert status == 503
    await eventually(
        lambda: (
            setup.daemon is not None
            and setup.daemon.jobs["broken"].runners[0].context.status.failures > 0
        ),
        "broken failed",
    )
    _, text = await get(f"{setup.url}/metrics")
    samples = scrape(text.decode())
    assert value(samples, "sdbridge_job_targets", job="a") == 2
    assert value(samples, "sdbridge_job_groups", job="a") == 2
    assert value(samples, "sdbridge_job_synced", job="a") == 1
    assert value(samples, "sdbridge_last_success_timestamp_seconds", job="a") > 1e9
    assert value(samples, "sdbridge_publish_total", job="a", output="http") >= 1
    assert value(samples, "sdbridge_publish_duration_seconds_count", job="a") >= 1
    assert value(samples, "sdbridge_refresh_total", job="a", mechanism="exec") >= 1
    assert value(samples, "sdbridge_refresh_duration_seconds_count", job="a", mechanism="exec") >= 1
    assert value(samples, "sdbridge_backend_requests_total", job="a", mechanism="exec") >= 1
    assert value(samples, "sdbridge_mechanism_up", job="a", mechanism="exec") == 1
    assert value(samples, "sdbridge_mechanism_up", job="broken", mechanism="exec") == 0
    assert value(samples, "sdbridge_refresh_failures_total", job="broken", mechanism="exec") >= 1
    assert value(samples, "sdbridge_config_last_reload_successful") == 1
    assert value(samples, "sdbridge_config_last_reload_success_timestamp_seconds") > 1e9
    assert any(name == "process_cpu_seconds_total" for name, _ in samples)
    assert any(name == "python_info" for name, _ in samples)

    _, index = await get(f"{setup.url}/")
    assert b"state-failing" in index
    _, page = await get(f"{setup.url}/jobs/broken")
    assert b"exited with status 1" in page or b"exit" in page

    # Removing the broken job by reload makes the daemon ready, and forgets its series.
    setup.write([setup.job("a")])
    status, _ = await post(f"{setup.url}/-/reload")
    assert status == 200
    assert await ready(setup)
    _, text = await get(f"{setup.url}/metrics")
    assert ("sdbridge_job_targets", (("job", "broken"),)) not in scrape(text.decode())


async def test_reload_keeps_unchanged_jobs_and_rejects_broken_configs(setup: Setup) -> None:
    setup.targets("a", ["127.0.0.1:9100"], env="a")
    setup.targets("b", ["127.0.0.1:9200"], env="b")
    setup.targets("c", ["127.0.0.1:9300"], env="c")
    setup.write([setup.job("a"), setup.job("b")])
    await setup.start()
    await eventually(lambda: ready(setup), "ready")
    daemon = setup.daemon
    assert daemon is not None
    job_a, task_a = daemon.jobs["a"], daemon._tasks["a"]
    job_b, task_b = daemon.jobs["b"], daemon._tasks["b"]
    snapshot_a = job_a.snapshot
    published_a = metrics.PUBLISH_TOTAL.labels(job="a", output="http")._value.get()
    refreshes_a = job_a.runners[0].context.status.refreshes
    _, body_a = await get(f"{setup.url}/sd/a")

    # b changes, c is new, a is untouched.
    setup.write([setup.job("a"), setup.job("b", timeout="10s"), setup.job("c")])
    status, text = await post(f"{setup.url}/-/reload")
    assert (status, text) == (200, "config reloaded\n")
    assert daemon.jobs["a"] is job_a
    assert daemon._tasks["a"] is task_a
    assert not task_a.done()
    assert daemon.jobs["b"] is not job_b
    assert task_b.done()
    await eventually(lambda: daemon.jobs["c"].snapshot is not None, "c published")
    # a kept refreshing through the reload, and published nothing new: same bytes, same object.
    await eventually(
        lambda: job_a.runners[0].context.status.refreshes > refreshes_a, "a refreshed again"
    )
    assert job_a.snapshot is snapshot_a
    assert metrics.PUBLISH_TOTAL.labels(job="a", output="http")._value.get() == published_a
    assert (await get(f"{setup.url}/sd/a"))[1] == body_a

    # A broken YAML is refused: error in the answer, the metrics, the API and the UI.
    setup.config_path.write_text("jobs:\n  - name: a\n    exec_sd_configs: [\n")
    status, text = await post(f"{setup.url}/-/reload")
    assert status == 500
    assert "invalid YAML" in text
    assert daemon.jobs["a"] is job_a
    assert daemon.jobs["c"].snapshot is not None
    assert (await get(f"{setup.url}/sd/a")) == (200, body_a)
    _, metrics_text = await get(f"{setup.url}/metrics")
    samples = scrape(metrics_text.decode())
    assert value(samples, "sdbridge_config_last_reload_successful") == 0
    assert value(samples, "sdbridge_config_reloads_total", result="failure") >= 1
    _, api = await get(f"{setup.url}/api/v1/jobs")
    config_status = json.loads(api)["data"]["config"]
    assert config_status["last_reload_successful"] is False
    assert "invalid YAML" in config_status["last_reload_error"]
    _, index = await get(f"{setup.url}/")
    assert b'id="reload-error"' in index
    assert b"invalid YAML" in index

    # A config that parses but is invalid is refused the same way.
    setup.config_path.write_text(yaml.safe_dump({"jobs": [{"name": "a", "bogus_sd_configs": []}]}))
    status, text = await post(f"{setup.url}/-/reload")
    assert status == 500
    assert "jobs[0].bogus_sd_configs" in text
    assert set(daemon.jobs) == {"a", "b", "c"}

    # Fixing it recovers.
    setup.write([setup.job("a")])
    status, _ = await post(f"{setup.url}/-/reload")
    assert status == 200
    assert set(daemon.jobs) == {"a"}
    assert daemon.jobs["a"] is job_a
    _, metrics_text = await get(f"{setup.url}/metrics")
    assert value(scrape(metrics_text.decode()), "sdbridge_config_last_reload_successful") == 1
    assert (await get(f"{setup.url}/sd/c"))[0] == 404
    _, index = await get(f"{setup.url}/")
    assert b'id="reload-error"' not in index


async def test_a_target_change_reaches_http_sd(setup: Setup) -> None:
    setup.targets("a", ["127.0.0.1:9100"])
    output = setup.dir / "out" / "a.json"
    setup.write([{**setup.job("a"), "output": {"file": str(output)}}])
    await setup.start()
    await eventually(lambda: ready(setup), "ready")
    status, first = await get(f"{setup.url}/sd/a")
    etag_before = None
    async with aiohttp.ClientSession() as session, session.get(f"{setup.url}/sd/a") as response:
        etag_before = response.headers["ETag"]
    setup.targets("a", ["127.0.0.1:9100", "127.0.0.3:9100"])

    async def changed() -> bool:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{setup.url}/sd/a", headers={"If-None-Match": etag_before}) as response,
        ):
            return response.status == 200

    await eventually(changed, "the new target")
    _, body = await get(f"{setup.url}/sd/a")
    # http_sd serves the same bytes as the file output.
    await eventually(lambda: output.exists() and output.read_bytes() == body, "the file output")
    assert [g["targets"] for g in json.loads(body)] == [["127.0.0.1:9100"], ["127.0.0.3:9100"]]
    assert status == 200
    assert first != body


async def test_reload_with_huge_numbers_answers_500_and_is_counted(setup: Setup) -> None:
    """Issue 12 item 4: a 400-digit number answered 500 with the metric left at 1."""
    huge = "1" + "0" * 400
    setup.targets("a", ["127.0.0.1:9100"])
    setup.write([setup.job("a")])
    await setup.start()
    await eventually(lambda: ready(setup), "ready")
    for bad in (
        [setup.job("a", refresh_interval=f"{huge}s")],
        [{**setup.job("a"), "output": {"file": "a.json", "file_mode": int(huge)}}],
    ):
        setup.write(bad)
        status, text = await post(f"{setup.url}/-/reload")
        assert status == 500
        assert "out of range" in text
        assert len(text) < 1000
        _, metrics_text = await get(f"{setup.url}/metrics")
        assert value(scrape(metrics_text.decode()), "sdbridge_config_last_reload_successful") == 0
    setup.config_path.write_text(f"registry: {{default_ttl: {huge}s}}\n")
    status, text = await post(f"{setup.url}/-/reload")
    assert (status, "registry.default_ttl" in text) == (500, True)
    assert setup.daemon is not None
    assert set(setup.daemon.jobs) == {"a"}


async def test_reload_over_http_needs_enable_lifecycle(tmp_path: Path) -> None:
    # As Prometheus: without --web.enable-lifecycle, /-/reload is refused and changes nothing.
    setup = Setup(tmp_path)
    setup.targets("a", ["127.0.0.1:9100"])
    setup.write([setup.job("a")])
    setup.daemon = Daemon(load_config(setup.config_path), config_path=setup.config_path)
    setup.server = await start_server(setup.daemon, "127.0.0.1:0")
    setup.daemon.start()
    try:
        setup.write([setup.job("a"), setup.job("b")])
        for method in ("POST", "PUT"):
            async with (
                aiohttp.ClientSession() as session,
                session.request(method, f"{setup.url}/-/reload") as response,
            ):
                assert response.status == 403
                assert await response.text() == "Lifecycle API is not enabled.\n"
        assert set(setup.daemon.jobs) == {"a"}
        await setup.daemon.reload()  # what SIGHUP does, always
        assert set(setup.daemon.jobs) == {"a", "b"}
    finally:
        await setup.stop()
