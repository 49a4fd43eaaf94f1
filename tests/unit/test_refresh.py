"""RefreshDiscoverer: full set first, then diffs; a failed refresh sends nothing; backoff; cancel."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from sdbridge.discovery.base import DiscoveryContext, RefreshConfig, RefreshDiscoverer
from sdbridge.errors import BackendError
from sdbridge.model import TargetGroup

from .fakes import group, until


class Scripted(RefreshDiscoverer[RefreshConfig]):
    """Each refresh returns (or raises) the next item of ``script``; then blocks."""

    initial_backoff = 0.01

    def __init__(self, script: list[list[TargetGroup] | Exception]) -> None:
        config = RefreshConfig.model_validate({"refresh_interval": "1h"})
        super().__init__(config, DiscoveryContext(job="j", mechanism="scripted"))
        self.script = list(script)
        self.calls = 0
        self.watch_cancelled = False

    async def refresh(self) -> list[TargetGroup]:
        self.calls += 1
        item = self.script.pop(0) if self.script else []
        if isinstance(item, Exception):
            raise item
        return item

    async def watch(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.watch_cancelled = True
            raise


async def run_until(discoverer: Scripted, sends: list[list[TargetGroup]], calls: int) -> None:
    async def send(groups: list[TargetGroup]) -> None:
        sends.append(groups)
        discoverer.context.record_sync()  # what the job does with every accepted send

    task = asyncio.create_task(discoverer.run(send))
    try:
        for _ in range(calls):
            before = discoverer.calls
            if before >= calls:
                break
            discoverer.request_refresh()
            await until(lambda before=before: discoverer.calls > before)  # type: ignore[misc]
        await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_first_send_is_the_full_set_then_only_changes() -> None:
    a, b = group("a", "127.0.0.1:1"), group("b", "127.0.0.2:1")
    b2 = group("b", "127.0.0.3:1")
    discoverer = Scripted([[a, b], [a, b], [a, b2], [b2]])
    sends: list[list[TargetGroup]] = []
    await run_until(discoverer, sends, 4)
    assert sends == [[a, b], [], [b2], [TargetGroup(source="a")]]
    assert discoverer.context.status.synced
    assert discoverer.context.status.refreshes == 4


async def test_a_failed_refresh_sends_nothing_and_is_retried_with_backoff() -> None:
    a = group("a", "127.0.0.1:1")
    discoverer = Scripted([[a], BackendError("down"), BackendError("down"), [a]])
    sends: list[list[TargetGroup]] = []

    async def send(groups: list[TargetGroup]) -> None:
        sends.append(groups)
        discoverer.context.record_sync()  # what the job does with every accepted send

    task = asyncio.create_task(discoverer.run(send))
    try:
        await until(lambda: len(sends) == 1)
        discoverer.request_refresh()
        # The retries come by themselves (backoff from 10ms), not after the 1h interval.
        await until(lambda: discoverer.calls >= 4)
        await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert sends == [[a], []]  # the recovery found nothing changed
    status = discoverer.context.status
    assert status.failures == 2
    assert status.last_error is None
    assert status.failing_since is None


async def test_cancel_stops_the_refresh_loop_and_the_watch() -> None:
    discoverer = Scripted([[]])
    sends: list[list[TargetGroup]] = []
    await run_until(discoverer, sends, 1)
    assert sends == [[]]
    assert discoverer.watch_cancelled


async def test_duplicate_sources_fail_the_refresh(caplog: pytest.LogCaptureFixture) -> None:
    a = group("a", "127.0.0.1:1")
    discoverer = Scripted([[a, a]])
    sends: list[list[TargetGroup]] = []
    await run_until(discoverer, sends, 1)
    assert [a, a] not in sends  # (the retry found an empty set and sent that)
    assert discoverer.context.status.failures == 1
    assert "duplicate source 'a' in one refresh" in caplog.text


def test_refresh_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        RefreshConfig.model_validate({"refresh_interval": "0s"})
