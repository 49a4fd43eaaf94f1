"""The published state of a job: :class:`Snapshot`, its :class:`Entry` items, one content hash.

A snapshot is what every output and the web read; it is a core type, so it lives below
the renderer, the job and the outputs. An entry is one rendered target: its address (the
primary sort key) and its serialized file_sd group, nothing more, because a job of a
million targets keeps a million of them (the label dict is decoded on demand, for the
few readers that need it: the UI, YAML output, sharding).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from hashlib import blake2b, sha256
from typing import NamedTuple

import orjson

from .model import ADDRESS_LABEL, LabelSet

SortKey = tuple[str, bytes]
"""``(address, the entry's JSON)``: by address, then by the labels' canonical JSON."""


class Entry(NamedTuple):
    """One rendered target: its ``__address__``, its file_sd group as JSON, and its digest.

    A named tuple, not a frozen dataclass: a job builds one per target per change, and a
    frozen dataclass's ``__init__`` (three ``object.__setattr__`` calls) cost ~1.3x as
    much; the collector also stops tracking a tuple of strings and bytes after one pass.
    """

    address: str
    json: bytes
    digest: bytes  # entry_digest(json): what content_hash combines

    @classmethod
    def of(cls, address: str, json: bytes) -> Entry:
        """The entry of ``json`` (one file_sd group), whose one target is ``address``."""
        return cls(address, json, entry_digest(json))

    @property
    def key(self) -> SortKey:
        """The sort key: by address, then by the JSON (which starts with the sorted labels)."""
        return (self.address, self.json)

    @property
    def labels(self) -> LabelSet:
        """The target's full label set, decoded from the JSON (with ``__address__``)."""
        group = orjson.loads(self.json)
        labels: LabelSet = group["labels"]
        labels[ADDRESS_LABEL] = self.address
        return labels


def entry_digest(json: bytes) -> bytes:
    """A 128-bit digest of one entry's JSON, computed once when the entry is rendered."""
    return blake2b(json, digest_size=16).digest()


def content_hash(entries: Iterable[Entry]) -> str:
    """The ETag of the file_sd body that joins ``entries``: equal bytes, equal tags.

    A body is the sorted join of its entries, so the hash is taken over the entries'
    digests (16 bytes each) instead of the body: a publish of a 45 MB job hashes 1.6 MB,
    and a change of one target does not re-hash the whole body. It is the one hash for
    whole bodies and for shards, so replicas that publish the same bytes give the same
    tag. SHA-256 truncated to 128 bits; it identifies content, it guards no secret.
    """
    return sha256(b"".join([e.digest for e in entries])).hexdigest()[:32]


def join_entries(entries: Iterable[Entry]) -> bytes:
    """The compact file_sd JSON array of already sorted entries."""
    parts = [e.json for e in entries]
    if not parts:
        return b"[]"
    # Brackets go on the ends of the parts, so the document is built in one copy.
    parts[0] = b"[" + parts[0]
    parts[-1] = parts[-1] + b"]"
    return b",".join(parts)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An immutable published state of one job: its bytes and what they were made from."""

    job: str
    entries: tuple[Entry, ...]
    body: bytes
    etag: str
    created: float = field(default_factory=time.time)
    stale: bool = False  # loaded from last-known-good state, not from a fresh sync
    groups: int = 0

    @classmethod
    def build(
        cls,
        job: str,
        entries: list[Entry] | tuple[Entry, ...],
        *,
        groups: int = 0,
        stale: bool = False,
        body: bytes | None = None,
    ) -> Snapshot:
        """Render sorted ``entries`` into a snapshot (``body``: their join, if known)."""
        if body is None:
            body = join_entries(entries)
        return cls(
            job=job,
            entries=entries if isinstance(entries, tuple) else tuple(entries),
            body=body,
            etag=content_hash(entries),
            stale=stale,
            groups=groups,
        )

    @property
    def target_count(self) -> int:
        """How many targets the snapshot holds."""
        return len(self.entries)

    def targets(self) -> list[LabelSet]:
        """Each target's full label set, in output order."""
        return [e.labels for e in self.entries]
