"""The target store: incremental builds equal a sort from scratch, duplicates included."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sdbridge.discovery.base import DiscoveryContext
from sdbridge.job.store import Origin, TargetStore
from sdbridge.model import TargetGroup
from sdbridge.render import render_json, sort_entries
from sdbridge.snapshot import content_hash

from .fakes import group, make_job, running, until

ORIGIN = Origin(0, "exec_sd_configs[0]", DiscoveryContext(job="store", mechanism="exec"))
# Many fixed groups, so that a few changes take the incremental path.
BASE = [
    TargetGroup(
        source=f"base{i}",
        targets=({"__address__": f"127.0.{1 + i // 100}.{i % 100}:80"},),
        labels={},
    )
    for i in range(200)
]

addresses = st.builds("127.0.0.{}:{}".format, st.integers(1, 4), st.integers(1, 2))
groups = st.builds(
    lambda source, addrs, env: TargetGroup(
        source=source, targets=tuple({"__address__": a} for a in addrs), labels={"env": env}
    ),
    st.sampled_from(["a", "b", "c", "d"]),
    st.lists(addresses, max_size=3),  # an empty group removes its source
    st.sampled_from(["x", "y"]),
)


@settings(max_examples=80)
@given(st.lists(st.lists(groups, max_size=3, unique_by=lambda g: g.source), max_size=10))
def test_every_build_equals_a_sort_from_scratch(updates: list[list[TargetGroup]]) -> None:
    store = TargetStore("store", [])
    state: dict[str, TargetGroup] = {}
    for update in [BASE, *updates]:
        store.apply(0, store.render(ORIGIN, update), full=False)
        for sent in update:
            if sent.targets:
                state[sent.source] = sent
            else:
                state.pop(sent.source, None)
        ordered, snapshot = store.prepare_build()()
        store.finish_build(ordered)
        expected = sort_entries(
            e for g in state.values() for e in store.render(ORIGIN, [g])[0].entries or []
        )
        assert snapshot.body == render_json(expected)
        assert snapshot.etag == content_hash(expected)
        assert snapshot.target_count == len(expected)


@settings(max_examples=80)
@given(
    st.lists(
        st.tuples(st.lists(groups, max_size=3, unique_by=lambda g: g.source), st.booleans()),
        max_size=12,
    )
)
def test_builds_after_several_updates_equal_a_sort_from_scratch(
    steps: list[tuple[list[TargetGroup], bool]],
) -> None:
    """Several updates may land between two builds: a target added and removed again in
    between (churn) must not be looked for in the order it never reached."""
    store = TargetStore("store", [])
    state: dict[str, TargetGroup] = {}
    store.apply(0, store.render(ORIGIN, BASE), full=False)
    store.finish_build(store.prepare_build()()[0])
    for update, build_now in [*steps, ([], True)]:
        store.apply(0, store.render(ORIGIN, update), full=False)
        for sent in update:
            if sent.targets:
                state[sent.source] = sent
            else:
                state.pop(sent.source, None)
        if not build_now:
            continue
        ordered, snapshot = store.prepare_build()()
        store.finish_build(ordered)
        expected = sort_entries(
            e for g in [*BASE, *state.values()] for e in store.render(ORIGIN, [g])[0].entries or []
        )
        assert snapshot.body == render_json(expected)


async def test_relabeled_jobs_keep_labels_before_relabeling_and_some_dropped_targets() -> None:
    rules = [{"action": "drop", "source_labels": ["env"], "regex": "dev"}]
    job, (fake,), _ = make_job(relabel_configs=rules, keep_dropped_targets=1)
    async with running(job):
        await fake.send(
            [
                group("a", "127.0.0.1:1", env="prod"),
                group("b", "127.0.0.2:1", "127.0.0.3:1", env="dev"),
            ]
        )
        await until(lambda: job.snapshot is not None)
        kept = job.targets_before_relabeling()
        assert [d.labels for d in kept if d.entry is not None] == [
            {"__address__": "127.0.0.1:1", "env": "prod"}
        ]
        dropped = [d.labels for d in kept if d.entry is None]
        assert dropped == [{"__address__": "127.0.0.2:1", "env": "dev"}]  # limit 1
        assert job.status().dropped_targets == 2
        await fake.send([group("b")])  # the dropped group goes: so do its records
        assert job.status().dropped_targets == 0
        assert [d.entry is None for d in job.targets_before_relabeling()] == [False]


async def test_without_relabel_rules_nothing_extra_is_kept() -> None:
    job, (fake,), _ = make_job()
    async with running(job):
        await fake.send([group("a", "127.0.0.1:1")])
        await until(lambda: job.snapshot is not None)
        assert job.targets_before_relabeling() == []
