"""sdbridge's relabeling against Prometheus's own: ``promtool check service-discovery``.

Targets go into a file_sd file, relabel configs into a scrape job, and promtool (Debian's
Prometheus 2.42) reports each target's discovered labels (the input of relabeling,
including the job/__scheme__/__metrics_path__/... defaults Prometheus adds first) and its
labels after relabeling (empty when dropped). sdbridge's ``relabel.process`` gets the
same discovered labels, so the defaults are accounted for exactly.

Prometheus post-processes relabeled labels (drops ``__meta_*``, fills in the port and
``instance``, and rejects some targets), which would hide differences. So every example
ends with the same sentinel rules on both sides: ``labelmap`` copies every label to
``rl_<name>``, the internal labels are then set to fixed valid values, and ``labelkeep``
keeps only those. The ``rl_`` labels are exactly the relabel result; ``labels == {}``
means "dropped".
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdbridge.relabel import RelabelConfig, compile_rules, go_lower, go_upper, process

from ..servers.common import require_binary
from ..servers.prometheus import promtool_service_discovery

pytestmark = pytest.mark.prometheus

COPY = "rl_"
SENTINEL: list[dict[str, Any]] = [
    {"action": "labelmap", "regex": "(.*)", "replacement": COPY + "${1}"},
    {"target_label": "__address__", "replacement": "127.0.0.1:9"},
    {"target_label": "__scheme__", "replacement": "http"},
    {"target_label": "__metrics_path__", "replacement": "/metrics"},
    {"target_label": "__scrape_interval__", "replacement": "1m"},
    {"target_label": "__scrape_timeout__", "replacement": "10s"},
    {"target_label": "instance", "replacement": "i"},
    {
        "action": "labelkeep",
        "regex": COPY + ".*|__address__|__scheme__|__metrics_path__|__scrape_.*__|instance",
    },
]

# Unicode 14.0 added these case pairs; Go 1.19 (Prometheus 2.42's) knows Unicode 13.0
# only, Python 3.11 knows 14.0. Newer Prometheus builds map them too.
UNICODE_14_CASED = frozenset(
    [
        0x2C2F,
        0x2C5F,
        0xA7C0,
        0xA7C1,
        0xA7D0,
        0xA7D1,
        0xA7D6,
        0xA7D7,
        0xA7D8,
        0xA7D9,
        *range(0x10570, 0x105BD),
    ]
)


def discovered(target: dict[str, str], sd_file: Path, job: str) -> dict[str, str]:
    """The labels Prometheus 2.42 relabels: the target's, plus its defaults where absent.

    promtool's own ``discoveredLabels`` cannot be used: in 2.42 relabeling reuses that
    slice's memory, so it often shows the relabeled labels instead.
    """
    labels = {k: v for k, v in target.items() if v != ""}
    labels["__meta_filepath"] = str(sd_file)
    defaults = {
        "job": job,
        "__scrape_interval__": "1m",
        "__scrape_timeout__": "10s",
        "__metrics_path__": "/metrics",
        "__scheme__": "http",
    }
    for name, value in defaults.items():
        labels.setdefault(name, value)
    return labels


def run_oracle(
    tmp_path: Path, targets: list[dict[str, str]], rules: list[dict[str, Any]], job: str = "j"
) -> list[dict[str, str] | None]:
    """Relabel ``targets`` (one group each) with ``rules`` in promtool and in sdbridge.

    Returns promtool's results (the ``rl_`` labels, None when dropped), sorted, after
    asserting that sdbridge's results are the same multiset.
    """
    sd_file = tmp_path / f"{job}.json"
    groups = [
        {
            "targets": [t["__address__"]],
            "labels": {k: v for k, v in t.items() if k != "__address__"},
        }
        for t in targets
    ]
    sd_file.write_text(json.dumps(groups))
    config = {
        "scrape_configs": [
            {
                "job_name": job,
                "scrape_interval": "1m",
                "file_sd_configs": [{"files": [str(sd_file)]}],
                "relabel_configs": rules + SENTINEL,
            }
        ]
    }
    results: list[dict[str, Any]] = []
    for timeout in (0.2, 3.0):  # file_sd answers at once; a loaded machine gets a retry
        results = promtool_service_discovery(config, job, tmp_path, timeout=timeout)
        if len(results) >= len(targets):
            break
    assert len(results) == len(targets), f"promtool reported {len(results)} of {len(targets)}"
    prometheus = [
        {k[len(COPY) :]: v for k, v in r["labels"].items() if k.startswith(COPY)}
        if r["labels"]
        else None
        for r in results
    ]
    compiled = compile_rules([RelabelConfig.model_validate(r) for r in rules])
    ours = [process(discovered(t, sd_file, job), compiled) for t in targets]
    assert _canonical(ours) == _canonical(prometheus), f"rules {rules!r}\ntargets {targets!r}"
    return sorted(prometheus, key=_key)


def _key(labels: dict[str, str] | None) -> str:
    return json.dumps(labels, sort_keys=True)


def _canonical(results: list[dict[str, str] | None]) -> list[str]:
    return sorted(map(_key, results))


# --- strategies ------------------------------------------------------------------------

NAMES = ["a", "b", "c", "l_a", "l_1", "__meta_x", "__meta_x_y", "__tmp", "job", "__address__"]
SOURCE_NAMES = [*NAMES, "missing", "__scheme__", "__metrics_path__", "instance"]
TARGET_NAMES = ["a", "b", "d", "l_a", "__meta_x", "__tmp", "job", "instance", "__address__"]
TARGET_TEMPLATES = [*TARGET_NAMES, "l_$1", "l_${1}x", "$1", "${n}", "$n", "x$2", "$01", "${0}"]
REGEXES = [
    "(.*)",
    "(.+)",
    ".*",
    "",
    "(a)?(.*)",
    "([a-z]+);(.*)",
    "(?P<n>.*)x",
    "(?i)A.*",
    "(?P<n>a)|(?P<n>b)",
    "(?s)(.*)",
    "(\\d+)",
    "x|(y)",
    "(.)(.)?.*",
    "[^;]*;(.*)",
    "\\Q$1\\E",
    "(?U)(.*)(.*)",
    "(?P<n>[^;]*);(?P<m>.*)",
    "(?i)(ß|\u03c3|ǅ)",
    "\\p{Greek}+",
    "(?P<01>.)(.*)",
]
NAME_REGEXES = ["__meta_(.*)", "(.*)", "l_(.)", "(a|b)", "__meta_x(.*)", "(?P<n>.*)_(.*)", "x"]
REPLACEMENTS = [
    "$1",
    "${1}",
    "$2",
    "$n",
    "${n}",
    "$01",
    "$1x",
    "x$$y",
    "",
    "lit",
    "$",
    "${1",
    "$0",
    "pre_${1}_post",
    "$\u0663",  # ARABIC-INDIC DIGIT THREE: a letter-or-digit to Go, not a group number
    "$\u00b2",  # SUPERSCRIPT TWO: not a name character to Go
    "$é",
    "${m}${n}",
]
NAME_REPLACEMENTS = ["$1", "m_$1", "${1}_x", "c", "$0", "${n}", "$2$1", "__meta_x"]
SEPARATORS = [";", "", ",", "-", "$1"]
MODULI = [1, 2, 3, 7, 1000, 2**32, 2**63, 2**64 - 1]
VALUE_CHARS = "aAbxyz19;-.:_ $\n\u00e9\u00df\u0130\u03a3\u03c3\u1fb3\u01c5\u0663\u00b2"

values = st.text(alphabet=VALUE_CHARS, max_size=8)
sources = st.lists(st.sampled_from(SOURCE_NAMES), max_size=3)


def _rule(action: str, **fields: Any) -> dict[str, Any]:
    return {"action": action, **{k: v for k, v in fields.items() if v is not None}}


def _optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


replace_rules = st.builds(
    lambda s, sep, r, t, rep: _rule(
        "replace", source_labels=s, separator=sep, regex=r, target_label=t, replacement=rep
    ),
    sources,
    _optional(st.sampled_from(SEPARATORS)),
    _optional(st.sampled_from(REGEXES)),
    st.sampled_from(TARGET_TEMPLATES),
    _optional(st.sampled_from(REPLACEMENTS)),
)
keep_drop_rules = st.builds(
    lambda a, s, sep, r: _rule(a, source_labels=s, separator=sep, regex=r),
    st.sampled_from(["keep", "drop"]),
    sources,
    _optional(st.sampled_from(SEPARATORS)),
    _optional(st.sampled_from(REGEXES)),
)
equal_rules = st.builds(
    lambda a, s, t: _rule(a, source_labels=s, target_label=t),
    st.sampled_from(["keepequal", "dropequal"]),
    sources,
    st.sampled_from(TARGET_NAMES),
)
hashmod_rules = st.builds(
    lambda s, sep, t, m: _rule(
        "hashmod", source_labels=s, separator=sep, target_label=t, modulus=m
    ),
    sources,
    _optional(st.sampled_from(SEPARATORS)),
    st.sampled_from(TARGET_NAMES),
    st.sampled_from(MODULI),
)
labelmap_rules = st.builds(
    lambda r, rep: _rule("labelmap", regex=r, replacement=rep),
    st.sampled_from(NAME_REGEXES),
    _optional(st.sampled_from(NAME_REPLACEMENTS)),
)
labeldrop_keep_rules = st.builds(
    lambda a, r: _rule(a, regex=r),
    st.sampled_from(["labeldrop", "labelkeep"]),
    st.sampled_from(["__meta_.*", "a|b", "l_.*", "job|__.*", "[a-c]", ".*_.*", "__tmp"]),
)
case_rules = st.builds(
    lambda a, s, sep, t: _rule(a, source_labels=s, separator=sep, target_label=t),
    st.sampled_from(["lowercase", "uppercase"]),
    sources,
    _optional(st.sampled_from(SEPARATORS)),
    st.sampled_from(TARGET_NAMES),
)
rules_strategy = st.lists(
    st.one_of(
        replace_rules,
        keep_drop_rules,
        equal_rules,
        hashmod_rules,
        labelmap_rules,
        labeldrop_keep_rules,
        case_rules,
    ),
    min_size=1,
    max_size=6,
)
target_strategy = st.builds(
    lambda labels, host: {**labels, "__address__": f"127.0.0.{host}:9100"},
    st.dictionaries(st.sampled_from([n for n in NAMES if n != "__address__"]), values, max_size=6),
    st.integers(1, 9),
)


# --- tests -----------------------------------------------------------------------------

# Each example runs promtool once (~0.3s) on up to 25 targets; raise it for a deep run.
ORACLE_EXAMPLES = int(os.environ.get("SDBRIDGE_ORACLE_EXAMPLES", "40"))


@settings(
    max_examples=ORACLE_EXAMPLES,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    targets=st.lists(target_strategy, min_size=1, max_size=25),
    rules=rules_strategy,
)
def test_generated_targets_and_rules_match_promtool(
    tmp_path: Path, targets: list[dict[str, str]], rules: list[dict[str, Any]]
) -> None:
    run_oracle(tmp_path, targets, rules)


# Hand-picked cases, all in one promtool run per rule list.
TABLE: list[tuple[str, list[dict[str, Any]]]] = [
    ("defaults copy a label", [{"source_labels": ["a"], "target_label": "b"}]),
    (
        "missing source sets nothing but empty",
        [{"source_labels": ["missing"], "target_label": "b"}],
    ),
    (
        "empty replacement deletes",
        [{"source_labels": ["a"], "target_label": "c", "replacement": ""}],
    ),
    (
        "templated target with empty result (2.42 deletes nothing)",
        [{"source_labels": ["a"], "target_label": "l_$1", "replacement": ""}],
    ),
    ("invalid target after expansion", [{"source_labels": ["a"], "target_label": "$1"}]),
    (
        "multi-source separator",
        [{"source_labels": ["a", "missing", "b"], "separator": "", "target_label": "d"}],
    ),
    ("keep anchored", [{"action": "keep", "source_labels": ["a"], "regex": "x"}]),
    ("drop empty", [{"action": "drop", "source_labels": ["missing"], "regex": ""}]),
    ("dot does not match newline", [{"source_labels": ["b"], "target_label": "d"}]),
    ("keepequal", [{"action": "keepequal", "source_labels": ["a"], "target_label": "b"}]),
    (
        "dropequal missing == empty",
        [{"action": "dropequal", "source_labels": ["missing"], "target_label": "nope"}],
    ),
    (
        "hashmod 1",
        [{"action": "hashmod", "source_labels": ["a"], "target_label": "h", "modulus": 1}],
    ),
    (
        "hashmod max",
        [
            {
                "action": "hashmod",
                "source_labels": ["a", "b"],
                "target_label": "h",
                "modulus": 2**64 - 1,
            }
        ],
    ),
    ("labelmap collision", [{"action": "labelmap", "regex": "(a|b)", "replacement": "c"}]),
    ("labelmap meta", [{"action": "labelmap", "regex": "__meta_(.*)"}]),
    ("labeldrop", [{"action": "labeldrop", "regex": "__meta_.*|a"}]),
    ("labelkeep", [{"action": "labelkeep", "regex": "__.*|b"}]),
    ("lowercase", [{"action": "lowercase", "source_labels": ["a", "b"], "target_label": "lo"}]),
    (
        "uppercase to empty deletes",
        [{"action": "uppercase", "source_labels": ["missing"], "target_label": "a"}],
    ),
    (
        "duplicate group names",
        [
            {
                "source_labels": ["a"],
                "regex": "(?P<n>x)|(?P<n>y.*)",
                "target_label": "d",
                "replacement": "${n}",
            }
        ],
    ),
    (
        "$01 is a name",
        [
            {
                "source_labels": ["a"],
                "regex": "(?P<01>.)(.*)",
                "target_label": "d",
                "replacement": "$01-$1-$2",
            }
        ],
    ),
]
TABLE_TARGETS = [
    {"__address__": "127.0.0.1:1", "a": "x", "b": "x", "__meta_x": "m"},
    {"__address__": "127.0.0.2:1", "a": "yes", "b": "line\nbreak", "c": "old", "l_yes": "keep?"},
    {"__address__": "127.0.0.3:1", "a": "ΣΑΣ ß İ ᾳ", "b": "Straße", "d": "d"},
    {"__address__": "127.0.0.4:1", "a": "1x", "__meta_x_y": "v", "__meta_": "empty-name"},
    {"__address__": "127.0.0.5:1"},
]


@pytest.mark.parametrize(("title", "rules"), TABLE, ids=[t for t, _ in TABLE])
def test_table_matches_promtool(tmp_path: Path, title: str, rules: list[dict[str, Any]]) -> None:
    run_oracle(tmp_path, TABLE_TARGETS, rules)


def test_case_mapping_of_every_cased_character_matches_promtool(tmp_path: Path) -> None:
    cased = [
        c
        for c in map(chr, range(0x110000))
        if not 0xD800 <= ord(c) < 0xE000
        and ord(c) not in UNICODE_14_CASED
        and (c.lower() != c or c.upper() != c or c.title() != c)
    ]
    chunks = ["".join(cased[i : i + 200]) for i in range(0, len(cased), 200)]
    targets = [{"__address__": f"127.0.0.1:{i + 1}", "v": chunk} for i, chunk in enumerate(chunks)]
    rules = [
        {"action": "lowercase", "source_labels": ["v"], "target_label": "lo"},
        {"action": "uppercase", "source_labels": ["v"], "target_label": "up"},
    ]
    results = run_oracle(tmp_path, targets, rules)
    for labels in results:
        assert labels is not None
        assert labels["lo"] == go_lower(labels["v"])
        assert labels["up"] == go_upper(labels["v"])


# Config validation: accepted or refused by both (promtool check config --syntax-only).
VALIDATION: list[dict[str, Any]] = [
    {"target_label": "b"},
    {"target_label": "x-y"},
    {"target_label": "1x"},
    {"target_label": "${1}x"},
    {"target_label": "$1-x"},
    {"target_label": "$é"},
    {"target_label": "${1"},
    {"action": "REPLACE", "target_label": "b"},
    {"action": "replace"},
    {"action": "keep"},
    {"action": "keep", "regex": None},
    {"action": "drop", "target_label": "x", "modulus": 3, "replacement": "z"},
    {"target_label": "b", "replacement": 1},
    {"source_labels": ["1"], "target_label": "b"},
    {"action": None, "target_label": "b"},
    {"action": "nope"},
    {"action": "hashmod", "source_labels": ["a"], "target_label": "b"},
    {"action": "hashmod", "source_labels": ["a"], "target_label": "x_$1", "modulus": 2},
    {"action": "hashmod", "source_labels": ["a"], "target_label": "b", "modulus": -1},
    {"action": "hashmod", "source_labels": ["a"], "target_label": "b", "modulus": 2**64 - 1},
    {"action": "keepequal", "source_labels": ["a"], "target_label": "b"},
    {"action": "keepequal", "source_labels": ["a"]},
    {"action": "keepequal", "source_labels": ["a"], "target_label": "b", "separator": ","},
    {"action": "keepequal", "source_labels": ["a"], "target_label": "b", "separator": ";"},
    {"action": "dropequal", "source_labels": ["a"], "target_label": "b", "regex": "(.*)"},
    {"action": "dropequal", "source_labels": ["a"], "target_label": "$1"},
    {"action": "dropequal", "source_labels": ["a"], "target_label": "x-y"},
    {"action": "lowercase", "source_labels": ["a"], "target_label": "${1}"},
    {"action": "keepequal", "source_labels": ["a"], "target_label": "b", "replacement": "x"},
    {"action": "lowercase", "source_labels": ["a"], "target_label": "b", "separator": ","},
    {"action": "lowercase", "source_labels": ["a"], "target_label": "b", "replacement": "x"},
    {"action": "lowercase", "source_labels": ["a"], "target_label": "b", "regex": "x"},
    {"action": "uppercase", "source_labels": ["a"], "target_label": "b-c"},
    {"action": "labeldrop", "regex": "x"},
    {"action": "labeldrop", "regex": "x", "separator": ","},
    {"action": "labeldrop", "regex": "x", "source_labels": []},
    {"action": "labeldrop", "regex": "x", "source_labels": None},
    {"action": "labelkeep", "regex": "x", "replacement": "y"},
    {"action": "labelmap", "regex": "x", "target_label": "y"},
    {"action": "labelmap", "replacement": "x-$1"},
    {"action": "labelmap", "replacement": ""},
    {"target_label": "b", "regex": "(?<n>a)"},
    {"target_label": "b", "regex": "(?P<é>a)"},
    {"target_label": "b", "regex": "\\C"},
    {"target_label": "b", "regex": "a**"},
    {"target_label": "b", "regex": "(?P<n>a)(?P<n>b)"},
    {"target_label": "b", "regex": "\\Q(?<\\E[(?<]"},
    {"target_label": "b", "regex": "(?x)a"},
    {"target_label": "b", "regex": "\\8"},
    {"target_label": "b", "regex": "a{1001}"},
    {"target_label": "b", "regex": "[[:foo:]]"},
    {"target_label": "b", "unknown": "x"},
]


def _promtool_accepts(tmp_path: Path, rule: dict[str, Any]) -> bool:
    config = {
        "scrape_configs": [
            {
                "job_name": "j",
                "static_configs": [{"targets": ["127.0.0.1:1"]}],
                "relabel_configs": [rule],
            }
        ]
    }
    path = tmp_path / "validate.yml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    result = subprocess.run(
        [require_binary("promtool"), "check", "config", "--syntax-only", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode == 0


@pytest.mark.parametrize("rule", VALIDATION, ids=[json.dumps(r) for r in VALIDATION])
def test_config_validation_matches_promtool(tmp_path: Path, rule: dict[str, Any]) -> None:
    try:
        RelabelConfig.model_validate(rule)
        ours = True
    except ValueError:
        ours = False
    assert ours == _promtool_accepts(tmp_path, rule)
