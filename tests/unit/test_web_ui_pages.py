"""The UI's live pages, registry page and service-discovery page, rendered in-process."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sdbridge.daemon import Daemon
from sdbridge.web import ui
from sdbridge.web.app import create_app
from tests.unit.test_web_sd import client_for, make_daemon, targets

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    daemon: Daemon = make_daemon({"web": targets(30, env="prod"), "pending": None})
    client = await client_for(create_app(daemon))
    yield client
    await client.close()


def live_ids(page: str) -> set[str]:
    return set(re.findall(r'id="([^"]+)" data-live', page))


async def test_pages_mark_their_live_regions_and_the_server_clock(client: Client) -> None:
    index = await (await client.get("/")).text()
    assert {"readiness", "jobs-live"} <= live_ids(index)
    assert re.search(r'<body data-now="\d+\.\d{3}" data-refresh="5">', index)
    job = await (await client.get("/jobs/web")).text()
    assert {"readiness", "job-live", "targets-live"} <= live_ids(job)
    # The filter form stays outside the swapped regions: typing is never interrupted.
    live = job.index('id="targets-live"')
    assert job.index('id="filter"') < live
    pending = await (await client.get("/jobs/pending")).text()
    assert "targets-live" in live_ids(pending)  # the targets appear once the job syncs


def test_relative_times_carry_their_unix_time() -> None:
    assert ui._ago(1000.0, 1042.9) == (
        '<time datetime="1970-01-01 00:16:40 UTC" title="1970-01-01 00:16:40 UTC" '
        'data-ago="1000.000">42s ago</time>'
    )
    assert ">in 30s<" in ui._until(1030.0, 1000.0)
    assert ">expired<" in ui._until(1000.0, 1000.5)
    assert [ui._relative(s) for s in (0, 119, 120, 7199, 7200, 172799, 172800)] == [
        "0s",
        "119s",
        "2m",
        "119m",
        "2h",
        "47h",
        "2d",
    ]
