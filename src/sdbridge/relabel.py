"""Prometheus relabeling, with Prometheus 2.42's semantics (``model/relabel/relabel.go``).

Regexes are RE2 (google-re2), fully anchored as ``^(?:regex)$``, and restricted to what
Go's ``regexp`` (Go 1.19, which Prometheus 2.42 is built with) accepts, so a regex means
exactly what it means in Prometheus. ``$1``, ``${1}``, ``$name`` and ``${name}`` expand
the way Go's ``Regexp.Expand`` does. ``lowercase``/``uppercase`` map one character at a
time like Go's ``strings.ToLower``/``ToUpper`` (simple case mapping, no context).
Version nuances are listed in docs/relabeling.md; the oracle test in
tests/e2e/test_relabel_oracle.py compares this module with ``promtool``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from enum import StrEnum
from functools import lru_cache
from typing import Any

import re2
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .model import LabelSet, is_valid_label_name

DEFAULT_SEPARATOR = ";"
DEFAULT_REGEX = "(.*)"
DEFAULT_REPLACEMENT = "$1"
MAX_MODULUS = 2**64 - 1  # Prometheus's modulus is a uint64

# Prometheus's relabelTarget: a label name, possibly built from $-references. Go's \w is
# ASCII-only, hence re.ASCII.
_TARGET_TEMPLATE_RE = re.compile(r"(?:(?:[a-zA-Z_]|\$(?:\{\w+\}|\w+))+\w*)+", re.ASCII)
_GO_CAPTURE_NAME_RE = re.compile(r"[A-Za-z0-9_]+", re.ASCII)

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # errors are raised to the caller, not printed to stderr
_anchor = getattr(re2, "_Anchor", None)
_ANCHOR_BOTH = getattr(_anchor, "ANCHOR_BOTH", None)  # None: use the public API only
_CACHE_MAX = 4096
_MISSING = object()


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


_NEEDS_TARGET = frozenset(
    {
        Action.REPLACE,
        Action.HASHMOD,
        Action.LOWERCASE,
        Action.UPPERCASE,
        Action.KEEPEQUAL,
        Action.DROPEQUAL,
    }
)
_EXACT_TARGET = frozenset({Action.LOWERCASE, Action.UPPERCASE, Action.KEEPEQUAL, Action.DROPEQUAL})


class GoRegex:
    """A fully anchored RE2 regex plus the capture group names Go's Expand looks up.

    RE2's ``groupindex`` keeps one index per name, but Go allows a name twice and
    expands ``$name`` to the first group of that name that took part in the match.
    """

    __slots__ = ("_raw", "group_names", "pattern", "regex")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        names = _go_capture_names(pattern)
        try:
            self.regex = re2.compile(f"^(?:{pattern})$", _RE2_OPTIONS)
        except re2.error as exc:
            raise ValueError(f"invalid regex {pattern!r}: {_re2_message(exc)}") from None
        if len(names) != self.regex.groups:  # our scan disagrees with RE2: trust RE2
            names = [""] * self.regex.groups
            for name, index in self.regex.groupindex.items():
                names[index - 1] = name
        self.group_names: tuple[str, ...] = tuple(names)
        # The wrapper's match() costs several microseconds in Python code (offset maps
        # for str); the RE2 object under it matches UTF-8 bytes directly.
        self._raw = getattr(self.regex, "_regexp", None) if _ANCHOR_BOTH is not None else None

    def match(self, text: str) -> Any:
        """The match of the whole of ``text`` (with ``group(i)``), or None."""
        raw = self._raw
        if raw is None:
            return self.regex.match(text)
        data = text.encode("utf-8")
        spans = raw.Match(_ANCHOR_BOTH, data, 0, len(data))
        if spans[0][0] < 0:
            return None
        return _BytesMatch(data, spans)


class _BytesMatch:
    """A match over UTF-8 bytes; RE2 spans always fall on character boundaries."""

    __slots__ = ("_data", "_spans")

    def __init__(self, data: bytes, spans: Sequence[tuple[int, int]]) -> None:
        self._data = data
        self._spans = spans

    def group(self, index: int = 0) -> str | None:
        start, end = self._spans[index]
        if start < 0:
            return None
        return self._data[start:end].decode("utf-8")


def _re2_message(exc: Exception) -> str:
    message = exc.args[0] if exc.args else exc
    return message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)


def _go_capture_names(pattern: str) -> list[str]:
    """Each capture group's name ("" if unnamed), in order; reject what Go 1.19 rejects.

    RE2 (C++) accepts a few things Go's regexp does not: ``(?<name>``, ``\\C`` and
    non-ASCII group names. Prometheus 2.42 refuses those configs, and so do we.
    """
    names: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\":
            following = pattern[i + 1 : i + 2]
            if following == "Q":  # \Q...\E is literal text
                end = pattern.find("\\E", i + 2)
                i = n if end < 0 else end + 2
                continue
            if following == "C":
                raise ValueError(f"invalid regex {pattern!r}: invalid escape sequence: \\C")
            i += 2
        elif char == "[":
            i = _skip_class(pattern, i)
        elif char == "(":
            if pattern.startswith("(?P<", i):
                end = pattern.find(">", i + 4)
                name = pattern[i + 4 : end] if end >= 0 else ""
                if end >= 0 and not _GO_CAPTURE_NAME_RE.fullmatch(name):
                    raise ValueError(
                        f"invalid regex {pattern!r}: invalid named capture: (?P<{name}>"
                    )
                names.append(name)
            elif pattern.startswith("(?<", i) and not pattern.startswith(("(?<=", "(?<!"), i):
                raise ValueError(
                    f"invalid regex {pattern!r}: (?<name> is not supported by Prometheus 2.42 "
                    "(Go 1.19); write (?P<name>...)"
                )
            elif not pattern.startswith("(?", i):
                names.append("")
            i += 1
        else:
            i += 1
    return names


def _skip_class(pattern: str, start: int) -> int:
    """The index just after the character class that starts at ``start``."""
    i, n = start + 1, len(pattern)
    if pattern.startswith("^", i):
        i += 1
    if pattern.startswith("]", i):  # a leading "]" is a literal
        i += 1
    while i < n and pattern[i] != "]":
        if pattern[i] == "\\":
            i += 2
        elif pattern.startswith("[:", i):
            end = pattern.find(":]", i + 2)
            i = end + 2 if end >= 0 else i + 1
        else:
            i += 1
    return i + 1


@lru_cache(maxsize=1024)
def compile_regex(pattern: str) -> GoRegex:
    """Compile (and cache) an anchored regex; raise ValueError naming the pattern."""
    return GoRegex(pattern)


def _string_scalar(value: Any) -> Any:
    # Go's YAML decoder gives a string field the scalar's text (replacement: 1 is "1") and
    # the zero value for null.
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


class RelabelConfig(BaseModel):
    """One ``relabel_configs`` entry, validated like Prometheus 2.42 validates it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source_labels: list[str] = Field(default_factory=list)
    separator: str = DEFAULT_SEPARATOR
    target_label: str = ""
    regex: str = DEFAULT_REGEX
    modulus: int = Field(0, ge=0, le=MAX_MODULUS)
    replacement: str = DEFAULT_REPLACEMENT
    action: Action = Action.REPLACE

    @model_validator(mode="before")
    @classmethod
    def _null_sources(cls, data: Any) -> Any:
        # source_labels: null is Go's nil slice, i.e. not given; [] is given (and empty).
        if isinstance(data, dict) and "source_labels" in data and data["source_labels"] is None:
            data = {k: v for k, v in data.items() if k != "source_labels"}
        return data

    @field_validator("action", mode="before")
    @classmethod
    def _lowercase_action(cls, value: Any) -> Any:
        if value is None or value == "":
            raise ValueError("relabel action cannot be empty")
        return value.lower() if isinstance(value, str) else value

    @field_validator("separator", "target_label", "regex", "replacement", mode="before")
    @classmethod
    def _scalar(cls, value: Any) -> Any:
        return _string_scalar(value)

    @field_validator("modulus", mode="before")
    @classmethod
    def _null_modulus(cls, value: Any) -> Any:
        if isinstance(value, bool | str):
            raise ValueError("modulus must be an unsigned integer")
        return 0 if value is None else value

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
        compile_regex(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RelabelConfig:
        action, target = self.action, self.target_label
        given = self.model_fields_set
        if action is Action.HASHMOD and self.modulus == 0:
            raise ValueError("relabel configuration for hashmod requires non-zero modulus")
        if action in _NEEDS_TARGET and not target:
            raise ValueError(
                f"relabel configuration for {action} action requires 'target_label' value"
            )
        if action is Action.REPLACE and not _TARGET_TEMPLATE_RE.fullmatch(target):
            raise ValueError(f"{target!r} is invalid 'target_label' for {action} action")
        # 2.42 checks these against the template pattern too, so "$1" passes (and then
        # names a label "$1"); 2.49+ requires a plain label name.
        if action in _EXACT_TARGET and not _TARGET_TEMPLATE_RE.fullmatch(target):
            raise ValueError(f"{target!r} is invalid 'target_label' for {action} action")
        if action in _EXACT_TARGET and self.replacement != DEFAULT_REPLACEMENT:
            raise ValueError(f"'replacement' can not be set for {action} action")
        if action is Action.LABELMAP and not _TARGET_TEMPLATE_RE.fullmatch(self.replacement):
            raise ValueError(f"{self.replacement!r} is invalid 'replacement' for {action} action")
        if action is Action.HASHMOD and not is_valid_label_name(target):
            raise ValueError(f"{target!r} is invalid 'target_label' for {action} action")
        # Prometheus compares the regex by identity with its default: any regex given,
        # even "(.*)", is refused for keepequal/dropequal.
        if action in (Action.KEEPEQUAL, Action.DROPEQUAL) and (
            "regex" in given
            or self.modulus != 0
            or self.separator != DEFAULT_SEPARATOR
            or self.replacement != DEFAULT_REPLACEMENT
        ):
            raise ValueError(
                f"{action} action requires only 'source_labels' and `target_label`, "
                "and no other fields"
            )
        # An explicit source_labels list, even an empty one, is "set" in Go's YAML.
        if action in (Action.LABELDROP, Action.LABELKEEP) and (
            "source_labels" in given
            or target
            or self.modulus != 0
            or self.separator != DEFAULT_SEPARATOR
            or self.replacement != DEFAULT_REPLACEMENT
        ):
            raise ValueError(f"{action} action requires only 'regex', and no other fields")
        return self

    def compiled(self) -> GoRegex:
        """The fully anchored regex."""
        return compile_regex(self.regex)


class Rule:
    """A relabel config ready to apply: the regex is compiled once.

    Each rule remembers what it did with recent inputs: label names (labelmap,
    labeldrop, labelkeep) and many values (tags, datacenters) repeat across thousands
    of targets, and a dict lookup is much cheaper than a regex match.
    """

    __slots__ = ("cache", "config", "regex")

    def __init__(self, config: RelabelConfig) -> None:
        self.config = config
        self.regex = config.compiled()
        self.cache: dict[str, Any] = {}

    def remember(self, key: str, result: Any) -> Any:
        """Store ``result`` for ``key`` (the cache is emptied when it grows too big)."""
        if len(self.cache) >= _CACHE_MAX:
            self.cache.clear()
        self.cache[key] = result
        return result


def compile_rules(configs: Sequence[RelabelConfig]) -> list[Rule]:
    """Compile relabel configs for :func:`process`."""
    return [Rule(c) for c in configs]


def _is_name_char(char: str) -> bool:
    # Go's extract(): unicode.IsLetter, unicode.IsDigit (category Nd only) or "_".
    if char.isascii():
        return char.isalnum() or char == "_"
    category = unicodedata.category(char)
    return category[0] == "L" or category == "Nd"


def _group_number(name: str) -> int:
    """Go's rule: ASCII digits, no leading zero, below 1e8 while parsing; else -1 (a name)."""
    number = 0
    for char in name:
        if not ("0" <= char <= "9") or number >= 100_000_000:
            return -1
        number = number * 10 + ord(char) - 48
    if name[0] == "0" and len(name) > 1:
        return -1
    return number


def expand(template: str, match: Any, group_names: Sequence[str]) -> str:
    """Expand ``template`` against ``match`` exactly like Go's ``Regexp.ExpandString``.

    ``$$`` is a literal ``$``; ``$name`` takes the longest run of letters, digits and
    underscores (so ``$1x`` is the group named ``1x``, and expands to nothing); a
    malformed reference leaves the ``$`` as text; unknown or unmatched groups are empty.
    """
    if "$" not in template:
        return template
    out: list[str] = []
    i, n = 0, len(template)
    while i < n:
        dollar = template.find("$", i)
        if dollar < 0:
            break
        out.append(template[i:dollar])
        i = dollar + 1
        if i < n and template[i] == "$":
            out.append("$")
            i += 1
            continue
        brace = i < n and template[i] == "{"
        start = i + 1 if brace else i
        end = start
        while end < n and _is_name_char(template[end]):
            end += 1
        if end == start or (brace and (end >= n or template[end] != "}")):
            out.append("$")  # malformed: the $ is plain text
            continue
        name = template[start:end]
        i = end + 1 if brace else end
        out.append(_group_value(match, group_names, name))
    out.append(template[i:])
    return "".join(out)


def _group_value(match: Any, group_names: Sequence[str], name: str) -> str:
    number = _group_number(name)
    if number >= 0:
        if number <= len(group_names):
            return match.group(number) or ""
        return ""
    for index, group_name in enumerate(group_names, start=1):
        if group_name == name:
            value = match.group(index)
            if value is not None:
                return str(value)
    return ""


_LOWER_EXCEPTIONS = {"\u0130": "i"}  # İ: the only character whose full lowercase is longer


def _go_lower_char(char: str) -> str:
    lowered = char.lower()
    return lowered if len(lowered) == 1 else _LOWER_EXCEPTIONS.get(char, char)


def _go_upper_char(char: str) -> str:
    upper = char.upper()
    if len(upper) == 1:
        return upper
    # Full uppercase is several characters (ß → SS): Go keeps to the simple mapping,
    # which is the one-character titlecase where there is one (ᾳ → ᾼ), else the char.
    title = char.title()
    return title if len(title) == 1 else char


def go_lower(text: str) -> str:
    """``strings.ToLower``: per-character simple lowercase (no final-sigma rule)."""
    if text.isascii():
        return text.lower()
    return "".join(_go_lower_char(c) for c in text)


def go_upper(text: str) -> str:
    """``strings.ToUpper``: per-character simple uppercase (ß stays ß)."""
    if text.isascii():
        return text.upper()
    return "".join(_go_upper_char(c) for c in text)


def process(labels: LabelSet, rules: Sequence[Rule]) -> LabelSet | None:
    """Apply ``rules`` to a copy of ``labels``; ``None`` means the target is dropped.

    Empty values are the same as absent labels, as in Prometheus's label builder.
    """
    result = {name: value for name, value in labels.items() if value != ""}
    for rule in rules:
        if not _apply(result, rule):
            return None
    return result


def _apply(labels: LabelSet, rule: Rule) -> bool:
    cfg = rule.config
    action = cfg.action
    if cfg.source_labels:
        value = cfg.separator.join(labels.get(name, "") for name in cfg.source_labels)
    else:
        value = ""
    cache = rule.cache
    if action is Action.REPLACE:
        # get() with a sentinel, not "in" then []: a render thread may clear the cache.
        outcome = cache.get(value, _MISSING)
        if outcome is _MISSING:
            outcome = rule.remember(value, _replace(rule, value))
        if outcome is not None:
            target, replaced = outcome
            if replaced:
                labels[target] = replaced
            else:
                # Prometheus 2.42 deletes the label named by the template itself, so a
                # templated target_label ("l_$1") deletes nothing; 2.49+ deletes the
                # expansion.
                labels.pop(cfg.target_label, None)
    elif action is Action.KEEP or action is Action.DROP:
        matched = cache.get(value)
        if matched is None:
            matched = rule.remember(value, rule.regex.match(value) is not None)
        return bool(matched) is (action is Action.KEEP)
    elif action is Action.KEEPEQUAL:
        return labels.get(cfg.target_label, "") == value
    elif action is Action.DROPEQUAL:
        return labels.get(cfg.target_label, "") != value
    elif action is Action.HASHMOD:
        digest = hashlib.md5(value.encode("utf-8"), usedforsecurity=False).digest()
        labels[cfg.target_label] = str(int.from_bytes(digest[8:], "big") % cfg.modulus)
    elif action is Action.LABELMAP:
        # Go walks the labels as they were before this rule, sorted by name; a later
        # name mapping onto the same target wins.
        for name, label_value in sorted(labels.items()):
            mapped = cache.get(name, _MISSING)
            if mapped is _MISSING:
                mapped = rule.remember(name, _map_name(rule, name))
            if mapped is not None:
                labels[mapped] = label_value
    elif action is Action.LABELDROP or action is Action.LABELKEEP:
        keep = action is Action.LABELKEEP
        for name in list(labels):
            matched = cache.get(name)
            if matched is None:
                matched = rule.remember(name, rule.regex.match(name) is not None)
            if matched is not keep:
                del labels[name]
    elif action is Action.LOWERCASE:
        _set(labels, cfg.target_label, go_lower(value))
    elif action is Action.UPPERCASE:
        _set(labels, cfg.target_label, go_upper(value))
    return True


def _replace(rule: Rule, value: str) -> tuple[str, str] | None:
    """What ``replace`` does for ``value``: (target label, new value), or None for nothing."""
    cfg, regex = rule.config, rule.regex
    match = regex.match(value)
    if match is None:
        return None
    target = expand(cfg.target_label, match, regex.group_names)
    if not is_valid_label_name(target):
        return None
    return target, expand(cfg.replacement, match, regex.group_names)


def _map_name(rule: Rule, name: str) -> str | None:
    match = rule.regex.match(name)
    if match is None:
        return None
    return expand(rule.config.replacement, match, rule.regex.group_names)


def _set(labels: LabelSet, name: str, value: str) -> None:
    # An empty value is the same as no label, as in Prometheus's label builder.
    if value:
        labels[name] = value
    else:
        labels.pop(name, None)


def dropping_rule(labels: LabelSet, rules: Sequence[Rule]) -> int | None:
    """Which rule (its index) drops ``labels`` when applied as :func:`process` does; None if none.

    The UI's service-discovery page runs this for the dropped targets it shows, so the
    store need not remember a rule for every dropped target.
    """
    result = {name: value for name, value in labels.items() if value != ""}
    for index, rule in enumerate(rules):
        if not _apply(result, rule):
            return index
    return None
