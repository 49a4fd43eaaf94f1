"""Rendering: deterministic bytes, one group per target with its merged labels."""

from __future__ import annotations

import random

import orjson
import yaml
from hypothesis import given
from hypothesis import strategies as st

from sdbridge.model import TargetGroup
from sdbridge.render import Snapshot, make_entry, render_json, render_yaml, sort_entries

names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,6}", fullmatch=True).filter(
    lambda n: n != "__address__"
)
# Label values may be any text: quotes, YAML keywords, newlines, non-ASCII.
values = st.one_of(
    st.text(max_size=6),
    st.sampled_from(["true", "~", "null", "0x10", "1e3", "- a", "a: b", "#c", " x ", "é", "'"]),
)
targets = st.builds(
    lambda n, port, labels: {**labels, "__address__": f"127.0.0.{n}:{port}"},
    st.integers(1, 5),
    st.integers(1, 3),
    st.dictionaries(names, values, max_size=4),
)


def expected(target: dict[str, str]) -> dict[str, object]:
    labels = {k: v for k, v in target.items() if k != "__address__" and v != ""}
    return {"labels": labels, "targets": [target["__address__"]]}


def snapshot_of(target_list: list[dict[str, str]]) -> Snapshot:
    return Snapshot.build("j", sort_entries(make_entry(t) for t in target_list))


@given(st.lists(targets, max_size=12), st.randoms())
def test_same_targets_in_any_order_give_the_same_bytes(
    target_list: list[dict[str, str]], rnd: random.Random
) -> None:
    shuffled = list(target_list)
    rnd.shuffle(shuffled)
    a, b = snapshot_of(target_list), snapshot_of(shuffled)
    assert a.body == b.body
    assert a.etag == b.etag
    assert render_yaml(a.entries) == render_yaml(b.entries)


@given(st.lists(targets, max_size=12))
def test_every_target_is_its_own_group_with_all_its_labels(
    target_list: list[dict[str, str]],
) -> None:
    snapshot = snapshot_of(target_list)
    decoded = orjson.loads(snapshot.body)
    unique = {orjson.dumps(expected(t), option=orjson.OPT_SORT_KEYS) for t in target_list}
    assert len(decoded) == len(unique)
    assert {orjson.dumps(d, option=orjson.OPT_SORT_KEYS) for d in decoded} == unique
    # Sorted by address, then by the labels' canonical (sorted-key) JSON; keys sorted.
    keys = [(d["targets"][0], orjson.dumps(d, option=orjson.OPT_SORT_KEYS)) for d in decoded]
    assert keys == sorted(keys)
    for d in decoded:
        assert list(d["labels"]) == sorted(d["labels"])


@given(st.lists(targets, max_size=12))
def test_yaml_and_json_carry_the_same_data(target_list: list[dict[str, str]]) -> None:
    snapshot = snapshot_of(target_list)
    assert yaml.safe_load(render_yaml(snapshot.entries)) == orjson.loads(snapshot.body)
    assert orjson.loads(render_json(snapshot.entries, pretty=True)) == orjson.loads(snapshot.body)


def test_target_labels_override_group_labels_in_the_output() -> None:
    g = TargetGroup(
        source="s",
        targets=(
            {"__address__": "127.0.0.2:80", "env": "prod", "__meta_x": "1"},
            {"__address__": "127.0.0.1:80"},
        ),
        labels={"env": "dev", "team": "a", "empty": ""},
    )
    snapshot = snapshot_of(g.merged_targets())
    assert snapshot.body == (
        b'[{"labels":{"env":"dev","team":"a"},"targets":["127.0.0.1:80"]},'
        b'{"labels":{"__meta_x":"1","env":"prod","team":"a"},"targets":["127.0.0.2:80"]}]'
    )
    assert snapshot.target_count == 2


def test_empty_job_renders_an_empty_list() -> None:
    snapshot = snapshot_of([])
    assert snapshot.body == b"[]"
    assert yaml.safe_load(render_yaml(snapshot.entries)) == []


def test_exact_duplicates_are_written_once() -> None:
    t = {"__address__": "127.0.0.1:1", "a": "b"}
    assert snapshot_of([t, dict(t), {**t, "a": "c"}]).target_count == 2


def test_long_yaml_values_are_not_folded() -> None:
    value = "word " * 50
    text = render_yaml(snapshot_of([{"__address__": "127.0.0.1:1", "a": value}]).entries)
    assert len(text.splitlines()) == 4
    assert yaml.safe_load(text)[0]["labels"]["a"] == value


def test_a_large_render_leaves_the_garbage_collector_alone() -> None:
    import gc

    assert gc.isenabled()
    entries = [make_entry({"__address__": f"127.0.{i // 256}.{i % 256}:80"}) for i in range(3000)]
    snapshot = Snapshot.build("gc", sort_entries(entries))
    assert snapshot.target_count == 3000
    assert gc.isenabled()


@given(
    st.dictionaries(names, values, max_size=4),
    st.lists(st.dictionaries(names, values, max_size=4), min_size=1, max_size=4),
)
def test_target_labels_override_group_labels_property(
    group_labels: dict[str, str], target_labels: list[dict[str, str]]
) -> None:
    targets = tuple(
        {**labels, "__address__": f"127.0.0.{n}:80"} for n, labels in enumerate(target_labels, 1)
    )
    g = TargetGroup(source="s", targets=targets, labels=group_labels)
    decoded = orjson.loads(snapshot_of(g.merged_targets()).body)
    assert len(decoded) == len(targets)  # distinct addresses: one entry each
    for target in targets:
        [entry] = [d for d in decoded if d["targets"] == [target["__address__"]]]
        merged = {**group_labels, **target}
        assert entry["labels"] == {k: v for k, v in merged.items() if k != "__address__" and v}


@given(st.lists(targets, max_size=30), st.randoms())
def test_sort_entries_equals_sorting_by_key_without_duplicates(
    target_list: list[dict[str, str]], rnd: random.Random
) -> None:
    # Few addresses and few label values: many ties and many exact duplicates.
    entries = [make_entry(t) for t in target_list]
    rnd.shuffle(entries)
    want: list[object] = []
    for entry in sorted(entries, key=lambda e: e.key):
        if not want or want[-1] != entry.key:
            want.append(entry.key)
    assert [e.key for e in sort_entries(entries)] == want
