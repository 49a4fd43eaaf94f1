"""What the service-discovery page shows: each target before and after relabeling.

Like Prometheus's ``/service-discovery``. With ``relabel_configs`` the job's store keeps
every target as discovered and what relabeling made of it (dropped ones up to
``keep_dropped_targets``); without rules a target is published as discovered. Which rule
dropped a target is not stored: it is found again, by running the rules one at a time,
for the dropped targets of the page being shown only.

Filtering 10,000 targets must stay fast: the lower-cased ``name=value`` text of each
target is built once per change of the job's targets (the store's version), and only
when somebody filters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from aiohttp import web

from ..job import Discovered, Job
from ..job.store import relabel_problem
from ..model import ADDRESS_LABEL, LabelSet
from ..relabel import compile_rules, dropping_rule, process
from ..snapshot import Entry
from .status import MAX_PER_PAGE


class Show(StrEnum):
    """Which targets the page lists."""

    ALL = "all"
    ACTIVE = "active"
    DROPPED = "dropped"


@dataclass(frozen=True, slots=True)
class Row:
    """One target on the page."""

    before: LabelSet  # as discovered, __address__ first
    after: LabelSet | None  # as published, None when dropped
    dropped_by: int | None = None  # the index of the relabel rule that dropped it
    problem: str | None = None  # why a target no rule dropped was not published


@dataclass(frozen=True, slots=True)
class DiscoveryPage:
    """One page of a job's targets before and after relabeling."""

    relabels: bool  # whether the job has relabel_configs
    total: int  # targets kept for the page (active + dropped kept)
    active: int
    dropped: int  # dropped by relabeling in the current state, kept or not
    dropped_kept: int
    matched: int
    page: int
    per_page: int
    rows: list[Row]

    @property
    def pages(self) -> int:
        """How many pages the matched targets fill (at least 1)."""
        return max(1, -(-self.matched // self.per_page))


def _ordered(labels: LabelSet) -> LabelSet:
    """``__address__`` first, then the other labels sorted."""
    rest = {k: labels[k] for k in sorted(labels) if k != ADDRESS_LABEL}
    if ADDRESS_LABEL in labels:
        return {ADDRESS_LABEL: labels[ADDRESS_LABEL], **rest}
    return rest


def _text(labels: LabelSet) -> str:
    return "\n".join(f"{k}={v}" for k, v in labels.items())


class _JobItems:
    """A job's targets as of one version of its store, and their texts once filtered."""

    def __init__(self, source: object, version: int, items: Sequence[Discovered | Entry]) -> None:
        self.source = source
        self.version = version
        self.items = items
        self.dropped = [isinstance(i, Discovered) and i.entry is None for i in items]
        self.dropped_count = sum(self.dropped)
        self._texts: list[str] | None = None

    def texts(self) -> list[str]:
        if self._texts is None:
            texts = []
            for item in self.items:
                if isinstance(item, Discovered):
                    after = _text(item.entry.labels) if item.entry is not None else ""
                    texts.append(f"{_text(item.labels)}\n{after}".lower())
                else:
                    texts.append(_text(item.labels).lower())
            self._texts = texts
        return self._texts


class DiscoveryView:
    """Builds :class:`DiscoveryPage` for the UI; keeps one job's items per job."""

    def __init__(self) -> None:
        self._jobs: dict[str, _JobItems] = {}

    def _items(self, job: Job) -> _JobItems:
        # The store's version moves on every update; without rules, the snapshot is the state.
        source: object = job.store if job.config.relabel_configs else job.snapshot
        version = job.store.version if job.config.relabel_configs else 0
        cached = self._jobs.get(job.name)
        if cached is None or cached.source is not source or cached.version != version:
            items: Sequence[Discovered | Entry]
            if job.config.relabel_configs:
                items = job.targets_before_relabeling()
            else:
                items = job.snapshot.entries if job.snapshot is not None else []
            cached = _JobItems(source, version, items)
            self._jobs[job.name] = cached
        return cached

    def retain(self, jobs: set[str]) -> None:
        """Forget jobs that no longer exist."""
        for name in self._jobs.keys() - jobs:
            del self._jobs[name]

    def page(self, job: Job, query: str, show: Show, page: int, per_page: int) -> DiscoveryPage:
        """The targets of ``job`` matching every word of ``query`` and ``show``, one page."""
        per_page = min(max(per_page, 1), MAX_PER_PAGE)
        cached = self._items(job)
        items = cached.items
        relabels = bool(job.config.relabel_configs)
        positions: list[int] | range = range(len(items))
        if relabels and show is not Show.ALL:
            want_dropped = show is Show.DROPPED
            dropped = cached.dropped
            positions = [i for i in positions if dropped[i] == want_dropped]
        elif show is Show.DROPPED:
            positions = []
        terms = query.lower().split()
        if terms:
            texts = cached.texts()
            positions = [i for i in positions if all(term in texts[i] for term in terms)]
        pages = max(1, -(-len(positions) // per_page))
        page = min(max(page, 1), pages)
        start = (page - 1) * per_page
        shown = [items[i] for i in positions[start : start + per_page]]
        dropped_kept = cached.dropped_count
        dropped_total = job.store.dropped_total if relabels else 0
        return DiscoveryPage(
            relabels=relabels,
            total=len(items),
            active=len(items) - dropped_kept,
            dropped=dropped_total,
            dropped_kept=dropped_kept,
            matched=len(positions),
            page=page,
            per_page=per_page,
            rows=_rows(job, shown),
        )


def _rows(job: Job, shown: Sequence[Discovered | Entry]) -> list[Row]:
    """The page's rows; only the dropped ones shown are run through the rules again."""
    rules = None
    rows = []
    for item in shown:
        if isinstance(item, Entry):
            labels = _ordered(item.labels)
            rows.append(Row(labels, labels))
            continue
        before = item.labels
        if item.entry is not None:
            rows.append(Row(_ordered(before), _ordered(item.entry.labels)))
            continue
        if rules is None:
            rules = compile_rules(job.config.relabel_configs)
        index = dropping_rule(before, rules)
        problem = None
        if index is None:
            relabeled = process(before, rules)
            problem = (relabeled is not None and relabel_problem(relabeled)) or (
                "refused by the target checks after relabeling"
            )
        rows.append(Row(_ordered(before), None, index, problem))
    return rows


DISCOVERY_VIEW_KEY = web.AppKey("discovery_view", DiscoveryView)
