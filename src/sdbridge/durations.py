"""Durations in Prometheus's syntax (``1h30m``, ``250ms``), as seconds."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

# Prometheus's model.ParseDuration: units in decreasing order, each at most once.
_DURATION_RE = re.compile(
    r"^(?:(?P<y>\d+)y)?(?:(?P<w>\d+)w)?(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?"
    r"(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?(?:(?P<ms>\d+)ms)?$"
)
_UNIT_SECONDS = {
    "y": 365 * 86400.0,
    "w": 7 * 86400.0,
    "d": 86400.0,
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 0.001,
}


def parse_duration(text: str) -> float:
    """Parse a Prometheus duration string into seconds, or raise ValueError."""
    if text == "0":
        return 0.0
    match = _DURATION_RE.match(text)
    if not text or match is None:
        raise ValueError(f"not a valid duration string: {text!r} (use e.g. 30s, 5m, 1h30m)")
    return sum(int(v) * _UNIT_SECONDS[unit] for unit, v in match.groupdict().items() if v)


def format_duration(seconds: float) -> str:
    """Format seconds the way Prometheus prints durations (``1h30m``, ``250ms``)."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    parts = []
    for unit in ("y", "w", "d", "h", "m", "s", "ms"):
        size = round(_UNIT_SECONDS[unit] * 1000)
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
