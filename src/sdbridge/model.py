"""Target groups, and the validation Prometheus applies to them.

A :class:`TargetGroup` is what a mechanism sends: a ``source`` unique within its
discoverer, a list of targets (label sets, each with ``__address__``) and labels
common to all of them. A target's own labels override the group's labels.

Targets are checked at two strengths (:func:`target_problem`). Every mechanism's
targets must be scrapable by Prometheus (``__scheme__`` http or https, scrape interval
and timeout that are durations, ...): a mechanism with a Prometheus twin publishes what
Prometheus discovers, minus what Prometheus itself could not scrape. The sources
sdbridge owns (its registry, exec, sql, plugins) are checked strictly: the address must be
a plain ``host:port`` (:func:`address_problem`) and reserved labels well-formed.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .durations import parse_duration
from .errors import InvalidTargetError

ADDRESS_LABEL = "__address__"
SCHEME_LABEL = "__scheme__"
SCRAPE_INTERVAL_LABEL = "__scrape_interval__"
SCRAPE_TIMEOUT_LABEL = "__scrape_timeout__"
PARAM_LABEL_PREFIX = "__param_"
SCHEMES = ("http", "https")
# Strict checks: an interval this short is below any scrape timeout a job is likely to
# have, and Prometheus refuses a target whose timeout exceeds its interval.
MIN_STRICT_SCRAPE_INTERVAL = 1.0
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


# A DNS name or IPv4 address: no userinfo ("@"), path, query or fragment, spaces or
# control characters; IPv6 goes in brackets.
_HOST_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})")
_NUMERIC_HOST_RE = re.compile(r"[0-9.]+")
_IPV4_RE = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
)


# The common strict case in one match: a DNS name (not all digits and dots) or an IPv4
# address, then a port 1..65535 without leading zeros. Whatever it accepts,
# address_problem accepts too; anything else (IPv6, "0080", ...) takes the full check.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_PLAIN_ADDRESS_RE = re.compile(
    rf"(?:(?:{_OCTET}\.){{3}}{_OCTET}|(?=[0-9.]*[A-Za-z_-])[A-Za-z0-9_][A-Za-z0-9_.-]{{0,252}})"
    r":(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
)
_RESERVED_LABELS = frozenset(
    (SCHEME_LABEL, SCRAPE_INTERVAL_LABEL, SCRAPE_TIMEOUT_LABEL, PARAM_LABEL_PREFIX)
)


def address_problem(address: str) -> str | None:
    """Why ``address`` is not a plain ``host:port`` (strict), or None if it is one.

    The host is a DNS name, an IPv4 address or a bracketed IPv6 address that parses;
    the port is 1..65535. No userinfo, ``/ ? #``, spaces or control characters.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        return "must be host:port"
    if not (port.isascii() and port.isdigit() and len(port) <= 5) or not 0 < int(port) <= 65535:
        return f"port {port[:10]!r} must be 1..65535"
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{host[:80]!r} is not a valid IPv6 address"
        return None
    if _HOST_RE.fullmatch(host) is None:
        return (
            "the host must be a DNS name, an IPv4 address or a bracketed IPv6 address "
            "(letters, digits, '.', '-', '_'; no user info, path or control characters)"
        )
    if _NUMERIC_HOST_RE.fullmatch(host) and _IPV4_RE.fullmatch(host) is None:
        return f"{host!r} is not a valid IPv4 address"
    return None


def _duration_label(labels: Mapping[str, str], name: str) -> float | str | None:
    """The label's duration in seconds, None when unset, or the problem with it."""
    text = labels.get(name)
    if not text:
        return None
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        return f"{name} {text[:40]!r}: {exc}"
    if seconds <= 0:
        return f"{name} must be greater than 0"
    return seconds


def reserved_label_problem(
    labels: Mapping[str, str], *, strict: bool = False
) -> tuple[str, str] | None:
    """(label name, problem) for a reserved label Prometheus cannot scrape with, or None.

    ``__scheme__`` must be http or https; ``__scrape_interval__`` and
    ``__scrape_timeout__`` positive durations, the timeout not above the interval.
    ``strict`` (sdbridge's own sources) also refuses a ``__param_`` without a name and
    an interval under 1s without its own timeout.
    """
    scheme = labels.get(SCHEME_LABEL)
    if not (scheme or strict or SCRAPE_INTERVAL_LABEL in labels or SCRAPE_TIMEOUT_LABEL in labels):
        return None  # the common case, once per target: keep it cheap
    if scheme and scheme not in SCHEMES:
        return SCHEME_LABEL, f"{SCHEME_LABEL} {scheme[:40]!r} must be http or https"
    interval = _duration_label(labels, SCRAPE_INTERVAL_LABEL)
    if isinstance(interval, str):
        return SCRAPE_INTERVAL_LABEL, interval
    timeout = _duration_label(labels, SCRAPE_TIMEOUT_LABEL)
    if isinstance(timeout, str):
        return SCRAPE_TIMEOUT_LABEL, timeout
    if interval is not None and timeout is not None and timeout > interval:
        return (
            SCRAPE_TIMEOUT_LABEL,
            f"{SCRAPE_TIMEOUT_LABEL} must not exceed {SCRAPE_INTERVAL_LABEL}",
        )
    if strict:
        if PARAM_LABEL_PREFIX in labels:
            return PARAM_LABEL_PREFIX, f"{PARAM_LABEL_PREFIX}<name> needs a parameter name"
        if interval is not None and interval < MIN_STRICT_SCRAPE_INTERVAL and timeout is None:
            return SCRAPE_INTERVAL_LABEL, (
                f"{SCRAPE_INTERVAL_LABEL} under 1s needs its own {SCRAPE_TIMEOUT_LABEL} "
                "(Prometheus refuses a target whose scrape timeout exceeds its interval)"
            )
    return None


def target_problem(labels: Mapping[str, str], *, strict: bool = False) -> str | None:
    """Why a target (its final labels) must not be published, or None if it may be.

    Every target needs a ``host:port`` ``__address__`` and reserved labels Prometheus can
    scrape with; ``strict`` applies the rules for sdbridge's own sources (registry, exec,
    plugins): :func:`address_problem` and :func:`reserved_label_problem`'s strict rules.
    """
    address = labels.get(ADDRESS_LABEL)
    if not address:
        return f"no {ADDRESS_LABEL}"
    # Fast path, once per target: a plain host:port and no reserved label at all passes
    # every strict rule (one regex match and one C-level key check).
    if (
        strict
        and _PLAIN_ADDRESS_RE.fullmatch(address) is not None
        and labels.keys().isdisjoint(_RESERVED_LABELS)
    ):
        return None
    if strict:
        problem = address_problem(address)
        if problem is not None:
            return f"{ADDRESS_LABEL} {address[:100]!r}: {problem}"
    elif not is_valid_address(address):
        return f"{ADDRESS_LABEL} {address[:100]!r} is not host:port"
    reserved = reserved_label_problem(labels, strict=strict)
    return reserved[1] if reserved is not None else None


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

    @classmethod
    def prechecked(cls, source: str, targets: tuple[LabelSet, ...]) -> TargetGroup:
        """A group of targets whose labels the caller built valid, without checking them again.

        For mechanisms that map very many rows (sql_sd: 100,000 targets per refresh) and
        have already made every name valid, every value a ``str`` and ``__address__`` a
        valid ``host:port``; anything else must use the checking constructor.
        """
        group = object.__new__(cls)
        object.__setattr__(group, "source", source)
        object.__setattr__(group, "targets", targets)
        object.__setattr__(group, "labels", {})
        return group

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
