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

from collections.abc import Callable
from dataclasses import dataclass

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
from ..render import entry_address, finish_sort, fresh_str, make_entry
from ..snapshot import Entry, Snapshot

GroupKey = tuple[int, str]
"""``(config index of the mechanism, source)``: two mechanisms never share a group."""

RenderedGroups = list[tuple[GroupKey, list[Entry] | None]]
"""An update, rendered: each group's new entries, or None for a removed source."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an update comes from, for error messages and invalid-target counts."""

    index: int
    label: str  # e.g. ``exec_sd_configs[0]``
    context: DiscoveryContext
    strict: bool = False  # sdbridge's own sources: strict target checks (model.target_problem)


class TargetStore:
    """The merged, rendered state of one job."""

    def __init__(self, job: str, rules: list[Rule]) -> None:
        self.job = job
        self._rules = rules
        self._groups: dict[GroupKey, list[Entry]] = {}
        # The entries of the last build in sorted order (duplicates kept), plus what has
        # changed since: a build then re-sorts a nearly sorted list.
        self._order: list[Entry] = []
        self._order_valid = False
        self._gone: set[int] = set()  # ids of entries in _order or _new that left _groups
        self._new: list[Entry] = []
        self.version = 0  # moves on every change: a build knows what it contains

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
                result.append((key, None))
                continue
            entries = []
            for labels in group.merged_targets():
                entry = self._entry(origin, group.source, labels)
                if entry is not None:
                    entries.append(entry)
            result.append((key, entries))
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
            sent = {key for key, _ in rendered}
            stale = [k for k in self._groups if k[0] == index and k not in sent]
            for key in stale:
                self._replace(key, None)
            changed = changed or bool(stale)
        for key, entries in rendered:
            self._replace(key, entries)
        if changed:
            self.version += 1
        return changed

    def _replace(self, key: GroupKey, entries: list[Entry] | None) -> None:
        old = self._groups.pop(key, None)
        if old:
            self._gone.update(map(id, old))
        if entries is not None:
            self._groups[key] = entries
            self._new.extend(entries)

    # --- builds ----------------------------------------------------------------------

    def prepare_build(self) -> Callable[[], tuple[list[Entry], Snapshot]]:
        """On the event loop: take the current entries; return the build (CPU) to run.

        Pass what the build returns to :meth:`finish_build`.
        """
        gone, new = self._gone, self._new
        self._gone, self._new = set(), []
        if not self._order_valid or 2 * (len(gone) + len(new)) > len(self._order):
            entries = [e for group in self._groups.values() for e in group]
        else:
            # Entries in _order and _new stay referenced until here, so their ids are unique.
            entries = [e for e in self._order if id(e) not in gone] if gone else list(self._order)
            entries.extend(e for e in new if id(e) not in gone)
        self._order_valid = False  # until this build has sorted ``entries``
        groups = len(self._groups)
        job = self.job

        def build() -> tuple[list[Entry], Snapshot]:
            entries.sort(key=entry_address)
            return entries, Snapshot.build(job, finish_sort(entries), groups=groups)

        return build

    def finish_build(self, ordered: list[Entry]) -> None:
        """Keep a finished build's order for the next one."""
        self._order, self._order_valid = ordered, True


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
