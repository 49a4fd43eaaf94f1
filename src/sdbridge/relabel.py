"""Prometheus relabeling, with Prometheus's semantics (``model/relabel/relabel.go``).

Regexes are RE2 (google-re2), fully anchored as ``^(?:regex)$``, so a regex means
exactly what it means in Prometheus. ``$1``, ``${1}``, ``$name`` and ``${name}`` expand
the way Go's ``Regexp.Expand`` does: an unknown group expands to nothing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

import re2
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .model import LabelSet, is_valid_label_name

DEFAULT_REGEX = "(.*)"
# Prometheus's relabelTarget: a label name, possibly built from $-references.
_TARGET_TEMPLATE_RE = re.compile(r"^(?:(?:[a-zA-Z_]|\$(?:\{\w+\}|\w+))+\w*)+$")
_EXPAND_RE = re.compile(r"\$(?:\{(\w+)\}|(\w+)|(\$))")


class Action(StrEnum):
    """Relabel actions, as Prometheus names them."""

    REPLACE = "replace"
    KEEP = "keep"
    DROP = "drop"
    KEEPEQUAL = "keepequal"
    DROPEQUAL = "dropequal"
    HASHMOD = "hashmod"
    LABELMAP = "labelmap"
    LABELDROP = "labeldrop"
    LABELKEEP = "labelkeep"
    LOWERCASE = "lowercase"
    UPPERCASE = "uppercase"


class RelabelConfig(BaseModel):
    """One ``relabel_configs`` entry, validated like Prometheus validates it."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    source_labels: list[str] = Field(default_factory=list)
    separator: str = ";"
    target_label: str = ""
    regex: str = DEFAULT_REGEX
    modulus: int = 0
    replacement: str = "$1"
    action: Action = Action.REPLACE

    @field_validator("action", mode="before")
    @classmethod
    def _lowercase_action(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("source_labels")
    @classmethod
    def _valid_sources(cls, value: list[str]) -> list[str]:
        for name in value:
            if not is_valid_label_name(name):
                raise ValueError(f"{name!r} is not a valid label name")
        return value

    @field_validator("regex")
    @classmethod
    def _valid_regex(cls, value: str) -> str:
        try:
            re2.compile(f"^(?:{value})$")
        except re2.error as exc:
            raise ValueError(f"invalid RE2 regex {value!r}: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RelabelConfig:
        action, target = self.action, self.target_label
        needs_target = {
            Action.REPLACE,
            Action.HASHMOD,
            Action.LOWERCASE,
            Action.UPPERCASE,
            Action.KEEPEQUAL,
            Action.DROPEQUAL,
        }
        if action is Action.HASHMOD and self.modulus == 0:
            raise ValueError("relabel configuration for hashmod requires non-zero modulus")
        if action in needs_target and not target:
            raise ValueError(f"relabel configuration for {action} action requires 'target_label'")
        if action in (Action.REPLACE, Action.HASHMOD) and not _TARGET_TEMPLATE_RE.match(target):
            raise ValueError(f"{target!r} is invalid 'target_label' for {action} action")
        exact_target = {Action.LOWERCASE, Action.UPPERCASE, Action.KEEPEQUAL, Action.DROPEQUAL}
        if action in exact_target and not is_valid_label_name(target):
            raise ValueError(f"{target!r} is invalid 'target_label' for {action} action")
        if action in (Action.KEEPEQUAL, Action.DROPEQUAL) and (
            self.regex != DEFAULT_REGEX or self.replacement != "$1" or self.modulus
        ):
            raise ValueError(f"{action} action requires only 'source_labels' and 'target_label'")
        if action is Action.LABELMAP and not _TARGET_TEMPLATE_RE.match(self.replacement):
            raise ValueError(f"{self.replacement!r} is invalid 'replacement' for labelmap action")
        if action in (Action.LABELDROP, Action.LABELKEEP) and (
            self.source_labels or target or self.modulus or self.replacement != "$1"
        ):
            raise ValueError(f"{action} action requires only 'regex', and no other fields")
        return self

    def compiled(self) -> re2._Regexp:
        """The fully anchored RE2 regex."""
        return re2.compile(f"^(?:{self.regex})$")


class Rule:
    """A relabel config ready to apply: the regex is compiled once."""

    __slots__ = ("config", "regex")

    def __init__(self, config: RelabelConfig) -> None:
        self.config = config
        self.regex = config.compiled()


def compile_rules(configs: Sequence[RelabelConfig]) -> list[Rule]:
    """Compile relabel configs for :func:`process`."""
    return [Rule(c) for c in configs]


def expand(template: str, match: Any, groupindex: dict[str, int]) -> str:
    """Expand ``$1``, ``${1}``, ``$name``, ``${name}`` and ``$$`` like Go's Regexp.Expand."""
    if "$" not in template:
        return template

    def substitute(ref: re.Match[str]) -> str:
        if ref.group(3):
            return "$"
        name = ref.group(1) or ref.group(2)
        if name.isdigit():
            index = int(name)
        elif name in groupindex:
            index = groupindex[name]
        else:
            return ""
        if index > len(match.groups()):
            return ""
        return match.group(index) or ""

    return _EXPAND_RE.sub(substitute, template)


def process(labels: LabelSet, rules: Sequence[Rule]) -> LabelSet | None:
    """Apply ``rules`` to a copy of ``labels``; ``None`` means the target is dropped."""
    result = dict(labels)
    for rule in rules:
        if not _apply(result, rule):
            return None
    return result


def _apply(labels: LabelSet, rule: Rule) -> bool:
    cfg = rule.config
    regex = rule.regex
    value = cfg.separator.join(labels.get(name, "") for name in cfg.source_labels)
    action = cfg.action
    if action is Action.REPLACE:
        match = regex.match(value)
        if match is None:
            return True
        target = expand(cfg.target_label, match, regex.groupindex)
        if not is_valid_label_name(target):
            return True
        replaced = expand(cfg.replacement, match, regex.groupindex)
        if replaced:
            labels[target] = replaced
        else:
            labels.pop(target, None)
    elif action is Action.KEEP:
        return regex.match(value) is not None
    elif action is Action.DROP:
        return regex.match(value) is None
    elif action is Action.KEEPEQUAL:
        return labels.get(cfg.target_label, "") == value
    elif action is Action.DROPEQUAL:
        return labels.get(cfg.target_label, "") != value
    elif action is Action.HASHMOD:
        digest = hashlib.md5(value.encode("utf-8"), usedforsecurity=False).digest()
        labels[cfg.target_label] = str(int.from_bytes(digest[8:], "big") % cfg.modulus)
    elif action is Action.LABELMAP:
        for name, label_value in list(labels.items()):
            match = regex.match(name)
            if match is not None:
                labels[expand(cfg.replacement, match, regex.groupindex)] = label_value
    elif action is Action.LABELDROP:
        for name in [n for n in labels if regex.match(n) is not None]:
            del labels[name]
    elif action is Action.LABELKEEP:
        for name in [n for n in labels if regex.match(n) is None]:
            del labels[name]
    elif action is Action.LOWERCASE:
        _set(labels, cfg.target_label, value.lower())
    elif action is Action.UPPERCASE:
        _set(labels, cfg.target_label, value.upper())
    return True


def _set(labels: LabelSet, name: str, value: str) -> None:
    # An empty value is the same as no label, as in Prometheus's label builder.
    if value:
        labels[name] = value
    else:
        labels.pop(name, None)
