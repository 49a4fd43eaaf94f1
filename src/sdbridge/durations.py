"""Durations in Prometheus's syntax (``1h30m``, ``250ms``), as seconds."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

# Prometheus's model.ParseDuration: units in decreasing order, each at most once.
# Matched with fullmatch: "$" would accept "5m\n".
_DURATION_RE = re.compile(
    r"(?:(?P<y>[0-9]+)y)?(?:(?P<w>[0-9]+)w)?(?:(?P<d>[0-9]+)d)?(?:(?P<h>[0-9]+)h)?"
    r"(?:(?P<m>[0-9]+)m)?(?:(?P<s>[0-9]+)s)?(?:(?P<ms>[0-9]+)ms)?"
)
_UNIT_MS = {
    "y": 365 * 86_400_000,
    "w": 7 * 86_400_000,
    "d": 86_400_000,
    "h": 3_600_000,
    "m": 60_000,
    "s": 1000,
    "ms": 1,
}
# Prometheus keeps durations in int64 nanoseconds and refuses longer ones (about 292y).
MAX_DURATION_MS = (2**63 - 1) // 1_000_000
MAX_DURATION = MAX_DURATION_MS / 1000
"""The longest duration accepted anywhere, in seconds (Prometheus's limit)."""


def parse_duration(text: str) -> float:
    """Parse a Prometheus duration string into seconds, or raise ValueError."""
    if text == "0":
        return 0.0
    match = _DURATION_RE.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"not a valid duration string: {_short(text)!r} (use e.g. 30s, 5m, 1h30m)")
    total_ms = 0
    for unit, digits in match.groupdict().items():
        if digits is None:
            continue
        if len(digits.lstrip("0")) > 20:  # beyond the limit already; never convert huge ints
            total_ms = MAX_DURATION_MS + 1
            break
        total_ms += int(digits) * _UNIT_MS[unit]
    if total_ms > MAX_DURATION_MS:
        raise ValueError(f"duration {_short(text)!r} is out of range (at most 292y)")
    return total_ms / 1000


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:40] + "..."


def format_duration(seconds: float) -> str:
    """Format seconds the way Prometheus prints durations (``1h30m``, ``250ms``)."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    parts = []
    for unit in ("y", "w", "d", "h", "m", "s", "ms"):
        size = _UNIT_MS[unit]
        # Like Prometheus's Duration.String: years and weeks only when nothing remains
        # (90d reads better than 12w6d).
        if unit in ("y", "w") and ms % size:
            continue
        count, ms = divmod(ms, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _validate(value: Any) -> float:
    if isinstance(value, str):
        return parse_duration(value)
    raise ValueError(f"expected a duration string such as 30s, got {value!r}")


Duration = Annotated[
    float,
    BeforeValidator(_validate),
    PlainSerializer(format_duration, return_type=str),
]
"""A pydantic field type: a Prometheus duration string in YAML, seconds in Python."""
