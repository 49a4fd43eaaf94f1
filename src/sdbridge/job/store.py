"""What a job knows: every mechanism's groups, merged by ``(config index, source)``.

Each group is relabeled and rendered into :class:`~sdbridge.snapshot.Entry` items once,
when it arrives (:meth:`TargetStore.render`, pure CPU, safe on a worker thread); the
store then swaps it in on the event loop (:meth:`TargetStore.apply`). A build sorts
the current entries into a :class:`~sdbridge.snapshot.Snapshot`; the store keeps the
sorted order of the last build and what changed since, so that a few changes cost a
nearly-sorted re-sort (Timsort: about linear), not a sort from scratch.

The store knows nothing of timing, guards or outputs: that is the publisher's job.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from ..discovery.base import DiscoveryContext
from ..model import (
    ADDRESS_LABEL,
    LabelSet,
    TargetGroup,
    is_valid_address,
    is_valid_label_name,
    reserved_label_problem,
    target_problem,
)
from ..relabel import Rule, process
from ..render import entry_address, fresh_str, make_entry
from ..snapshot import Entry, Snapshot, SortKey

GroupKey = tuple[int, str]
"""``(config index of the mechanism, source)``: two mechanisms never share a group."""


@dataclass(frozen=True, slots=True)
class Discovered:
    """One target as its mechanism sent it (before relabeling), kept when a job relabels.

    ``json`` is its full label set as compact, key-sorted JSON (one bytes object, not a
    dict); ``entry`` is what relabeling made of it, or None when relabeling dropped it.
    """

    json: bytes
    entry: Entry | None

    @property
    def labels(self) -> LabelSet:
        """The discovered labels (``__address__`` and ``__meta_*`` included)."""
        labels: LabelSet = orjson.loads(self.json)
        return labels


@dataclass(frozen=True, slots=True)
class RenderedGroup:
    """One group of an update, rendered; ``entries`` None removes the source."""

    key: GroupKey
    entries: list[Entry] | None
    discovered: list[Discovered] | None = None  # only when the job has relabel rules


RenderedGroups = list[RenderedGroup]
"""An update, rendered."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an update comes from, for error messages and invalid-target counts."""

    index: int
    label: str  # e.g. ``exec_sd_configs[0]``
    context: DiscoveryContext
    strict: bool = False  # sdbridge's own sources: strict target checks (model.target_problem)


@dataclass(frozen=True, slots=True)
class _KeptGroup:
    items: list[Discovered]
    dropped: int  # dropped by relabeling in this group
    kept_dropped: int  # of which kept (keep_dropped_targets)


class TargetStore:
    """The merged, rendered state of one job."""

    def __init__(self, job: str, rules: list[Rule], *, keep_dropped_targets: int = 100) -> None:
        self.job = job
        self._rules = rules
        self._groups: dict[GroupKey, list[Entry]] = {}
        # With relabel rules: each group's targets before relabeling, and the dropped ones
        # up to keep_dropped_targets for the whole job (0: no limit, as in Prometheus).
        self._discovered: dict[GroupKey, _KeptGroup] = {}
        self.keep_dropped_targets = keep_dropped_targets
        self.dropped_kept = 0
        self.dropped_total = 0  # dropped by relabeling in the current state, kept or not
        # Every entry, sorted by (address, JSON), duplicates kept, as of the last build;
        # and what changed since. A build of a few changes edits the sorted list in place
        # (bisect: O(log n) compares and one memmove each) instead of sorting again.
        self._order: list[Entry] = []
        self._order_valid = False
        self._duplicates = 0  # entries in _order equal to their predecessor
        self._gone: list[Entry] = []
        self._new: list[Entry] = []
        self.version = 0  # moves on every change: a build knows what it contains
        self.removed_total = 0  # entries ever removed or replaced: bounds a drop for the guard

    @property
    def size(self) -> int:
        """How many entries a build handles (as of the last build, plus what came since)."""
        return len(self._order) + len(self._new)

    @property
    def group_count(self) -> int:
        """How many groups (sources) the job holds."""
        return len(self._groups)

    # --- updates ---------------------------------------------------------------------

    def render(self, origin: Origin, groups: list[TargetGroup]) -> RenderedGroups:
        """Relabel and render an update; invalid relabeled targets are counted and skipped."""
        result: RenderedGroups = []
        for group in groups:
            key = (origin.index, fresh_str(group.source))
            if not group.targets:
                result.append(RenderedGroup(key, None))
                continue
            entries = []
            discovered: list[Discovered] | None = [] if self._rules else None
            for labels in group.merged_targets():
                entry = self._entry(origin, group.source, labels)
                if entry is not None:
                    entries.append(entry)
                if discovered is not None:
                    json = b"%b" % orjson.dumps(labels, option=orjson.OPT_SORT_KEYS)
                    discovered.append(Discovered(json, entry))
            result.append(RenderedGroup(key, entries, discovered))
        return result

    def _entry(self, origin: Origin, source: str, labels: LabelSet) -> Entry | None:
        if self._rules:
            relabeled = process(labels, self._rules)
            if relabeled is None:
                return None
            problem = relabel_problem(relabeled)
            if problem:
                origin.context.record_invalid(f"{origin.label} source {source!r}", problem)
                return None
            labels = relabeled
        # The address was checked as host:port already (by TargetGroup or after relabeling).
        if origin.strict:
            problem = target_problem(labels, strict=True)
        else:
            reserved = reserved_label_problem(labels)
            problem = reserved[1] if reserved is not None else None
        if problem:
            origin.context.record_invalid(f"{origin.label} source {source!r}", problem)
            return None
        return make_entry(labels)

    def apply(self, index: int, rendered: RenderedGroups, *, full: bool) -> bool:
        """Merge a rendered update of mechanism ``index``; return whether anything changed.

        ``full`` means the update is the mechanism's whole set: its other groups go.
        """
        changed = bool(rendered)
        if full:
            sent = {group.key for group in rendered}
            stale = [k for k in self._groups if k[0] == index and k not in sent]
            for key in stale:
                self._replace(key, None)
            changed = changed or bool(stale)
        for group in rendered:
            self._replace(group.key, group.entries)
            self._keep_discovered(group)
        if changed:
            self.version += 1
        return changed

    def _keep_discovered(self, group: RenderedGroup) -> None:
        """Keep a group's targets before relabeling; dropped ones up to the job's limit."""
        self._forget_discovered(group.key)
        if not group.discovered:
            return
        limit = self.keep_dropped_targets
        items: list[Discovered] = []
        dropped = kept_dropped = 0
        for item in group.discovered:
            if item.entry is None:
                dropped += 1
                if limit and self.dropped_kept >= limit:
                    continue  # counted, not kept
                self.dropped_kept += 1
                kept_dropped += 1
            items.append(item)
        self.dropped_total += dropped
        self._discovered[group.key] = _KeptGroup(items, dropped, kept_dropped)

    def _forget_discovered(self, key: GroupKey) -> None:
        old = self._discovered.pop(key, None)
        if old is not None:
            self.dropped_total -= old.dropped
            self.dropped_kept -= old.kept_dropped

    def targets_before_relabeling(self) -> list[Discovered]:
        """Every kept target as discovered (relabeled or dropped); [] without relabel rules."""
        return [item for group in self._discovered.values() for item in group.items]

    def _replace(self, key: GroupKey, entries: list[Entry] | None) -> None:
        if entries is None:
            self._forget_discovered(key)
        old = self._groups.pop(key, None)
        if old:
            self._gone.extend(old)
            self.removed_total += len(old)
        if entries is not None:
            self._groups[key] = entries
            self._new.extend(entries)

    # --- builds ----------------------------------------------------------------------

    def prepare_build(self) -> Callable[[], tuple[list[Entry], Snapshot]]:
        """On the event loop: take the current entries; return the build (CPU) to run.

        Pass what the build returns to :meth:`finish_build`. Builds never overlap.
        """
        gone, new = self._gone, self._new
        self._gone, self._new = [], []
        groups = len(self._groups)
        job = self.job
        if not self._order_valid or 4 * (len(gone) + len(new)) > len(self._order):
            entries = [e for group in self._groups.values() for e in group]
            self._order_valid = False  # until this build has sorted ``entries``

            def full_build() -> tuple[list[Entry], Snapshot]:
                shared_addresses = _sort(entries)
                self._duplicates = _count_duplicates(entries) if shared_addresses else 0
                return entries, self._snapshot(job, entries, groups)

            return full_build
        order = self._order
        gone, new = _cancel_out(gone, new)
        for entry in gone:
            self._remove(order, entry)
        for entry in new:
            key = entry.key
            index = bisect_left(order, key, key=_key)
            if index < len(order) and order[index].key == key:
                self._duplicates += 1
            order.insert(index, entry)

        def incremental_build() -> tuple[list[Entry], Snapshot]:
            return order, self._snapshot(job, order, groups)

        return incremental_build

    def _remove(self, order: list[Entry], entry: Entry) -> None:
        key = entry.key
        index = bisect_left(order, key, key=_key)
        while order[index] is not entry:  # among equal keys, this very object
            index += 1
        if (index + 1 < len(order) and order[index + 1].key == key) or (
            index > 0 and order[index - 1].key == key
        ):
            self._duplicates -= 1
        del order[index]

    def _snapshot(self, job: str, order: list[Entry], groups: int) -> Snapshot:
        """Render the sorted ``order``: exact duplicates (rare) are published once."""
        if self._duplicates:
            order = [e for i, e in enumerate(order) if i == 0 or order[i - 1].key != e.key]
        return Snapshot.build(job, order, groups=groups)

    def finish_build(self, ordered: list[Entry]) -> None:
        """Keep a finished build's order for the next one."""
        self._order, self._order_valid = ordered, True


def _key(entry: Entry) -> SortKey:
    return entry.key


def _cancel_out(gone: list[Entry], new: list[Entry]) -> tuple[list[Entry], list[Entry]]:
    """Drop the additions and removals of one entry that undo each other since the last build.

    An entry added and removed again between two builds (churn on one target) was never
    in the order, so removing it there would look for something that is not in it.
    """
    pending = Counter(id(entry) for entry in new)
    if not pending:
        return gone, new
    still_gone = []
    for entry in gone:
        if pending[id(entry)]:
            pending[id(entry)] -= 1
        else:
            still_gone.append(entry)
    still_new = []
    for entry in new:
        if pending[id(entry)]:
            pending[id(entry)] -= 1
            still_new.append(entry)
    return still_gone, still_new


def _sort(entries: list[Entry]) -> bool:
    """Sort by (address, JSON) in place, duplicates kept; return whether addresses repeat."""
    # By the address string alone first: CPython's fast string compare; comparing
    # (address, JSON) tuples took ~2.5x as long for 100,000 shuffled entries. Only equal
    # addresses (rare) need the JSON compared: a second, nearly sorted pass.
    entries.sort(key=entry_address)
    addresses = [e.address for e in entries]
    if len(set(addresses)) == len(addresses):
        return False
    entries.sort(key=_key)
    return True


def _count_duplicates(entries: list[Entry]) -> int:
    return sum(1 for a, b in itertools.pairwise(entries) if a.key == b.key)


def relabel_problem(labels: LabelSet) -> str | None:
    """Why a relabeled target cannot be published, or None if it can."""
    address = labels.get(ADDRESS_LABEL)
    if not address:
        return "no __address__ left after relabeling"
    if not is_valid_address(address):
        return f"__address__ {address!r} is not host:port after relabeling"
    for name in labels:
        if not is_valid_label_name(name):
            return f"invalid label name {name!r} after relabeling"
    return None
