"""Target groups, and the validation Prometheus applies to them.

A :class:`TargetGroup` is what a mechanism sends: a ``source`` unique within its
discoverer, a list of targets (label sets, each with ``__address__``) and labels
common to all of them. A target's own labels override the group's labels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidTargetError

ADDRESS_LABEL = "__address__"
LabelSet = dict[str, str]

LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_INVALID_LABEL_CHARS_RE = re.compile(r"[^a-zA-Z0-9_]")
# host:port with a DNS name, IPv4 address or bracketed IPv6 address, and a numeric port.
_ADDRESS_RE = re.compile(r"^(?:\[[0-9A-Fa-f:.%a-zA-Z0-9]+\]|[^\s:/\[\]]+):(?P<port>\d{1,5})$")

# Label names repeat across thousands of targets; remember the ones already checked.
_valid_names: set[str] = set()
_VALID_NAMES_MAX = 100_000


def is_valid_label_name(name: str) -> bool:
    """Return whether ``name`` is a label name Prometheus accepts."""
    if name in _valid_names:
        return True
    if LABEL_NAME_RE.fullmatch(name) is None:  # fullmatch: "$" would accept "a\n"
        return False
    if len(_valid_names) < _VALID_NAMES_MAX:
        _valid_names.add(name)
    return True


def sanitize_label_name(name: str) -> str:
    """Replace every character outside ``[a-zA-Z0-9_]`` with ``_`` (Prometheus's strutil)."""
    return _INVALID_LABEL_CHARS_RE.sub("_", name)


def join_list(values: Iterable[str], separator: str = ",") -> str:
    """Join a list the way Prometheus SDs do: ``,a,b,`` (and ``,,`` when empty)."""
    return separator + separator.join(values) + separator


def join_host_port(host: str, port: int | str) -> str:
    """``host:port``, with an IPv6 host in brackets (Go's ``net.JoinHostPort``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_valid_address(address: str) -> bool:
    """Return whether ``address`` is a ``host:port`` with a port in 1..65535."""
    match = _ADDRESS_RE.fullmatch(address)
    return match is not None and 0 < int(match["port"]) <= 65535


def _check_labels(labels: Mapping[Any, Any], where: str) -> None:
    for name, value in labels.items():
        if not isinstance(name, str) or not is_valid_label_name(name):
            raise InvalidTargetError(f"{where}: invalid label name {name!r}")
        if not isinstance(value, str):
            raise InvalidTargetError(f"{where}: label {name} has a non-string value {value!r}")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidTargetError(
                    f"{where}: label {name} has a value that is not valid UTF-8: {value!r}"
                ) from None


@dataclass(frozen=True, slots=True)
class TargetGroup:
    """A group of targets from one source; immutable once built, validated on construction.

    Raises :class:`InvalidTargetError` naming the source and the offending value.
    """

    source: str
    targets: tuple[LabelSet, ...] = ()
    labels: LabelSet = field(default_factory=dict)

    def __post_init__(self) -> None:
        source: object = self.source  # mechanisms pass untrusted data: check, don't assume
        if not isinstance(source, str):
            raise InvalidTargetError(f"source {source!r} is not a string")
        targets: object = self.targets
        if not isinstance(targets, tuple):  # a list is accepted and frozen
            object.__setattr__(self, "targets", tuple(self.targets))
        _check_labels(self.labels, f"source {self.source!r}: group labels")
        for target in self.targets:
            where = f"source {self.source!r}: target {target!r}"
            untrusted: object = target
            if not isinstance(untrusted, dict):
                raise InvalidTargetError(f"{where}: a target must be a label set")
            _check_labels(target, where)
            address = target.get(ADDRESS_LABEL, self.labels.get(ADDRESS_LABEL))
            if address is None:
                raise InvalidTargetError(f"{where}: no {ADDRESS_LABEL} label")
            if not is_valid_address(address):
                raise InvalidTargetError(f"{where}: {ADDRESS_LABEL} {address!r} is not host:port")

    def merged_targets(self) -> list[LabelSet]:
        """Each target's full label set: group labels, overridden by the target's own."""
        if not self.labels:
            return [dict(t) for t in self.targets]
        return [{**self.labels, **t} for t in self.targets]


def parse_file_sd(data: object, *, origin: str) -> list[TargetGroup]:
    """Parse decoded file_sd data (a list of ``{targets, labels}``) as strictly as Prometheus.

    Groups get their index in the list as source. Raises :class:`InvalidTargetError` naming
    ``origin`` and the index of the offending entry.
    """
    if not isinstance(data, list):
        raise InvalidTargetError(
            f"{origin}: expected a list of target groups, got {type(data).__name__}"
        )
    groups = []
    for index, entry in enumerate(data):
        where = f"{origin}: group {index}"
        if not isinstance(entry, dict):
            raise InvalidTargetError(f"{where}: expected a mapping, got {entry!r}")
        unknown = set(entry) - {"targets", "labels"}
        if unknown:
            raise InvalidTargetError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")
        addresses = entry.get("targets") or []
        labels = entry.get("labels") or {}
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise InvalidTargetError(f"{where}: targets must be a list of strings")
        if not isinstance(labels, dict):
            raise InvalidTargetError(f"{where}: labels must be a mapping")
        if ADDRESS_LABEL in labels:
            raise InvalidTargetError(f"{where}: {ADDRESS_LABEL} belongs in targets, not labels")
        # Prometheus decodes a null label value as "" (the same as no label).
        labels = {k: "" if v is None else v for k, v in labels.items()}
        try:
            group = TargetGroup(
                source=str(index),
                targets=tuple({ADDRESS_LABEL: a} for a in addresses),
                labels=dict(labels),
            )
        except InvalidTargetError as exc:
            raise InvalidTargetError(f"{origin}: {exc}") from None
        groups.append(group)
    return groups
