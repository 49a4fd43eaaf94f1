"""The target store: incremental builds equal a sort from scratch, duplicates included."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sdbridge.discovery.base import DiscoveryContext
from sdbridge.job.store import Origin, TargetStore
from sdbridge.model import TargetGroup
from sdbridge.render import render_json, sort_entries
from sdbridge.snapshot import content_hash

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
        for group in update:
            if group.targets:
                state[group.source] = group
            else:
                state.pop(group.source, None)
        ordered, snapshot = store.prepare_build()()
        store.finish_build(ordered)
        expected = sort_entries(
            e for g in state.values() for e in store.render(ORIGIN, [g])[0][1] or []
        )
        assert snapshot.body == render_json(expected)
        assert snapshot.etag == content_hash(expected)
        assert snapshot.target_count == len(expected)
