"""Target groups → deterministic file_sd / http_sd bytes.

Every target becomes its own group carrying its merged labels, because file_sd and
http_sd carry labels only at group level. Entries are sorted by ``__address__``, then
by their labels (as canonical, key-sorted JSON), keys are sorted, and empty label
values (the same as absent, to Prometheus) are dropped, so equal target sets always
render to equal bytes.
Each entry is serialized once, when its group arrives; a publish only sorts and joins.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson
import yaml

from .model import ADDRESS_LABEL, LabelSet
from .snapshot import Entry, Snapshot, SortKey, content_hash, entry_digest, join_entries

__all__ = [  # Entry, Snapshot and SortKey live in snapshot.py; kept importable from here
    "Entry",
    "Snapshot",
    "SortKey",
    "content_hash",
    "entry_address",
    "entry_digest",
    "finish_sort",
    "fresh_str",
    "make_entry",
    "render_json",
    "render_yaml",
    "sort_entries",
]

_SORT_KEYS = orjson.OPT_SORT_KEYS


def fresh_str(text: str) -> str:
    """A new string object equal to ``text``.

    Long-lived data (entries, store keys) must not hold on to single objects of a large
    transient one (the parsed JSON of a 45 MB update): each such survivor pins the
    allocator arena it sits in, and a few survivors per arena kept the whole update's
    memory resident (see bench/README.md, "memory").
    """
    return (" " + text)[1:]


def make_entry(labels: LabelSet) -> Entry:
    """Render one target's full label set (with ``__address__``) into an entry."""
    # Hot path (once per target per change): C-level dict operations only.
    if "" in labels.values():
        group_labels = {k: v for k, v in labels.items() if v != ""}
    else:
        group_labels = dict(labels)
    # A fresh copy of the address: the entry outlives the parsed update it came from, and
    # keeping that update's string alive would pin its memory (see fresh_str).
    address = fresh_str(group_labels.pop(ADDRESS_LABEL))
    # orjson returns bytes with its whole (4 KiB or more) buffer still allocated; a copy of
    # the exact size keeps a job of 100,000 entries from holding ~10x the memory it needs.
    # The JSON starts with the sorted labels, so it orders equal addresses by label set.
    body = b"%b" % orjson.dumps({"labels": group_labels, "targets": [address]}, option=_SORT_KEYS)
    return Entry.of(address, body)


def render_json(entries: Iterable[Entry], *, pretty: bool = False) -> bytes:
    """The file_sd JSON document of already sorted, deduplicated entries."""
    body = join_entries(entries)
    if pretty:
        if body == b"[]":
            return b"[]\n"
        return orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2) + b"\n"
    return body


_YamlDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def render_yaml(entries: Iterable[Entry]) -> bytes:
    """The file_sd YAML document of already sorted entries (block style, keys sorted)."""
    data = [orjson.loads(e.json) for e in entries]
    # No line folding (width): a folded scalar is one more thing a YAML parser can differ on.
    text = yaml.dump(
        data,
        Dumper=_YamlDumper,
        sort_keys=True,
        allow_unicode=True,
        default_flow_style=False,
        width=2**31 - 1,
    )
    return text.encode("utf-8")


def entry_address(entry: Entry) -> str:
    """An entry's ``__address__``: the primary sort key."""
    return entry.address


def _json(entry: Entry) -> bytes:
    return entry.json


def sort_entries(entries: Iterable[Entry]) -> list[Entry]:
    """Sort entries by ``key`` (address, then labels), dropping exact duplicates."""
    # Sorting by the address string alone uses CPython's fast string comparison; comparing
    # (address, JSON) tuples took ~2.5x as long for 100,000 shuffled entries. Only runs of
    # equal addresses (rare) need their labels compared.
    return finish_sort(sorted(entries, key=entry_address))


def finish_sort(ordered: list[Entry]) -> list[Entry]:
    """Entries sorted by address only → by ``key``, without exact duplicates.

    Returns ``ordered`` itself when every address is distinct (the common case).
    """
    addresses = [e.address for e in ordered]
    if len(set(addresses)) == len(addresses):
        return ordered
    result: list[Entry] = []
    start, count = 0, len(ordered)
    while start < count:
        end = start + 1
        while end < count and addresses[end] == addresses[start]:
            end += 1
        if end - start == 1:
            result.append(ordered[start])
        else:
            previous: bytes | None = None
            for entry in sorted(ordered[start:end], key=_json):
                if entry.json != previous:
                    result.append(entry)
                    previous = entry.json
        start = end
    return result
