"""Durations in Prometheus's syntax: parse, format, and their round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from sdbridge.durations import MAX_DURATION, Duration, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1d", 86400.0),
        ("2w", 14 * 86400.0),
        ("1y", 365 * 86400.0),
        ("1h1m1s1ms", 3661.001),
        ("90s", 90.0),
    ],
)
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    [
        *("", "30", "1.5s", "-1s", "1m1h", "1s1s", "30x", "1 s", "s", "1ms1s", " 1s", "1S"),
        *("5m\n", "\n5m", "5m\n\n", "\u0663s"),  # trailing newlines; a non-ASCII digit
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a valid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.25, "250ms"),
        (5400, "1h30m"),
        (90 * 86400, "90d"),  # like Prometheus: not 12w6d
        (14 * 86400, "2w"),
        (366 * 86400, "366d"),
        (3661.001, "1h1m1s1ms"),
    ],
)
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=0, max_value=9 * 10**12))  # 285y, under the 292y limit
def test_round_trip_from_milliseconds(ms: int) -> None:
    text = format_duration(ms / 1000)
    assert round(parse_duration(text) * 1000) == ms
    assert format_duration(parse_duration(text)) == text


units = st.sampled_from(["y", "w", "d", "h", "m", "s", "ms"])


@given(
    st.dictionaries(units, st.integers(0, 10_000), min_size=1).filter(lambda p: p.get("y", 0) < 50)
)
def test_parse_of_any_well_formed_string(parts: dict[str, int]) -> None:
    # At most 49y + 10000w (192y) + 10000d (28y) + less than a year: under the 292y limit.
    order = ["y", "w", "d", "h", "m", "s", "ms"]
    text = "".join(f"{parts[u]}{u}" for u in order if u in parts)
    size = {"y": 31536000, "w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
    assert parse_duration(text) == pytest.approx(sum(n * size[u] for u, n in parts.items()))


@pytest.mark.parametrize(
    "text", ["1" + "0" * 400 + "s", "1" + "0" * 5000 + "ms", "293y", "106752d", "9" * 21 + "ms"]
)
def test_parse_refuses_what_prometheus_cannot_hold(text: str) -> None:
    # Prometheus keeps durations in int64 nanoseconds; longer ones are an error, never
    # an OverflowError or a float that is infinite.
    with pytest.raises(ValueError, match=r"out of range \(at most 292y\)"):
        parse_duration(text)


def test_the_longest_duration_is_accepted() -> None:
    assert parse_duration("292y") == 292 * 365 * 86400
    assert parse_duration("106751d") == 106751 * 86400


@given(st.text(max_size=30))
def test_parse_raises_only_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert 0 <= seconds <= MAX_DURATION


class _Model(BaseModel):
    d: Duration


def test_pydantic_field() -> None:
    assert _Model.model_validate({"d": "1m"}).d == 60.0
    assert _Model(d="1m").model_dump(mode="json") == {"d": "1m"}  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="not a valid duration"):
        _Model.model_validate({"d": "1x"})
    with pytest.raises(ValidationError, match="expected a duration string"):
        _Model.model_validate({"d": 30})
