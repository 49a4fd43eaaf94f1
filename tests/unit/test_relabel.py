# ruff: noqa: RUF001  (Greek letters are the point of the case-mapping cases)
"""relabel_configs: a table of cases for every action and edge case.

Expected values come from Prometheus 2.42 (``promtool check service-discovery``); the
e2e oracle test (tests/e2e/test_relabel_oracle.py) checks the same against promtool on
generated inputs.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from pydantic import ValidationError

from sdbridge.relabel import (
    Action,
    RelabelConfig,
    compile_regex,
    compile_rules,
    expand,
    go_lower,
    go_upper,
    process,
)

from .fakes import group, make_job, until

BASE = {"__address__": "127.0.0.1:9100", "a": "x", "b": "y", "__meta_k": "v"}

# (title, rules, input labels, expected labels or None for dropped)
CASES: list[tuple[str, list[dict[str, Any]], dict[str, str], dict[str, str] | None]] = [
    # replace and its defaults: separator ";", regex "(.*)", replacement "$1"
    (
        "replace copies with defaults",
        [{"source_labels": ["a"], "target_label": "c"}],
        BASE,
        {**BASE, "c": "x"},
    ),
    (
        "replace joins with ;",
        [{"source_labels": ["a", "b"], "target_label": "c"}],
        BASE,
        {**BASE, "c": "x;y"},
    ),
    (
        "missing source is empty",
        [{"source_labels": ["a", "nope", "b"], "target_label": "c"}],
        BASE,
        {**BASE, "c": "x;;y"},
    ),
    (
        "all sources missing deletes target",
        [{"source_labels": ["nope"], "target_label": "a"}],
        BASE,
        {k: v for k, v in BASE.items() if k != "a"},
    ),
    (
        "no sources, constant",
        [{"target_label": "c", "replacement": "const"}],
        BASE,
        {**BASE, "c": "const"},
    ),
    (
        "empty value counts as missing",
        [{"source_labels": ["e"], "target_label": "c", "regex": "(.+)"}],
        {**BASE, "e": ""},
        BASE,
    ),
    (
        "no match leaves all",
        [{"source_labels": ["a"], "regex": "z", "target_label": "a", "replacement": "q"}],
        BASE,
        BASE,
    ),
    (
        "regex is anchored",
        [{"source_labels": ["__address__"], "regex": "127", "target_label": "c"}],
        BASE,
        BASE,
    ),
    (
        "alternation is anchored as a whole",
        [{"source_labels": ["a", "b"], "regex": "x|y", "target_label": "c"}],
        BASE,
        BASE,
    ),
    (
        "groups",
        [
            {
                "source_labels": ["__address__"],
                "regex": "(.*):(\\d+)",
                "target_label": "port",
                "replacement": "$2",
            }
        ],
        BASE,
        {**BASE, "port": "9100"},
    ),
    (
        "${1}suffix",
        [{"source_labels": ["a"], "target_label": "c", "replacement": "${1}z"}],
        BASE,
        {**BASE, "c": "xz"},
    ),
    (
        "$1suffix is the group named 1suffix",
        [{"source_labels": ["a"], "target_label": "c", "replacement": "$1z-"}],
        BASE,
        {**BASE, "c": "-"},
    ),
    (
        "$$ is a dollar",
        [{"source_labels": ["a"], "target_label": "c", "replacement": "$$1"}],
        BASE,
        {**BASE, "c": "$1"},
    ),
    (
        "lone $ is kept",
        [{"source_labels": ["a"], "target_label": "c", "replacement": "a$"}],
        BASE,
        {**BASE, "c": "a$"},
    ),
    (
        "unclosed ${ is text",
        [{"source_labels": ["a"], "target_label": "c", "replacement": "${1"}],
        BASE,
        {**BASE, "c": "${1"},
    ),
    (
        "$0 is the whole match",
        [{"source_labels": ["a", "b"], "target_label": "c", "replacement": "<$0>"}],
        BASE,
        {**BASE, "c": "<x;y>"},
    ),
    (
        "$01 is a name, not group 1",
        [{"source_labels": ["a"], "target_label": "c", "replacement": "[$01]"}],
        BASE,
        {**BASE, "c": "[]"},
    ),
    (
        "unknown group is empty",
        [{"source_labels": ["a"], "target_label": "c", "replacement": "[$7]"}],
        BASE,
        {**BASE, "c": "[]"},
    ),
    (
        "named group",
        [
            {
                "source_labels": ["__address__"],
                "regex": "(?P<host>[^:]+):.*",
                "target_label": "h",
                "replacement": "${host}",
            }
        ],
        BASE,
        {**BASE, "h": "127.0.0.1"},
    ),
    (
        "duplicate names: first that matched",
        [
            {
                "source_labels": ["b"],
                "regex": "(?P<n>x)|(?P<n>y)",
                "target_label": "c",
                "replacement": "$n",
            }
        ],
        BASE,
        {**BASE, "c": "y"},
    ),
    (
        "templated target",
        [{"source_labels": ["a"], "target_label": "l_$1", "replacement": "v"}],
        BASE,
        {**BASE, "l_x": "v"},
    ),
    (
        "invalid target after expansion is skipped",
        [{"source_labels": ["__address__"], "regex": "(.*)", "target_label": "$1"}],
        BASE,
        BASE,
    ),
    (
        "templated target, empty result: 2.42 deletes the template's name",
        [{"source_labels": ["a"], "target_label": "l_$1", "replacement": ""}],
        {**BASE, "l_x": "old"},
        {**BASE, "l_x": "old"},
    ),
    (
        "unmatched group gives empty: delete",
        [{"source_labels": ["a"], "regex": "(z)?x", "target_label": "b"}],
        BASE,
        {k: v for k, v in BASE.items() if k != "b"},
    ),
    (
        "dot does not match newline",
        [{"source_labels": ["m"], "target_label": "c"}],
        {**BASE, "m": "a\nb"},
        {**BASE, "m": "a\nb"},
    ),
    (
        "(?s) matches newline",
        [{"source_labels": ["m"], "regex": "(?s)(.*)", "target_label": "c"}],
        {**BASE, "m": "a\nb"},
        {**BASE, "m": "a\nb", "c": "a\nb"},
    ),
    (
        "case-insensitive",
        [{"source_labels": ["a"], "regex": "(?i)X", "target_label": "c", "replacement": "hit"}],
        BASE,
        {**BASE, "c": "hit"},
    ),
    (
        "\\Q..\\E literal",
        [
            {
                "source_labels": ["d"],
                "regex": "\\Q$1.*\\E",
                "target_label": "c",
                "replacement": "hit",
            }
        ],
        {**BASE, "d": "$1.*"},
        {**BASE, "d": "$1.*", "c": "hit"},
    ),
    (
        "action is case-insensitive",
        [{"action": "Keep", "source_labels": ["a"], "regex": "x"}],
        BASE,
        BASE,
    ),
    # keep / drop
    ("keep match", [{"action": "keep", "source_labels": ["a"], "regex": "x"}], BASE, BASE),
    ("keep no match drops", [{"action": "keep", "source_labels": ["a"], "regex": "y"}], BASE, None),
    (
        "keep missing matches empty regex",
        [{"action": "keep", "source_labels": ["nope"], "regex": ""}],
        BASE,
        BASE,
    ),
    ("keep default regex keeps all", [{"action": "keep", "source_labels": ["nope"]}], BASE, BASE),
    ("drop match", [{"action": "drop", "source_labels": ["a", "b"], "regex": "x;y"}], BASE, None),
    ("drop no match", [{"action": "drop", "source_labels": ["a"], "regex": "x.+"}], BASE, BASE),
    ("drop with no sources and default regex drops everything", [{"action": "drop"}], BASE, None),
    # keepequal / dropequal
    (
        "keepequal equal",
        [{"action": "keepequal", "source_labels": ["a"], "target_label": "c"}],
        {**BASE, "c": "x"},
        {**BASE, "c": "x"},
    ),
    (
        "keepequal differ",
        [{"action": "keepequal", "source_labels": ["a"], "target_label": "b"}],
        BASE,
        None,
    ),
    (
        "keepequal missing == empty",
        [{"action": "keepequal", "source_labels": ["nope"], "target_label": "nada"}],
        BASE,
        BASE,
    ),
    (
        "dropequal equal",
        [{"action": "dropequal", "source_labels": ["a"], "target_label": "c"}],
        {**BASE, "c": "x"},
        None,
    ),
    (
        "dropequal joined",
        [{"action": "dropequal", "source_labels": ["a", "b"], "target_label": "c"}],
        {**BASE, "c": "x;y"},
        None,
    ),
    (
        "dropequal differ",
        [{"action": "dropequal", "source_labels": ["a"], "target_label": "b"}],
        BASE,
        BASE,
    ),
    # hashmod (values from promtool)
    (
        "hashmod 7",
        [{"action": "hashmod", "source_labels": ["a"], "target_label": "h", "modulus": 7}],
        {**BASE, "a": "a"},
        {**BASE, "a": "a", "h": "2"},
    ),
    (
        "hashmod 1000",
        [
            {
                "action": "hashmod",
                "source_labels": ["__address__"],
                "target_label": "h",
                "modulus": 1000,
            }
        ],
        BASE,
        {**BASE, "h": "150"},
    ),
    (
        "hashmod of empty",
        [{"action": "hashmod", "source_labels": ["nope"], "target_label": "h", "modulus": 1000}],
        BASE,
        {**BASE, "h": "958"},
    ),
    (
        "hashmod 1 is always 0",
        [{"action": "hashmod", "source_labels": ["a"], "target_label": "h", "modulus": 1}],
        BASE,
        {**BASE, "h": "0"},
    ),
    (
        "hashmod max uint64",
        [{"action": "hashmod", "source_labels": ["a"], "target_label": "h", "modulus": 2**64 - 1}],
        {**BASE, "a": "ΣΑΣ"},
        {**BASE, "a": "ΣΑΣ", "h": "17709460147074533479"},
    ),
    # labelmap
    ("labelmap meta", [{"action": "labelmap", "regex": "__meta_(.*)"}], BASE, {**BASE, "k": "v"}),
    (
        "labelmap prefix",
        [{"action": "labelmap", "regex": "(a|b)", "replacement": "p_$1"}],
        BASE,
        {**BASE, "p_a": "x", "p_b": "y"},
    ),
    (
        "labelmap collision: the later name wins",
        [{"action": "labelmap", "regex": "(a|b)", "replacement": "c"}],
        {"__address__": "h:1", "b": "B", "a": "A"},
        {"__address__": "h:1", "a": "A", "b": "B", "c": "B"},
    ),
    (
        "labelmap overwrites existing",
        [{"action": "labelmap", "regex": "__meta_(.*)", "replacement": "a"}],
        BASE,
        {**BASE, "a": "v"},
    ),
    # labeldrop / labelkeep
    (
        "labeldrop",
        [{"action": "labeldrop", "regex": "__meta_.*|b"}],
        BASE,
        {"__address__": "127.0.0.1:9100", "a": "x"},
    ),
    ("labeldrop anchored", [{"action": "labeldrop", "regex": "_"}], BASE, BASE),
    (
        "labelkeep",
        [{"action": "labelkeep", "regex": "__address__|a"}],
        BASE,
        {"__address__": "127.0.0.1:9100", "a": "x"},
    ),
    ("labelkeep can drop the address", [{"action": "labelkeep", "regex": "a"}], BASE, {"a": "x"}),
    # lowercase / uppercase: per character, simple mapping, like Go
    (
        "lowercase",
        [{"action": "lowercase", "source_labels": ["u"], "target_label": "u"}],
        {**BASE, "u": "AbC;Σ"},
        {**BASE, "u": "abc;σ"},
    ),
    (
        "lowercase has no final sigma",
        [{"action": "lowercase", "source_labels": ["u"], "target_label": "l"}],
        {**BASE, "u": "ΑΣ"},
        {**BASE, "u": "ΑΣ", "l": "ασ"},
    ),
    (
        "lowercase İ is i",
        [{"action": "lowercase", "source_labels": ["u"], "target_label": "l"}],
        {**BASE, "u": "İ"},
        {**BASE, "u": "İ", "l": "i"},
    ),
    (
        "uppercase ß stays",
        [{"action": "uppercase", "source_labels": ["u"], "target_label": "l"}],
        {**BASE, "u": "straße"},
        {**BASE, "u": "straße", "l": "STRAßE"},
    ),
    (
        "uppercase ᾳ is ᾼ",
        [{"action": "uppercase", "source_labels": ["u"], "target_label": "l"}],
        {**BASE, "u": "ᾳ"},
        {**BASE, "u": "ᾳ", "l": "ᾼ"},
    ),
    (
        "uppercase of missing deletes",
        [{"action": "uppercase", "source_labels": ["nope"], "target_label": "a"}],
        BASE,
        {k: v for k, v in BASE.items() if k != "a"},
    ),
    # chains
    (
        "rules see earlier results",
        [
            {"source_labels": ["a"], "target_label": "c"},
            {"action": "keep", "source_labels": ["c"], "regex": "x"},
        ],
        BASE,
        {**BASE, "c": "x"},
    ),
    (
        "drop stops the chain",
        [
            {"action": "drop", "source_labels": ["a"], "regex": "x"},
            {"target_label": "c", "replacement": "never"},
        ],
        BASE,
        None,
    ),
]


@pytest.mark.parametrize(("title", "rules", "labels", "expected"), CASES, ids=[c[0] for c in CASES])
def test_relabel_table(
    title: str, rules: list[dict[str, Any]], labels: dict[str, str], expected: dict[str, str] | None
) -> None:
    compiled = compile_rules([RelabelConfig.model_validate(r) for r in rules])
    before = dict(labels)
    assert process(labels, compiled) == expected
    assert labels == before, "process must not modify its input"


def test_defaults() -> None:
    config = RelabelConfig.model_validate({"target_label": "x"})
    assert config.separator == ";"
    assert config.regex == "(.*)"
    assert config.replacement == "$1"
    assert config.action is Action.REPLACE
    assert config.modulus == 0


# (config, message fragment): refused like Prometheus 2.42 refuses them.
INVALID: list[tuple[dict[str, Any], str]] = [
    ({"action": "replace"}, "requires 'target_label'"),
    ({"target_label": "x-y"}, "invalid 'target_label'"),
    ({"target_label": "$1-x"}, "invalid 'target_label'"),
    ({"action": "hashmod", "target_label": "h"}, "non-zero modulus"),
    ({"action": "hashmod", "target_label": "h_$1", "modulus": 2}, "invalid 'target_label'"),
    ({"action": "hashmod", "target_label": "h", "modulus": -1}, "modulus"),
    ({"action": "hashmod", "target_label": "h", "modulus": 2**64}, "modulus"),
    ({"action": "keepequal", "source_labels": ["a"]}, "requires 'target_label'"),
    (
        {"action": "keepequal", "source_labels": ["a"], "target_label": "b", "regex": "(.*)"},
        "only 'source_labels'",
    ),
    (
        {"action": "dropequal", "source_labels": ["a"], "target_label": "b", "separator": ","},
        "only 'source_labels'",
    ),
    (
        {"action": "lowercase", "source_labels": ["a"], "target_label": "b", "replacement": "x"},
        "'replacement' can not be set",
    ),
    ({"action": "labeldrop", "regex": "x", "source_labels": []}, "only 'regex'"),
    ({"action": "labelkeep", "regex": "x", "target_label": "y"}, "only 'regex'"),
    ({"action": "labelmap", "replacement": "x-$1"}, "invalid 'replacement'"),
    ({"action": "bogus"}, "action"),
    ({"action": None, "target_label": "b"}, "cannot be empty"),
    ({"source_labels": ["1a"], "target_label": "b"}, "not a valid label name"),
    ({"target_label": "b", "regex": "(unclosed"}, "invalid regex '(unclosed'"),
    ({"target_label": "b", "regex": "(?<n>a)"}, "(?P<name>"),
    ({"target_label": "b", "regex": "\\C"}, "\\C"),
    ({"target_label": "b", "regex": "(?P<é>a)"}, "invalid named capture"),
    ({"target_label": "b", "regex": "(a)\\1"}, "invalid regex"),
    ({"target_label": "b", "nope": 1}, "Extra inputs"),
]


@pytest.mark.parametrize(("config", "fragment"), INVALID, ids=[str(c) for c, _ in INVALID])
def test_invalid_configs_are_refused(config: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        RelabelConfig.model_validate(config)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "config",
    [
        {"action": "keep", "regex": None},  # Go: null regex is "" (matches only empty)
        {"action": "labeldrop", "regex": "x", "source_labels": None},
        {"target_label": "b", "replacement": 1},
        {"action": "dropequal", "source_labels": ["a"], "target_label": "$1"},  # 2.42 allows
        {"target_label": "b", "regex": "(?P<n>a)|(?P<n>b)"},
        {"target_label": "b", "regex": "\\Q(?<\\E[(?<]\\(?<"},
        {"action": "hashmod", "target_label": "h", "modulus": 2**64 - 1},
    ],
    ids=str,
)
def test_accepted_like_prometheus(config: dict[str, Any]) -> None:
    RelabelConfig.model_validate(config)


def test_null_regex_matches_only_empty() -> None:
    rules = compile_rules([RelabelConfig.model_validate({"action": "keep", "regex": None})])
    assert process({"__address__": "h:1"}, rules) is not None
    rules = compile_rules(
        [RelabelConfig.model_validate({"action": "keep", "source_labels": ["a"], "regex": None})]
    )
    assert process({"__address__": "h:1", "a": "x"}, rules) is None


EXPAND_CASES = [
    ("$1", "x"),
    ("${1}", "x"),
    ("$2", "yz"),
    ("${2}w", "yzw"),
    ("$2w", ""),
    ("$name", "yz"),
    ("${name}!", "yz!"),
    ("$$", "$"),
    ("$$$1", "$x"),
    ("$", "$"),
    ("$-", "$-"),
    ("${", "${"),
    ("${}", "${}"),
    ("${1", "${1"),
    ("$3", ""),
    ("$100000000", ""),
    ("$1234567890", ""),
    ("$01", ""),
    ("$\u0663", ""),  # a digit to Go, but not an ASCII one: a (missing) name
    ("$\u00b2", "$\u00b2"),  # not a letter or Nd digit: malformed, the $ stays
    ("$é", ""),
    ("a$1b", "a"),
    ("a${1}b", "axb"),
]


@pytest.mark.parametrize(("template", "expected"), EXPAND_CASES)
def test_expand_like_go(template: str, expected: str) -> None:
    regex = compile_regex("(x);(?P<name>.*)")
    match = regex.match("x;yz")
    assert expand(template, match, regex.group_names) == expected


def test_case_mapping_is_per_character() -> None:
    assert go_lower("ΣΑΣ") == "σασ"
    assert go_upper("ﬁ") == "ﬁ"
    assert go_upper("ǆ") == "Ǆ"
    assert go_lower("ǅ") == "ǆ"
    assert go_upper("ascii Mixed") == "ASCII MIXED"


@settings(max_examples=300)
@given(
    labels=st.dictionaries(
        st.sampled_from(["__address__", "a", "b", "__meta_x", "c"]), st.text(max_size=6), max_size=5
    ),
    template=st.text(alphabet="$1{}an_e0x\u0663\u00b2", max_size=8),
)
def test_process_never_raises(labels: dict[str, str], template: str) -> None:
    """Arbitrary values and replacement templates: no exception, no mutation of input."""
    rules = compile_rules(
        [
            RelabelConfig.model_validate(
                {
                    "source_labels": ["a", "b"],
                    "regex": "(.*);(?P<n>.*)",
                    "target_label": "c",
                    "replacement": template,
                }
            ),
            RelabelConfig.model_validate(
                {"action": "lowercase", "source_labels": ["a"], "target_label": "d"}
            ),
            RelabelConfig.model_validate(
                {"action": "uppercase", "source_labels": ["b"], "target_label": "e"}
            ),
            RelabelConfig.model_validate({"action": "labelmap", "regex": "__meta_(.*)"}),
        ]
    )
    before = dict(labels)
    result = process(labels, rules)
    assert labels == before
    assert result is not None
    assert all(v != "" for v in result.values())


async def test_relabeling_runs_in_the_job_before_outputs() -> None:
    """Dropped targets never reach an output; invalid results are skipped and counted."""
    name = "relabel-job"
    rules = [
        {"action": "drop", "source_labels": ["env"], "regex": "dev"},
        {"action": "labelmap", "regex": "__meta_(.*)"},
        {"action": "labeldrop", "regex": "__meta_.*"},
        # Breaks __address__ of the "broken" target: skipped as invalid, not published.
        {
            "source_labels": ["role"],
            "regex": "broken",
            "target_label": "__address__",
            "replacement": "no-port",
        },
    ]
    job, (fake,), out = make_job(name=name, relabel_configs=rules)
    labels = {"job": name, "mechanism": "exec"}
    invalid_before = REGISTRY.get_sample_value("sdbridge_invalid_targets_total", labels) or 0.0
    task = asyncio.create_task(job.run())
    try:
        await fake.send(
            [
                group("a", {"__address__": "127.0.0.1:1", "env": "prod", "__meta_zone": "z1"}),
                group("b", {"__address__": "127.0.0.1:2", "env": "dev"}),
                group("c", {"__address__": "127.0.0.1:3", "role": "broken"}),
            ]
        )
        await until(lambda: job.snapshot is not None)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert job.snapshot is not None
    assert job.snapshot.targets() == [{"__address__": "127.0.0.1:1", "env": "prod", "zone": "z1"}]
    assert [s.target_count for s in out.snapshots] == [1]
    invalid_after = REGISTRY.get_sample_value("sdbridge_invalid_targets_total", labels) or 0.0
    assert invalid_after == invalid_before + 1


@settings(max_examples=300)
@given(
    pattern=st.sampled_from(
        ["(.*)", "(a)?(.*)", "(?P<n>[^;]*);(.*)", "(?i)(ß|σ)+", "(.)(.)?.*", ""]
    ),
    text=st.text(alphabet="aAß;σΣ\n\u0130x", max_size=8),
)
def test_fast_match_agrees_with_the_wrapper(pattern: str, text: str) -> None:
    """The match through the RE2 object gives what google-re2's public API gives."""
    regex = compile_regex(pattern)
    fast = regex.match(text)
    slow = regex.regex.match(text)
    assert (fast is None) == (slow is None)
    if fast is not None:
        for index in range(len(regex.group_names) + 1):
            assert fast.group(index) == slow.group(index)


def test_rule_cache_is_bounded_and_stays_correct() -> None:
    from sdbridge import relabel

    rule = compile_rules(
        [RelabelConfig.model_validate({"action": "keep", "source_labels": ["a"], "regex": "x.*"})]
    )
    for i in range(relabel._CACHE_MAX + 10):
        value = f"x{i}" if i % 2 else f"y{i}"
        assert (process({"a": value}, rule) is not None) is value.startswith("x")
    assert len(rule[0].cache) <= relabel._CACHE_MAX
