"""What relabeling, the guard and last-known-good state add to a publish.

For N targets (default 100,000, about 10 labels each, like a Consul service fleet) it
times, in one run, each reliability step next to the step it rides on:

- relabel: ``relabel.process`` with 6 typical rules, then rendering, against rendering
  alone (``make_entry`` for every target, the floor of a publish);
- guard: ``removed_targets`` (the drop check before every publish) against
  ``Snapshot.build`` (sorting and joining, which every publish pays);
- state write: ``encode_state`` + atomic write against the file output's atomic write
  of the same body;
- state load: ``decode_state`` (checksum plus full target validation) against a bare
  ``orjson.loads`` of the body.

Run: ``.venv/bin/python bench/reliability_overhead.py [--targets N] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from sdbridge.guard import removed_targets
from sdbridge.outputs.file import atomic_write
from sdbridge.relabel import RelabelConfig, compile_rules, process
from sdbridge.render import Snapshot, make_entry, sort_entries
from sdbridge.state import decode_state, encode_state

RULES = [
    {"action": "keep", "source_labels": ["__meta_consul_tags"], "regex": ".*,prometheus,.*"},
    {
        "source_labels": ["__address__", "__meta_consul_service_metadata_metrics_port"],
        "regex": "([^:]+)(?::\\d+)?;(\\d+)",
        "replacement": "${1}:${2}",
        "target_label": "__address__",
    },
    {"action": "labelmap", "regex": "__meta_consul_service_metadata_(.+)"},
    {"source_labels": ["__meta_consul_dc"], "target_label": "dc"},
    {"action": "hashmod", "source_labels": ["__address__"], "modulus": 4, "target_label": "shard"},
    {"action": "labeldrop", "regex": "__meta_consul_(tagged_address|partition)_.*"},
]


def fleet(n: int) -> list[dict[str, str]]:
    return [
        {
            "__address__": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:8080",
            "__meta_consul_service": f"svc{i % 50}",
            "__meta_consul_node": f"node{i % 2000}",
            "__meta_consul_dc": "dc1",
            "__meta_consul_tags": ",web,prometheus," if i % 10 else ",web,",
            "__meta_consul_service_metadata_metrics_port": "9100",
            "__meta_consul_service_metadata_version": f"1.{i % 7}",
            "__meta_consul_tagged_address_lan": f"10.0.0.{i % 256}",
            "__meta_consul_health": "passing",
            "__meta_consul_service_id": f"svc{i % 50}-{i}",
        }
        for i in range(n)
    ]


def timed(fn: Callable[[], object], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n, repeat = args.targets, args.repeat
    targets = fleet(n)
    rules = compile_rules([RelabelConfig.model_validate(r) for r in RULES])

    def render_only() -> list[object]:
        return [make_entry(t) for t in targets]

    def relabel_and_render() -> list[object]:
        out = []
        for t in targets:
            relabeled = process(t, rules)
            if relabeled is not None:
                out.append(make_entry(relabeled))
        return out

    entries = sort_entries(make_entry(t) for t in targets)
    previous = Snapshot.build("bench", entries)
    shrunk = Snapshot.build("bench", entries[: n // 3])

    rows: list[tuple[str, float, str, float]] = []
    rows.append(
        ("relabel (6 rules) + render", timed(relabel_and_render, repeat),
         "render only", timed(render_only, repeat))
    )  # fmt: skip
    rows.append(
        ("guard: removed_targets", timed(lambda: removed_targets(previous, shrunk), repeat),
         "Snapshot.build", timed(lambda: Snapshot.build("bench", entries), repeat))
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        out, state = Path(tmp) / "bench.json", Path(tmp) / "bench.state"
        rows.append(
            ("state write (encode + atomic)",
             timed(lambda: atomic_write(state, encode_state(previous)), repeat),
             "file output atomic write", timed(lambda: atomic_write(out, previous.body), repeat))
        )  # fmt: skip
        data = state.read_bytes()
        rows.append(
            ("state load (verify + validate)",
             timed(lambda: decode_state(data, job="bench", origin="bench"), repeat),
             "orjson.loads of the body", timed(lambda: orjson.loads(previous.body), repeat))
        )  # fmt: skip

    print(f"{n} targets, {len(previous.body) / 1e6:.1f} MB body, median of {repeat} runs\n")
    print("| step | time | baseline | time | ratio |\n| --- | ---: | --- | ---: | ---: |")
    for step, t_step, base, t_base in rows:
        print(
            f"| {step} | {t_step * 1000:.0f} ms | {base} | {t_base * 1000:.0f} ms | {t_step / t_base:.2f}x |"
        )


if __name__ == "__main__":
    main()
