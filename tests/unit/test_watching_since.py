"""A healthy, idle watch looks current ("watching since ..."), not stalled ("3h ago")."""

from __future__ import annotations

import time

from sdbridge.discovery.base import DiscoveryContext, is_watch
from sdbridge.errors import BackendError
from sdbridge.web.app import create_app
from tests.unit.test_web_sd import client_for, make_daemon, targets

THREE_HOURS = 3 * 3600


def test_healthy_since_starts_with_health_and_ends_with_a_failure() -> None:
    context = DiscoveryContext(job="j", mechanism="etcd")
    assert context.status.healthy_since is None
    context.record_sync()
    first = context.status.healthy_since
    assert first is not None
    context.record_current()
    context.record_sync()
    assert context.status.healthy_since == first  # still the same run of health
    context.record_failure(BackendError("stream broke"))
    assert context.status.healthy_since is None
    context.record_sync()
    assert context.status.healthy_since is not None


def test_which_discoverers_watch() -> None:
    from sdbridge.discovery.exec import ExecDiscoverer, ExecSDConfig

    class Watch:
        config = None

    class PollingWatch:
        class config:  # a watch mechanism configured with watch: false
            watch = False

    polling = ExecDiscoverer(ExecSDConfig(command=["x"]), DiscoveryContext(job="j", mechanism="e"))
    assert (is_watch(Watch()), is_watch(PollingWatch()), is_watch(polling)) == (True, False, False)


async def test_an_idle_watch_shows_watching_since_and_a_failing_one_does_not() -> None:
    daemon = make_daemon({"web": targets(3)})
    status = daemon.jobs["web"].runners[0].context.status
    status.watches = True
    client = await client_for(create_app(daemon))
    try:
        daemon.jobs["web"].runners[0].context.record_sync()
        idle_since = time.time() - THREE_HOURS  # the last update came 3h ago
        status.healthy_since = status.last_success = idle_since
        iso = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(idle_since))
        for path in ("/", "/jobs/web"):
            page = await (await client.get(path)).text()
            assert "watching since <time" in page, path
            assert iso in page, path
            assert "3h ago" not in page, path
        api = (await (await client.get("/api/v1/jobs/web")).json())["data"]
        assert api["mechanisms"][0]["watches"] is True
        assert api["mechanisms"][0]["healthy_since"] == idle_since

        daemon.jobs["web"].runners[0].context.record_failure(BackendError("stream broke"))
        page = await (await client.get("/")).text()
        assert "watching since" not in page
        assert "3h ago" in page  # a failing watch shows how old its view is

        status.watches = False  # a polling mechanism: always "last sync ... ago"
        daemon.jobs["web"].runners[0].context.record_sync()
        page = await (await client.get("/")).text()
        assert "watching since" not in page
    finally:
        await client.close()
