"""From a query's rows to target groups: the whole of sql_sd's mapping, free of any driver.

The rules (docs/mechanisms/sql.md):

- an ``address`` column, or ``host`` and ``port`` columns, make ``__address__`` (an IPv6
  host is bracketed);
- a ``labels`` column holding a JSON object of strings is expanded into labels, reserved
  ones (``__metrics_path__``, ``__scheme__``, ``__param_<name>``...) included;
- every other column, ``host`` and ``port`` included, becomes ``__meta_sql_<column>``
  (lower-cased and sanitized as Prometheus sanitizes label names);
- NULL is an empty value; numbers, booleans and timestamps are written as Prometheus
  operators expect (``true``/``false``, plain decimals, RFC 3339 in UTC).

A row whose address cannot be made, or whose ``labels`` is not a JSON object of strings,
is skipped and reported with its row number and column; the other rows still count.
A result without the columns to make an address fails the whole refresh.

Targets are grouped by address (the group's ``source``), so a row that changes changes
one group, and two rows with one address and different labels are two targets of one
group; identical rows are one target.
"""

from __future__ import annotations

import datetime
import gc
import math
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from ...errors import DiscoveryError, InvalidTargetError
from ...model import (
    ADDRESS_LABEL,
    TargetGroup,
    is_valid_address,
    is_valid_label_name,
    join_host_port,
    sanitize_label_name,
)

# Label names.
META = "__meta_sql_"  # + every column but address and labels, lower-cased and sanitized

# Column names with a meaning (compared lower-cased).
ADDRESS_COLUMN = "address"  # host:port, as written in the row
HOST_COLUMN = "host"  # with PORT_COLUMN, when there is no address column
PORT_COLUMN = "port"
LABELS_COLUMN = "labels"  # a JSON object of label names to string values

_MAX_REPORTED_TEXT = 200  # how much of a bad value an error message quotes


@dataclass(frozen=True)
class Columns:
    """Where each meaningful column is in a result, and the label of every other one."""

    names: tuple[str, ...]
    address: int | None
    host: int | None
    port: int | None
    labels: int | None
    meta: tuple[tuple[int, str], ...]  # (column index, label name)


def plan_columns(names: Sequence[str]) -> Columns:
    """Decide what each column becomes; raise DiscoveryError if no address can be made."""
    lowered = [name.lower() for name in names]
    found: dict[str, int] = {}
    for index, name in enumerate(lowered):
        if name in (ADDRESS_COLUMN, HOST_COLUMN, PORT_COLUMN, LABELS_COLUMN):
            if name in found:
                raise DiscoveryError(f"the query returns two {name} columns")
            found[name] = index
    address = found.get(ADDRESS_COLUMN)
    host, port = found.get(HOST_COLUMN), found.get(PORT_COLUMN)
    if address is None and (host is None or port is None):
        missing = "port column" if host is not None else "host column"
        if host is None and port is None:
            missing = "address column, nor host and port columns"
        shown = ", ".join(names) if names else "none"
        raise DiscoveryError(f"the query's result has no {missing} (its columns: {shown})")
    meta: list[tuple[int, str]] = []
    seen: dict[str, str] = {}
    for index, name in enumerate(lowered):
        if index in (address, found.get(LABELS_COLUMN)):
            continue
        label = META + sanitize_label_name(name)
        if label in seen:
            raise DiscoveryError(
                f"columns {seen[label]!r} and {names[index]!r} both become the label {label};"
                " rename one with AS"
            )
        seen[label] = names[index]
        meta.append((index, label))
    return Columns(
        names=tuple(names),
        address=address,
        host=host,
        port=port,
        labels=found.get(LABELS_COLUMN),
        meta=tuple(meta),
    )


# --- values -----------------------------------------------------------------------------


def _float_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _datetime_text(value: datetime.datetime) -> str:
    if value.tzinfo is datetime.UTC:  # what drivers return for timestamptz: the fast path
        return value.isoformat()[:-6] + "Z"
    # A timestamp without a time zone is taken as UTC: RFC 3339 needs an offset.
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    else:
        value = value.astimezone(datetime.UTC)
    return value.isoformat().replace("+00:00", "Z")


def _bytes_text(value: bytes | bytearray | memoryview) -> str:
    raw = bytes(value)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.hex()


def _timedelta_text(value: datetime.timedelta) -> str:
    return _float_text(value.total_seconds())  # seconds, as Prometheus counts time


def _json_text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


# Exact types first (the common case, one dict lookup); subclasses fall back to the walk.
_RENDERERS: dict[type, Callable[[Any], str]] = {
    str: lambda v: v,
    bool: lambda v: "true" if v else "false",
    int: str,
    float: _float_text,
    Decimal: lambda v: format(v, "f"),
    datetime.datetime: _datetime_text,
    datetime.date: datetime.date.isoformat,
    datetime.time: datetime.time.isoformat,
    datetime.timedelta: _timedelta_text,
    bytes: _bytes_text,
    bytearray: _bytes_text,
    memoryview: _bytes_text,
    uuid.UUID: str,
    dict: _json_text,
    list: _json_text,
}


def render_value(value: Any) -> str:
    """A column value as a label value: NULL is empty, types as Prometheus operators expect."""
    if value is None:
        return ""
    renderer = _RENDERERS.get(type(value))
    if renderer is not None:
        return renderer(value)
    for kind, fallback in _RENDERERS.items():  # bool before int: the order above matters
        if isinstance(value, kind):
            return fallback(value)
    return str(value)  # ip addresses, ranges, enums...: their own text


# --- rows -------------------------------------------------------------------------------


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_REPORTED_TEXT else text[:_MAX_REPORTED_TEXT] + "..."


def row_address(row: Sequence[Any], columns: Columns) -> str:
    """The row's ``__address__``; raises InvalidTargetError naming the column."""
    if columns.address is not None:
        value = row[columns.address]
        if value is None:
            raise InvalidTargetError(f"column {columns.names[columns.address]} is NULL")
        address = render_value(value).strip()
        if not is_valid_address(address):
            raise InvalidTargetError(
                f"column {columns.names[columns.address]}: {_shown(value)} is not host:port"
            )
        return address
    assert columns.host is not None  # plan_columns checked
    assert columns.port is not None
    host, port = row[columns.host], row[columns.port]
    if host is None or render_value(host).strip() == "":
        raise InvalidTargetError(f"column {columns.names[columns.host]} is NULL or empty")
    if port is None:
        raise InvalidTargetError(f"column {columns.names[columns.port]} is NULL")
    port_text = render_value(port).strip()
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise InvalidTargetError(
            f"column {columns.names[columns.port]}: {_shown(port)} is not a port (1-65535)"
        )
    host_text = render_value(host).strip()
    if host_text.startswith("[") and host_text.endswith("]"):
        host_text = host_text[1:-1]  # already bracketed IPv6
    address = join_host_port(host_text, int(port_text))
    if not is_valid_address(address):
        raise InvalidTargetError(
            f"column {columns.names[columns.host]}: {_shown(host)} is not a host name or address"
        )
    return address


def row_labels(value: Any, column: str) -> dict[str, str]:
    """The labels of a ``labels`` column: a JSON object of strings (NULL: none)."""
    if value is None:
        return {}
    if isinstance(value, str | bytes | bytearray | memoryview):
        try:
            value = orjson.loads(bytes(value) if not isinstance(value, str) else value)
        except orjson.JSONDecodeError as exc:
            raise InvalidTargetError(f"column {column}: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InvalidTargetError(
            f"column {column}: {_shown(value)} is not a JSON object of label names to strings"
        )
    for name, text in value.items():
        if not is_valid_label_name(name):
            raise InvalidTargetError(f"column {column}: {name!r} is not a valid label name")
        if name == ADDRESS_LABEL:
            raise InvalidTargetError(
                f"column {column}: {ADDRESS_LABEL} comes from the address (or host and port)"
                " columns, not from labels"
            )
        if not isinstance(text, str):
            raise InvalidTargetError(
                f"column {column}: the value of {name} is {_shown(text)}, not a string"
            )
    return value


@dataclass
class Mapped:
    """The target groups of a result, and the rows skipped with the reason for each."""

    groups: list[TargetGroup]
    skipped: list[tuple[int, InvalidTargetError]]  # (row number from 1, why)


def _render_column(values: Sequence[Any]) -> Sequence[str]:
    """One column's values as label values, a whole column at a time.

    Column-wise, the common cases run at C speed: a text column is taken as it is, and a
    column of one type (integers, timestamps...) maps one renderer over all its values.
    """
    types = set(map(type, values))
    if types == {str}:
        return values
    types.discard(type(None))
    if len(types) == 1:
        kind = types.pop()
        renderer = str if kind is int else _RENDERERS.get(kind)
        if kind is str:
            return ["" if v is None else v for v in values]
        if renderer is not None:
            if None not in values:
                return list(map(renderer, values))
            return [renderer(v) if v is not None else "" for v in values]
    return list(map(render_value, values))  # SQLite mixes types within a column


def _labels_of_column(values: Sequence[Any], column: str) -> dict[Any, dict[str, str] | str]:
    """Each distinct value of a ``labels`` column, parsed and checked once: labels or an error."""
    parsed: dict[Any, dict[str, str] | str] = {}
    for raw in values:
        key = raw if isinstance(raw, str | bytes) or raw is None else id(raw)
        if key in parsed:
            continue
        try:
            parsed[key] = row_labels(raw, column)
        except InvalidTargetError as exc:
            parsed[key] = str(exc)
    return parsed


def _build_targets(columns: Columns, rows: Sequence[Sequence[Any]]) -> list[Target]:
    """Each row's target (labels with ``__address__``), or why it cannot be one."""
    if not rows:
        return []
    by_column = list(zip(*rows, strict=True))  # column-major: each column mapped at once
    meta = columns.meta
    names = tuple(label for _, label in meta)
    rendered = [_render_column(by_column[index]) for index, _ in meta]
    targets = [dict(zip(names, values, strict=True)) for values in zip(*rendered, strict=True)]
    if not meta:
        targets = [{} for _ in rows]
    addresses: Sequence[Any] = [None] * len(rows)
    if columns.address is not None:
        addresses = by_column[columns.address]
    labels_by_value: dict[Any, dict[str, str] | str] = {}
    labels_values: Sequence[Any] = ()
    labels_index = columns.labels
    if labels_index is not None:
        labels_values = by_column[labels_index]
        labels_by_value = _labels_of_column(labels_values, columns.names[labels_index])
    built: list[Target] = []
    valid_address = is_valid_address
    for index, target in enumerate(targets):
        address = addresses[index]
        try:
            if address.__class__ is not str or not valid_address(address):
                address = row_address(rows[index], columns)  # host and port, errors
        except InvalidTargetError as exc:
            built.append(exc)
            continue
        if labels_index is not None:
            raw = labels_values[index]
            key = raw if isinstance(raw, str | bytes) or raw is None else id(raw)
            labels = labels_by_value[key]
            if isinstance(labels, str):
                built.append(InvalidTargetError(labels))
                continue
            target.update(labels)
        target[ADDRESS_LABEL] = address
        built.append(target)
    return built


Target = dict[str, str] | InvalidTargetError


class RowMapper:
    """Maps results to target groups, remembering the last result's rows.

    A row seen in the previous result (same columns, same values) reuses its target and,
    when its address holds only it, its group: a refresh after a NOTIFY that changed one
    row of 100,000 maps one row, and the diff that follows compares groups by identity.
    Targets are never changed once built, so sharing them is safe.
    """

    def __init__(self) -> None:
        self._columns: Columns | None = None
        self._targets: dict[tuple[Any, ...], Target] = {}
        self._groups: dict[str, TargetGroup] = {}

    def map(self, columns: Columns, rows: Iterable[Sequence[Any]]) -> Mapped:
        """Turn rows into target groups (one per address); bad rows are skipped and listed."""
        # Building 100,000 dicts makes the cyclic GC run over and over on objects that hold
        # no cycles (a third of the mapping time): it is paused for this synchronous stretch.
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._map(columns, rows if isinstance(rows, list) else list(rows))
        finally:
            if paused:
                gc.enable()

    def _map(self, columns: Columns, rows: list[Sequence[Any]]) -> Mapped:
        cache = self._targets if columns == self._columns else {}
        keys: list[tuple[Any, ...]] | None = list(map(tuple, rows))
        try:
            known = [cache.get(key) for key in keys] if keys else []
        except TypeError:  # an unhashable value (an array column): no reuse this time
            keys, known = None, [None] * len(rows)
        missing = [index for index, target in enumerate(known) if target is None]
        for index, target in zip(
            missing, _build_targets(columns, [rows[i] for i in missing]), strict=True
        ):
            known[index] = target
        if keys is not None:
            if cache is self._targets and len(cache) + len(missing) <= len(keys) * 1.1 + 100:
                # Few rows gone or changed: add the new rows to the cache in place instead
                # of hashing every row again; a stale entry only costs memory (a row that
                # comes back as it was maps to the same target).
                for index in missing:
                    built = known[index]
                    if built is not None:
                        cache[keys[index]] = built
            else:
                reusable = {key: t for key, t in zip(keys, known, strict=True) if t is not None}
                self._columns, self._targets = columns, reusable
        return self._group(known)

    def _group(self, targets: list[Target | None]) -> Mapped:
        skipped: list[tuple[int, InvalidTargetError]] = []
        by_address: dict[str, dict[str, str]] = {}
        # Rows sharing an address (rare): every distinct label set, by its sorted items.
        shared: dict[str, dict[tuple[tuple[str, str], ...], dict[str, str]]] = {}
        for number, target in enumerate(targets, start=1):
            if target.__class__ is not dict:
                assert isinstance(target, InvalidTargetError)
                skipped.append((number, target))
                continue
            assert isinstance(target, dict)
            address = target[ADDRESS_LABEL]
            first = by_address.setdefault(address, target)
            if first is not target and first != target:
                # Identical rows are one target; rows that differ are different targets.
                variants = shared.setdefault(address, {_key(first): first})
                variants[_key(target)] = target
        previous, groups = self._groups, {}
        prechecked = TargetGroup.prechecked
        for address, target in by_address.items():
            found = shared.get(address)
            if found is None:
                group = previous.get(address)
                if group is None or group.targets[0] is not target or len(group.targets) != 1:
                    # Every name is sanitized or checked, every value a str, the address checked.
                    group = prechecked(address, (target,))
            else:
                group = prechecked(address, tuple(found[k] for k in sorted(found)))
            groups[address] = group
        self._groups = groups
        return Mapped(groups=list(groups.values()), skipped=skipped)


def map_rows(columns: Columns, rows: Iterable[Sequence[Any]]) -> Mapped:
    """Turn rows into target groups (one per address); bad rows are skipped and listed."""
    return RowMapper().map(columns, rows)


def _key(target: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(target.items()))
