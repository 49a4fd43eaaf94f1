"""GroupDiff: successive full sets become the changes the contract sends."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdbridge.discovery.base import Backoff, GroupDiff
from sdbridge.errors import SdbridgeError
from sdbridge.model import TargetGroup

sources = st.sampled_from(["a", "b", "c", "d", "e"])
targets = st.lists(
    st.builds(
        lambda n, env: {"__address__": f"127.0.0.{n}:80", "env": env},
        st.integers(1, 4),
        st.sampled_from(["x", "y"]),
    ),
    min_size=1,
    max_size=3,
)
groups = st.builds(
    lambda source, ts, team: TargetGroup(source=source, targets=tuple(ts), labels={"team": team}),
    sources,
    targets,
    st.sampled_from(["p", "q"]),
)
full_sets = st.lists(groups, max_size=5, unique_by=lambda g: g.source)


def apply(state: dict[str, TargetGroup], changes: list[TargetGroup]) -> None:
    """What a consumer does with a send: replace by source; an empty group removes it."""
    for g in changes:
        if g.targets:
            state[g.source] = g
        else:
            state.pop(g.source, None)


@given(st.lists(full_sets, min_size=1, max_size=6))
def test_applying_the_diffs_reproduces_the_last_full_set(sets: list[list[TargetGroup]]) -> None:
    diff = GroupDiff()
    state: dict[str, TargetGroup] = {}
    for index, full in enumerate(sets):
        changes = diff.changes(full)
        if index == 0:
            assert changes == full  # the first send is the full set
        apply(state, changes)
        assert state == {g.source: g for g in full}


@given(full_sets)
def test_an_unchanged_set_sends_nothing(full: list[TargetGroup]) -> None:
    diff = GroupDiff()
    diff.changes(full)
    assert diff.changes(list(reversed(full))) == []


def test_a_vanished_source_is_sent_as_an_empty_group() -> None:
    diff = GroupDiff()
    a = TargetGroup(source="a", targets=({"__address__": "127.0.0.1:1"},))
    b = TargetGroup(source="b", targets=({"__address__": "127.0.0.2:1"},))
    assert diff.changes([a, b]) == [a, b]
    assert diff.changes([a]) == [TargetGroup(source="b")]
    assert diff.changes([]) == [TargetGroup(source="a")]


def test_reset_makes_the_next_set_full() -> None:
    diff = GroupDiff()
    a = TargetGroup(source="a", targets=({"__address__": "127.0.0.1:1"},))
    diff.changes([a])
    diff.reset()
    assert diff.changes([a]) == [a]


def test_duplicate_sources_in_one_set_are_an_error() -> None:
    a = TargetGroup(source="a", targets=({"__address__": "127.0.0.1:1"},))
    with pytest.raises(SdbridgeError, match="duplicate source 'a'"):
        GroupDiff().changes([a, a])


def test_backoff_grows_with_jitter_and_resets() -> None:
    backoff = Backoff(1.0, 8.0)
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, ceiling in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert backoff.next_delay() <= 1.0
