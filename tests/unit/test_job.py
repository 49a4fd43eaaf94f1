"""The Job: merging by (config index, source), publish pacing, first-sync gating, restarts."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sdbridge.discovery
from sdbridge.config import GlobalConfig, PublishDelay
from sdbridge.discovery.base import Send
from sdbridge.job import Job
from sdbridge.job.publisher import PublishPacer
from sdbridge.model import TargetGroup

from .fakes import DiffingFake, FakeDiscoverer, group, job_config, make_job, running, until


def published(job: Job) -> list[dict[str, Any]]:
    assert job.snapshot is not None
    return list(orjson.loads(job.snapshot.body))


async def test_two_mechanisms_merge_by_index_and_source() -> None:
    job, (a, b), out = make_job(mechanisms=2)
    async with running(job):
        # The same source name in two mechanisms are two different groups.
        await a.send([group("x", "127.0.0.1:1", env="a")])
        await b.send([group("x", "127.0.0.2:1", env="b")])
        await until(lambda: job.snapshot is not None)
        assert published(job) == [
            {"labels": {"env": "a"}, "targets": ["127.0.0.1:1"]},
            {"labels": {"env": "b"}, "targets": ["127.0.0.2:1"]},
        ]
        # An empty group removes only that mechanism's source.
        await a.send([group("x")])
        await until(lambda: len(out.snapshots) == 2)
        assert published(job) == [{"labels": {"env": "b"}, "targets": ["127.0.0.2:1"]}]


async def test_nothing_is_published_until_every_mechanism_synced() -> None:
    job, (a, b, c), out = make_job(mechanisms=3)
    async with running(job):
        await a.send([group("x", "127.0.0.1:1")])
        await b.send([])
        await asyncio.sleep(0.1)
        assert job.snapshot is None
        assert out.snapshots == []
        assert not job.synced
        await c.send([group("y", "127.0.0.3:1")])
        snapshot = await asyncio.wait_for(job.wait_published(), 5)
        assert snapshot.target_count == 2
        assert job.synced


async def test_an_empty_first_sync_publishes_an_empty_list() -> None:
    job, (a,), out = make_job()
    async with running(job):
        await a.send([])
        snapshot = await asyncio.wait_for(job.wait_published(), 5)
        assert snapshot.body == b"[]"
        assert len(out.snapshots) == 1


class ManualClock:
    """A publisher clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._moved = asyncio.Event()

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        until_time = self.now + seconds
        while self.now < until_time:
            self._moved.clear()
            await self._moved.wait()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self._moved.set()


async def test_an_isolated_change_is_published_without_waiting_for_min() -> None:
    # The clock never moves here: a publish that waited for publish_delay.min never comes.
    clock = ManualClock()
    job, (a,), out = make_job(delay=(60.0, 120.0), clock=clock)
    async with running(job):
        await a.send([group("x", "127.0.0.1:1")])
        await until(lambda: len(out.snapshots) == 1, what="the first publish")
        clock.advance(3600)  # a quiet hour
        await a.send([group("y", "127.0.0.2:1")])
        await until(lambda: len(out.snapshots) == 2, what="the change, published at once")
        assert out.snapshots[1].target_count == 2


async def test_a_burst_of_200_changes_in_one_second_gives_a_handful_of_publishes() -> None:
    # The default publish_delay (min 250ms, max 2s); 200 changes 5ms apart on the clock.
    clock = ManualClock()
    job, (a,), out = make_job(delay=(0.25, 2.0), clock=clock)
    async with running(job):
        await a.send([group("base", "127.0.0.1:1")])
        await until(lambda: len(out.snapshots) == 1)
        clock.advance(60)
        for n in range(200):
            await a.send([group(str(n), f"127.0.1.{n}:80")])
            clock.advance(0.005)
            await asyncio.sleep(0)  # let a due publish run
        clock.advance(2.0)  # the burst is over: the rest goes out
        await until(lambda: out.snapshots[-1].target_count == 201, what="the whole burst")
        burst = len(out.snapshots) - 1
        assert 2 <= burst <= 6, f"{burst} publishes for one burst"
        await a.send([])  # nothing left to publish
        await asyncio.sleep(0.05)
        assert len(out.snapshots) == burst + 1


def test_pacer_spaces_a_busy_job_by_its_publish_cost() -> None:
    now = [0.0]
    pacer = PublishPacer(PublishDelay(), clock=lambda: now[0])
    pacer.changed()
    assert pacer.due() == 0.0  # leading edge
    started = pacer.started()
    now[0] = 0.4  # a publish that took 400ms
    pacer.finished(started)
    pacer.changed()
    due = pacer.due()
    assert due is not None
    assert due == pytest.approx(1.2)  # 3x its cost, more than min (250ms)
    now[0] = 5.0
    pacer.changed()  # a later change after a quiet period: no wait
    assert pacer.due() == pytest.approx(1.2)


def test_pacer_never_waits_longer_than_max_after_the_first_change() -> None:
    now = [0.0]
    pacer = PublishPacer(PublishDelay(), clock=lambda: now[0])
    pacer.changed()
    started = pacer.started()
    now[0] = 10.0  # a very slow publish: 3x its cost would be 30s
    pacer.finished(started)
    pacer.changed()
    assert pacer.due() == pytest.approx(12.0)  # first change + max (2s)


async def test_publish_delay_max_bounds_a_continuous_stream() -> None:
    job, (a,), out = make_job(delay=(0.2, 0.4))
    async with running(job):
        n = 0
        while not out.snapshots:
            n += 1
            await a.send([group(str(n % 200), f"127.0.0.{n % 200 + 1}:80")])
            await asyncio.sleep(0.01)  # faster than min: only max can end the wait
            assert n < 1000, "never published during a continuous stream"


async def test_syncs_without_changes_do_not_postpone_a_pending_publish() -> None:
    # Frequent refreshes that find nothing new must not keep re-arming the quiescence
    # window of a real change, or its publish waits for max (here, a minute).
    job, (a,), out = make_job(delay=(0.2, 60.0))
    async with running(job):
        await a.send([group("x", "127.0.0.1:1")])
        await until(lambda: len(out.snapshots) == 1)
        await a.send([group("y", "127.0.0.2:1")])
        n = 0
        while len(out.snapshots) < 2:
            n += 1
            await a.send([])
            await asyncio.sleep(0.01)  # faster than min
            assert n < 1000, "a stream of no-change syncs postponed the publish"
        assert out.snapshots[1].target_count == 2


async def test_identical_state_is_not_republished() -> None:
    job, (a,), out = make_job()
    async with running(job):
        await a.send([group("x", "127.0.0.1:1")])
        await until(lambda: len(out.snapshots) == 1)
        await a.send([group("x", "127.0.0.1:1")])
        await a.send([])
        await asyncio.sleep(0.1)
        assert len(out.snapshots) == 1


async def test_garbage_from_a_plugin_is_a_failed_refresh_and_state_stays() -> None:
    job, (a,), _ = make_job()
    async with running(job):
        await a.send([group("x", "127.0.0.1:1")])
        first = await asyncio.wait_for(job.wait_published(), 5)
        await a.send(["not a group"])  # type: ignore[list-item]
        runner = job.runners[0]
        assert runner.context.status.failures == 1
        assert "not TargetGroups" in (runner.context.status.last_error or "")
        assert job.snapshot is first


class _CrashOnce:
    """Sends a full set, crashes; its restart sends a different full set."""

    def __init__(self) -> None:
        self.runs = 0

    async def run(self, send: Send) -> None:
        self.runs += 1
        if self.runs == 1:
            await send([group("old", "127.0.0.1:1"), group("kept", "127.0.0.2:1")])
            raise RuntimeError("backend connection lost")
        await send([group("kept", "127.0.0.2:1"), group("new", "127.0.0.3:1")])
        await asyncio.Event().wait()


async def test_a_restarted_discoverer_replaces_its_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sdbridge.job.Backoff.next_delay", lambda self: 0.01)
    crash = _CrashOnce()
    other = FakeDiscoverer()
    job, _, _ = make_job(mechanisms=2, fakes=[crash, other])  # type: ignore[list-item]
    async with running(job):
        await other.send([group("old", "127.0.0.9:1")])  # same source, other mechanism
        await until(lambda: b"127.0.0.3:1" in (job.snapshot.body if job.snapshot else b""))
        assert [t["targets"][0] for t in published(job)] == [
            "127.0.0.2:1",
            "127.0.0.3:1",
            "127.0.0.9:1",
        ]
        # The crash is counted; the restart's accepted full set is a successful sync.
        status = job.runners[0].context.status
        assert status.failures == 1
        assert status.last_error is None


async def test_a_discoverer_whose_constructor_fails_only_fails_its_mechanism(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(config: object, context: object) -> object:
        raise ValueError("plugin bug")

    monkeypatch.setitem(
        sdbridge.discovery.MECHANISMS,
        "exec",
        dataclasses.replace(sdbridge.discovery.mechanisms()["exec"], factory=broken),
    )
    monkeypatch.setattr("sdbridge.job.Backoff.next_delay", lambda self: 60.0)
    job = Job(job_config(), GlobalConfig())
    async with running(job):
        await until(lambda: job.runners[0].context.status.failures > 0)
    assert "plugin bug" in (job.runners[0].context.status.last_error or "")
    assert job.snapshot is None


# --- property: the published state is the merge of every mechanism's last full set ---

addresses = st.builds("127.0.0.{}:{}".format, st.integers(1, 6), st.integers(1, 2))
groups = st.builds(
    lambda source, addrs, env: TargetGroup(
        source=source,
        targets=tuple({"__address__": a} for a in addrs),
        labels={"env": env},
    ),
    st.sampled_from(["a", "b", "c"]),
    st.lists(addresses, min_size=1, max_size=3),
    st.sampled_from(["x", "y", ""]),
)
full_sets = st.lists(groups, max_size=4, unique_by=lambda g: g.source)
# Each step: which mechanism sends, and its new full set.
steps = st.lists(st.tuples(st.integers(0, 2), full_sets), max_size=12)


def expected_targets(last: list[list[TargetGroup]]) -> list[dict[str, str]]:
    found = set()
    for full in last:
        for g in full:
            for t in g.merged_targets():
                found.add(tuple(sorted((k, v) for k, v in t.items() if v)))
    return [dict(t) for t in sorted(found)]


@settings(max_examples=60)
@given(first=st.tuples(full_sets, full_sets, full_sets), steps=steps)
def test_merged_state_equals_the_last_full_sets(
    first: tuple[list[TargetGroup], ...], steps: list[tuple[int, list[TargetGroup]]]
) -> None:
    async def scenario() -> None:
        fakes = [DiffingFake() for _ in range(3)]
        # The mass-deletion guard is tested on its own; here it would hold drops back.
        job, _, _ = make_job(mechanisms=3, fakes=list(fakes), guard={"enabled": False})
        last = list(first)
        async with running(job):
            for fake, full in zip(fakes, first, strict=True):
                await fake.send_full(full)
            for index, full in steps:
                await fakes[index].send_full(full)
                last[index] = full
            want = expected_targets(last)

            def settled() -> bool:
                snapshot = job.snapshot
                return snapshot is not None and sorted(
                    tuple(sorted(t.items())) for t in snapshot.targets()
                ) == [tuple(sorted(t.items())) for t in want]

            await until(settled, within=3, what="the published state to equal the last sets")

    asyncio.run(scenario())


# A large static set (with targets that also appear in the changing mechanisms) makes
# every later change small: publishes then re-sort the previous order incrementally.
STATIC = [
    TargetGroup(
        source="static",
        targets=(
            *({"__address__": f"127.0.1.{n}:1"} for n in range(1, 80)),
            {"__address__": "127.0.0.1:1"},
            {"__address__": "127.0.0.2:2"},
        ),
        labels={"env": "x"},
    )
]


@settings(max_examples=40)
@given(first=st.tuples(full_sets, full_sets, full_sets), steps=steps)
def test_every_publish_equals_the_current_full_sets(
    first: tuple[list[TargetGroup], ...], steps: list[tuple[int, list[TargetGroup]]]
) -> None:
    async def scenario() -> None:
        fakes = [DiffingFake() for _ in range(4)]
        job, _, _ = make_job(mechanisms=4, fakes=list(fakes), guard={"enabled": False})
        last = [*first, STATIC]

        def settled() -> bool:
            snapshot = job.snapshot
            want = [tuple(sorted(t.items())) for t in expected_targets(last)]
            return snapshot is not None and (
                sorted(tuple(sorted(t.items())) for t in snapshot.targets()) == want
            )

        async with running(job):
            for fake, full in zip(fakes, last, strict=True):
                await fake.send_full(full)
            await until(settled, within=3, what="the first publish")
            for index, full in steps:
                await fakes[index].send_full(full)
                last[index] = full
                await until(settled, within=3, what="the publish after a change")
            snapshot = job.snapshot
            assert snapshot is not None
            # And it is sorted and free of duplicates, as a full sort would make it.
            assert [e.key for e in snapshot.entries] == sorted({e.key for e in snapshot.entries})

    asyncio.run(scenario())
