"""The mass-deletion guard, on its own and through a real Job with fake discoverers."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

import sdbridge.guard
from sdbridge.config import GuardConfig
from sdbridge.guard import Guard, removed_targets
from sdbridge.job.store import TargetStore
from sdbridge.render import Snapshot, make_entry, sort_entries

from .fakes import group, make_job, running, until


def snap(*addresses: str, job: str = "g", **labels: str) -> Snapshot:
    entries = sort_entries(make_entry({"__address__": a, **labels}) for a in addresses)
    return Snapshot.build(job, entries, groups=len(entries))


def hosts(n: int, start: int = 1) -> list[str]:
    return [f"127.0.0.1:{port}" for port in range(start, start + n)]


def metric(name: str, job: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"job": job})


# --- the decision on its own -----------------------------------------------------------


@pytest.mark.parametrize(
    ("previous", "proposed", "admitted"),
    [
        (10, 10, True),
        (10, 5, True),  # exactly max_drop_ratio: allowed
        (10, 4, False),  # more than half removed
        (10, 0, False),
        (0, 0, True),  # nothing to protect
        (1, 0, False),
        (3, 20, True),
    ],
)
def test_ratio(previous: int, proposed: int, admitted: bool) -> None:
    guard = Guard(GuardConfig(), job="ratio")
    assert guard.admit(snap(*hosts(previous)), snap(*hosts(proposed))) is admitted
    assert guard.holding is not admitted


def test_removal_counts_addresses_not_labels() -> None:
    before = snap(*hosts(10), env="a")
    relabeled = snap(*hosts(10), env="b")
    moved = snap(*hosts(10, start=100))
    assert removed_targets(before, relabeled) == 0
    assert removed_targets(before, moved) == 10
    guard = Guard(GuardConfig(), job="addresses")
    assert guard.admit(before, relabeled)
    assert not guard.admit(before, moved)  # same count, but every target replaced


def test_disabled_guard_admits_everything() -> None:
    guard = Guard(GuardConfig(enabled=False), job="disabled")
    assert guard.admit(snap(*hosts(100)), snap())
    assert not guard.holding


def test_max_drop_ratio_zero_holds_any_removal() -> None:
    guard = Guard(GuardConfig(max_drop_ratio=0.0), job="zero")
    assert not guard.admit(snap(*hosts(100)), snap(*hosts(99)))


def test_confirmations_count_only_syncs_of_the_mechanism_that_dropped() -> None:
    guard = Guard(GuardConfig(confirmations=2), job="suspects")
    before, after = snap(*hosts(10)), snap(*hosts(1))
    guard.observe_sync(0, changed=True)  # mechanism 0 brought the drop
    assert not guard.admit(before, after)
    guard.observe_sync(1, changed=False)
    guard.observe_sync(1, changed=False)
    assert not guard.admit(before, after)
    assert guard.status().confirmations_seen == 0
    guard.observe_sync(0, changed=False)
    assert not guard.admit(before, after)
    guard.observe_sync(0, changed=False)
    assert guard.admit(before, after)
    assert guard.last_release == "confirmed by 2 syncs"


# --- through a Job -----------------------------------------------------------------------


async def test_glitch_is_held_visible_and_released_after_confirmations(
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = "guard-confirm"
    job, (fake,), out = make_job(name=name, guard={"confirmations": 2, "hold_for": "1h"})
    holds_before = metric("sdbridge_guard_holds_total", name) or 0.0
    async with running(job):
        await fake.send([group("all", *hosts(10))])
        await until(lambda: job.snapshot is not None and job.snapshot.target_count == 10)
        with caplog.at_level(logging.WARNING, logger="sdbridge.guard"):
            await fake.send([group("all", *hosts(1))])  # registry glitch: 9 of 10 gone
            await until(lambda: job.guard.holding, what="the guard to hold")
        assert job.snapshot is not None
        assert job.snapshot.target_count == 10
        assert metric("sdbridge_guard_holding", name) == 1
        assert metric("sdbridge_guard_holds_total", name) == holds_before + 1
        status = job.status().guard
        assert status.holding is True
        assert (status.held_previous, status.held_proposed, status.held_removed) == (
            10,
            1,
            9,
        )
        assert "remove 9 of 10 targets" in caplog.text
        # The same answer twice more: confirmed, the smaller set is published.
        await fake.send([])
        await asyncio.sleep(0.05)
        assert job.snapshot.target_count == 10
        await fake.send([])
        await until(lambda: job.snapshot is not None and job.snapshot.target_count == 1)
        assert metric("sdbridge_guard_holding", name) == 0
        assert job.status().guard.last_release == "confirmed by 2 syncs"
    assert [s.target_count for s in out.snapshots] == [10, 1]


async def test_syncs_without_changes_do_not_rebuild_a_held_update(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    builds = 0
    real_prepare = TargetStore.prepare_build

    def counting_prepare(self: TargetStore) -> Any:
        nonlocal builds
        builds += 1
        return real_prepare(self)

    monkeypatch.setattr(TargetStore, "prepare_build", counting_prepare)
    job, (fake,), out = make_job(name="guard-rebuild", guard={"confirmations": 4, "hold_for": "1h"})
    async with running(job):
        await fake.send([group("all", *hosts(10))])
        await until(lambda: len(out.snapshots) == 1)
        await fake.send([group("all", *hosts(1))])
        await until(lambda: job.guard.holding, what="the guard to hold")
        held_builds = builds
        for _ in range(3):  # the guard re-decides on each sync, about the same snapshot
            await fake.send([])
            await asyncio.sleep(0.02)
        assert job.guard.status().confirmations_seen == 3
        assert builds == held_builds
        await fake.send([])
        await until(lambda: len(out.snapshots) == 2)
        assert out.snapshots[1].target_count == 1
        assert builds == held_builds


async def test_drop_that_goes_away_is_never_published() -> None:
    job, (fake,), out = make_job(name="guard-recover", guard={"confirmations": 3})
    async with running(job):
        await fake.send([group("all", *hosts(10))])
        await until(lambda: job.snapshot is not None)
        await fake.send([group("all", *hosts(2))])
        await until(lambda: job.guard.holding)
        await fake.send([group("all", *hosts(11))])
        await until(lambda: not job.guard.holding and job.snapshot.target_count == 11)  # type: ignore[union-attr]
    assert [s.target_count for s in out.snapshots] == [10, 11]


async def test_healthy_mechanism_does_not_confirm_the_other_ones_drop() -> None:
    job, (a, b), _ = make_job(
        name="guard-two", mechanisms=2, guard={"confirmations": 2, "hold_for": "1h"}
    )
    async with running(job):
        await a.send([group("a", *hosts(8))])
        await b.send([group("b", *hosts(2, start=100))])
        await until(lambda: job.snapshot is not None and job.snapshot.target_count == 10)
        await a.send([group("a")])  # mechanism a loses everything: 8 of 10
        await until(lambda: job.guard.holding)
        for _ in range(4):
            await b.send([])
        await asyncio.sleep(0.05)
        assert job.guard.holding
        assert job.snapshot is not None
        assert job.snapshot.target_count == 10
        await a.send([])
        await a.send([])
        await until(lambda: job.snapshot is not None and job.snapshot.target_count == 2)


async def test_hold_for_releases_without_further_syncs() -> None:
    job, (fake,), _ = make_job(
        name="guard-time", guard={"confirmations": 1000, "hold_for": "200ms"}
    )
    async with running(job):
        await fake.send([group("all", *hosts(10))])
        await until(lambda: job.snapshot is not None)
        await fake.send([group("all", *hosts(1))])
        await until(lambda: job.guard.holding)
        await until(lambda: job.snapshot is not None and job.snapshot.target_count == 1)
        assert job.guard.last_release == "held for 0.2s"


async def test_an_empty_registry_confirmed_over_time_publishes_empty() -> None:
    job, (fake,), out = make_job(name="guard-empty", guard={"confirmations": 2})
    async with running(job):
        await fake.send([group("all", *hosts(5))])
        await until(lambda: job.snapshot is not None)
        await fake.send([group("all")])  # the registry is really empty now
        await until(lambda: job.guard.holding)
        await fake.send([])
        await fake.send([])
        await until(lambda: job.snapshot is not None and job.snapshot.body == b"[]")
    assert [s.target_count for s in out.snapshots] == [5, 0]


async def test_disabled_guard_publishes_the_drop_at_once() -> None:
    job, (fake,), out = make_job(name="guard-off", guard={"enabled": False})
    async with running(job):
        await fake.send([group("all", *hosts(10))])
        await until(lambda: job.snapshot is not None)
        await fake.send([group("all")])
        await until(lambda: job.snapshot is not None and job.snapshot.target_count == 0)
        assert job.status().guard.holds_total == 0
    assert [s.target_count for s in out.snapshots] == [10, 0]


async def test_guard_compares_with_a_restored_snapshot() -> None:
    """After a restart, a first sync far smaller than the last-known-good is held too."""
    job, (fake,), _ = make_job(name="guard-restored", guard={"confirmations": 1})
    job.restore(Snapshot.build(job.name, list(snap(*hosts(10)).entries), stale=True))
    async with running(job):
        await fake.send([group("all", *hosts(1))])
        await until(lambda: job.guard.holding)
        assert job.snapshot is not None
        assert job.snapshot.stale
        await fake.send([])
        await until(lambda: job.snapshot is not None and not job.snapshot.stale)
        assert job.snapshot.target_count == 1


def test_status_shape() -> None:
    status = Guard(GuardConfig(), job="shape").status()
    assert status.enabled is True
    assert status.holding is False
    assert status.max_drop_ratio == 0.5


async def test_returning_to_the_published_set_ends_the_hold() -> None:
    name = "guard-same"
    job, (fake,), out = make_job(name=name, guard={"confirmations": 5})
    async with running(job):
        await fake.send([group("all", *hosts(10))])
        await until(lambda: job.snapshot is not None)
        await fake.send([group("all", *hosts(1))])
        await until(lambda: job.guard.holding)
        await fake.send([group("all", *hosts(10))])  # the very same targets again
        await until(lambda: not job.guard.holding, what="the hold to end")
        assert metric("sdbridge_guard_holding", name) == 0
    assert [s.target_count for s in out.snapshots] == [10]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


GUARD_EXAMPLES = 300

operations = st.lists(
    st.one_of(
        st.tuples(st.just("sync"), st.integers(0, 2), st.booleans()),
        st.tuples(st.just("admit"), st.integers(0, 40), st.just(False)),
        st.tuples(st.just("tick"), st.sampled_from([1, 30, 200]), st.just(False)),
    ),
    max_size=40,
)


@settings(max_examples=GUARD_EXAMPLES)
@given(
    ops=operations,
    ratio=st.sampled_from([0.0, 0.25, 0.5, 0.9]),
    confirmations=st.integers(1, 4),
)
def test_a_large_drop_is_never_published_unconfirmed(
    ops: list[tuple[str, int, bool]],
    ratio: float,
    confirmations: int,
) -> None:
    """Safety, for any sequence: a drop above the ratio is published only after it was held
    and then either enough syncs happened or hold_for passed."""
    clock = FakeClock()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sdbridge.guard, "time", clock)
        check_sequence(clock, ops, ratio, confirmations)


def check_sequence(
    clock: FakeClock, ops: list[tuple[str, int, bool]], ratio: float, confirmations: int
) -> None:
    hold_for = 300.0
    guard = Guard(
        GuardConfig.model_validate(
            {"max_drop_ratio": ratio, "confirmations": confirmations, "hold_for": "5m"}
        ),
        job="property",
    )
    published = 20
    assert guard.admit(None, snap(*hosts(published)))
    refused_at: float | None = None  # first refusal since the last publish
    syncs_since_refusal = 0
    for op, value, changed in ops:
        if op == "sync":
            guard.observe_sync(value, changed=changed)
            syncs_since_refusal += 1
        elif op == "tick":
            clock.now += value
        else:
            big = published > 0 and (published - value) / published > ratio
            admitted = guard.admit(snap(*hosts(published)), snap(*hosts(value)))
            if admitted and big:
                assert refused_at is not None, "a large drop was published at first sight"
                assert syncs_since_refusal >= confirmations or clock.now - refused_at >= hold_for
            if admitted:
                published, refused_at, syncs_since_refusal = value, None, 0
            elif refused_at is None:
                refused_at, syncs_since_refusal = clock.now, 0
            assert guard.holding is not admitted
