"""Duplicate YAML keys are refused, with the path and both lines, wherever sdbridge reads YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdbridge.config import load_config
from sdbridge.discovery.exec import parse_exec_output
from sdbridge.errors import ConfigError, InvalidTargetError
from sdbridge.web.webconfig import load_web_config
from sdbridge.yamlload import YAMLProblem, load_yaml

TWO_EXEC_KEYS = """\
jobs:
  - name: a
    exec_sd_configs: [{command: [./one.sh]}]
    output: {file: a.json}
    exec_sd_configs: [{command: [./two.sh]}]
"""


def test_the_config_refuses_a_duplicate_key_naming_path_and_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "sdbridge.yml"
    path.write_text(TWO_EXEC_KEYS)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [
        f"{path}: jobs[0]: key 'exec_sd_configs' appears twice (line 3 and line 5); keep one"
    ]


def test_the_web_config_refuses_a_duplicate_key(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("basic_auth_users:\n  alice: x\n  bob: y\n  alice: z\n")
    with pytest.raises(ConfigError) as info:
        load_web_config(path)
    assert str(info.value) == (
        f"{path}: basic_auth_users: key 'alice' appears twice (line 2 and line 4); keep one"
    )


def test_exec_yaml_output_refuses_a_duplicate_key() -> None:
    stdout = b"- targets: ['127.0.0.1:80']\n  labels: {env: a}\n  labels: {env: b}\n"
    with pytest.raises(InvalidTargetError) as info:
        parse_exec_output(stdout, origin="output of list.sh")
    assert str(info.value) == (
        "output of list.sh: [0]: key 'labels' appears twice (line 2 and line 3); keep one"
    )


def test_every_duplicate_is_reported_at_once() -> None:
    with pytest.raises(YAMLProblem) as info:
        load_yaml("a: 1\nb: {x: 1, x: 2}\na: 3\n")
    assert sorted(info.value.messages) == [
        "(top level): key 'a' appears twice (line 1 and line 3); keep one",
        "b: key 'x' appears twice (line 2 and line 2); keep one",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A merge key may be overridden: that is what merging is for.
        ("base: &b {x: 1}\nuse:\n  <<: *b\n  x: 2\n", {"base": {"x": 1}, "use": {"x": 2}}),
        # Equal-looking keys of different types are different keys.
        ("1: a\n'1': b\n", {1: "a", "1": "b"}),
        # A self-referencing alias does not loop.
        ("a: &a [*a]\n", None),
        ("", None),
    ],
)
def test_what_is_not_a_duplicate(text: str, expected: object) -> None:
    data = load_yaml(text)
    if expected is not None:
        assert data == expected
