"""/api/v1 and the HTML UI: job state, errors, masked secrets, filtered target pages."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sdbridge.config import parse_config
from sdbridge.daemon import Daemon
from sdbridge.errors import BackendError
from sdbridge.job import Job
from sdbridge.masking import MASK, mask_config
from sdbridge.web.app import create_app
from tests.unit.test_web_sd import client_for, make_daemon, snapshot_of, targets

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def daemon() -> Daemon:
    daemon = make_daemon(
        {"web": targets(250, env="prod"), "big": targets(10_000, dc="x"), "pending": None}
    )
    hostile = targets(2)
    hostile[0]["note"] = "<script>alert(1)</script>"
    daemon.jobs["web"].publisher.snapshot = snapshot_of("web", targets(250, env="prod") + hostile)
    return daemon


@pytest.fixture
async def client(daemon: Daemon) -> AsyncIterator[Client]:
    client = await client_for(create_app(daemon))
    yield client
    await client.close()


async def test_jobs_list(client: Client) -> None:
    body = await (await client.get("/api/v1/jobs")).json()
    assert body["status"] == "success"
    jobs = {j["name"]: j for j in body["data"]["jobs"]}
    assert set(jobs) == {"web", "big", "pending"}
    assert jobs["web"]["state"] == "ok"
    assert jobs["web"]["targets"] == 252
    assert jobs["pending"]["state"] == "syncing"
    assert jobs["big"]["mechanisms"][0]["name"] == "exec"
    assert jobs["big"]["http_sd_path"] == "/sd/big"
    assert "targets_page" not in jobs["web"]
    assert body["data"]["config"]["last_reload_successful"] is True


async def test_job_targets_are_paginated(client: Client) -> None:
    body = await (await client.get("/api/v1/jobs/big?page=3&per_page=25")).json()
    page = body["data"]["targets_page"]
    assert (page["total"], page["matched"], page["page"], page["per_page"]) == (
        10_000,
        10_000,
        3,
        25,
    )
    assert page["pages"] == 400
    assert len(page["items"]) == 25
    assert next(iter(page["items"][0])) == "__address__"
    assert page["items"][0]["dc"] == "x"


@pytest.mark.parametrize(
    ("query", "matched"),
    [
        ("idx=42", 1),
        ("IDX=42 env=prod", 1),
        ("idx=4", 11),
        ("note=<script", 1),
        ("nothing-like-this", 0),
        ("", 252),
    ],
)
async def test_job_targets_filter(client: Client, query: str, matched: int) -> None:
    body = await (await client.get("/api/v1/jobs/web", params={"q": query})).json()
    page = body["data"]["targets_page"]
    assert page["matched"] == matched
    terms = query.lower().split()
    for item in page["items"]:
        text = "\n".join(f"{k}={v}" for k, v in item.items()).lower()
        assert all(term in text for term in terms)


@pytest.mark.parametrize(
    "params",
    ["page=0", "page=-3", "page=abc", "per_page=0", "per_page=99999999999", "page=%C2%B2"],
)
async def test_job_page_parameters_are_clamped(client: Client, params: str) -> None:
    response = await client.get(f"/api/v1/jobs/web?{params}")
    assert response.status == 200
    page = (await response.json())["data"]["targets_page"]
    assert 1 <= page["per_page"] <= 1000
    assert page["page"] >= 1


async def test_unknown_job_is_404_json(client: Client) -> None:
    response = await client.get("/api/v1/jobs/nope")
    assert response.status == 404
    assert (await response.json())["status"] == "error"


async def test_failing_mechanism_shows_in_api_and_ui(client: Client, daemon: Daemon) -> None:
    runner = daemon.jobs["web"].runners[0]
    runner.context.record_failure(BackendError("registry at 127.0.0.1:1 refused the connection"))
    job = (await (await client.get("/api/v1/jobs/web")).json())["data"]
    assert job["state"] == "failing"
    assert job["errors"] == ["exec_sd_configs[0]: registry at 127.0.0.1:1 refused the connection"]
    assert job["mechanisms"][0]["failures"] == 1
    index = await (await client.get("/")).text()
    assert "state-failing" in index
    assert "refused the connection" in index
    page = await (await client.get("/jobs/web")).text()
    assert 'id="job-errors"' in page
    assert "refused the connection" in page


def make_secret_daemon() -> Daemon:
    config = parse_config(
        {
            "jobs": [
                {
                    "name": "s",
                    "exec_sd_configs": [
                        {
                            "command": ["fetch", "http://user:hunter2@127.0.0.1:8500/v1"],
                            "env": {"API_TOKEN": "tok-123", "REGION": "eu"},
                        }
                    ],
                }
            ]
        }
    )
    daemon = Daemon(config)
    daemon.jobs["s"] = Job(config.jobs[0], config.global_)
    return daemon


async def test_secrets_are_masked_in_api_and_ui() -> None:
    client = await client_for(create_app(make_secret_daemon()))
    try:
        for path in ("/api/v1/jobs", "/api/v1/jobs/s", "/jobs/s", "/"):
            text = await (await client.get(path)).text()
            assert "hunter2" not in text
            assert "tok-123" not in text
        config = (await (await client.get("/api/v1/jobs/s")).json())["data"]["mechanisms"][0][
            "config"
        ]
        assert config["env"] == {"API_TOKEN": MASK, "REGION": "eu"}
        assert config["command"][1] == f"http://user:{MASK}@127.0.0.1:8500/v1"
    finally:
        await client.close()


def test_mask_config() -> None:
    dumped = {
        "password": "p",
        "token_file": "/etc/token",
        "bearer_token": "**********",
        "nested": [{"client_secret": "s", "name": "n"}],
        "url": "https://a:b@h/x",
        "plain": "https://h/x",
        "empty_password": "",
        "port": 1,
    }
    assert mask_config(dumped) == {
        "password": MASK,
        "token_file": MASK,
        "bearer_token": "**********",
        "nested": [{"client_secret": MASK, "name": "n"}],
        "url": f"https://a:{MASK}@h/x",
        "plain": "https://h/x",
        "empty_password": "",
        "port": 1,
    }


async def test_ui_index_lists_jobs(client: Client) -> None:
    response = await client.get("/")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/html")
    text = await response.text()
    for name in ("web", "big", "pending"):
        assert f'data-job="{name}"' in text
    assert "10,000" in text
    assert "state-syncing" in text


async def test_ui_job_page_is_paginated_at_10000_targets(client: Client) -> None:
    text = await (await client.get("/jobs/big")).text()
    assert text.count('<td class="addr">') == 100
    assert "of <strong>10,000</strong>" in text
    assert "page 1 of 100" in text
    assert 'rel="next" href="/jobs/big?page=2&amp;per_page=100"' in text
    last = await (await client.get("/jobs/big?page=100&per_page=1000")).text()
    assert "page 10 of 10" in last  # clamped to the last page
    assert last.count('<td class="addr">') == 1000


async def test_ui_filter_and_escaping(client: Client) -> None:
    text = await (await client.get("/jobs/web", params={"q": "script"})).text()
    assert "<script>alert(1)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert text.count('<td class="addr">') == 1
    assert 'value="script"' in text
    evil = await (
        await client.get("/jobs/web", params={"q": '"><img src=x onerror=alert(1)>'})
    ).text()
    assert "<img src=x" not in evil


async def test_ui_unknown_job_and_static_files(client: Client) -> None:
    assert (await client.get("/jobs/nope")).status == 404
    css = await client.get("/static/sdbridge.css")
    assert css.status == 200
    js = await client.get("/static/sdbridge.js")
    assert js.status == 200
    assert (await client.get("/static/../app.py")).status in (403, 404)


async def test_ui_shows_a_failed_reload(client: Client, daemon: Daemon) -> None:
    daemon.last_reload_error = "sdbridge.yml: invalid YAML: line 3, column 1: oops"
    text = await (await client.get("/")).text()
    assert 'id="reload-error"' in text
    assert "line 3, column 1: oops" in text


async def test_ui_shows_the_guard_holding(
    client: Client, daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    guard = daemon.jobs["web"].guard
    holding = dataclasses.replace(
        guard.status(), holding=True, held_previous=1000, held_proposed=10, confirmations=3
    )
    monkeypatch.setattr(guard, "status", lambda: holding)
    assert (await (await client.get("/api/v1/jobs/web")).json())["data"]["state"] == "holding"
    text = await (await client.get("/jobs/web")).text()
    assert 'id="guard-holding"' in text
    assert "1,000 target(s) back from an update to 10" in text


async def test_http_sd_clients_are_shown(client: Client) -> None:
    page = await (await client.get("/jobs/web")).text()
    assert "Nobody has polled" in page
    headers = {"User-Agent": "Prometheus/2.42.0", "X-Prometheus-Refresh-Interval-Seconds": "30"}
    assert (await client.get("/sd/web", headers=headers)).status == 200
    assert (await client.get("/sd/pending", headers=headers)).status == 503
    assert (await client.get("/sd/no-such-job", headers=headers)).status == 404
    clients = (await (await client.get("/api/v1/jobs/web")).json())["data"]["http_sd_clients"]
    assert len(clients) == 1
    assert clients[0]["address"] == "127.0.0.1"
    assert clients[0]["user_agent"] == "Prometheus/2.42.0"
    assert clients[0]["refresh_interval_seconds"] == 30
    assert clients[0]["last_status"] == 200
    pending = (await (await client.get("/api/v1/jobs/pending")).json())["data"]
    assert pending["http_sd_clients"][0]["last_status"] == 503
    page = await (await client.get("/jobs/web")).text()
    assert "Prometheus/2.42.0" in page
    assert "30s" in page


async def test_a_job_whose_output_fails_is_degraded_not_ok(tmp_path: Path) -> None:
    import asyncio
    import json

    from tests.unit.test_registry_store import eventually

    (tmp_path / "targets.json").write_text(json.dumps([{"targets": ["127.0.0.1:9100"]}]))
    (tmp_path / "not-a-dir").write_text("a file where the output directory should be")
    config = parse_config(
        {
            "global": {"publish_delay": {"min": "0s", "max": "0s"}},
            "jobs": [
                {
                    "name": "web",
                    "exec_sd_configs": [{"command": ["cat", str(tmp_path / "targets.json")]}],
                    "output": {"file": str(tmp_path / "not-a-dir" / "web.json")},
                }
            ],
        }
    )
    daemon = Daemon(config)
    job = Job(config.jobs[0], config.global_)
    daemon.jobs["web"] = job
    task = asyncio.create_task(job.run())
    client = await client_for(create_app(daemon))
    try:

        async def state() -> str:
            body = await (await client.get("/api/v1/jobs/web")).json()
            return str(body["data"]["state"])

        await eventually(
            lambda: job.file_output is not None and job.file_output.last_error, "a write error"
        )
        assert await state() == "degraded"
        body = await (await client.get("/api/v1/jobs/web")).json()
        assert any(e.startswith("output file") for e in body["data"]["errors"])
        assert b"state-degraded" in await (await client.get("/")).read()
    finally:
        await client.close()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
