"""The local copy of a Eureka registry: built from a full answer, moved by deltas as
Eureka's own client moves it (``DiscoveryClient.updateDelta``), checked with Eureka's
reconcile hash code. Every function returns a new copy: the old one stays valid until
the caller decides the refresh has succeeded.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ...model import LabelSet, TargetGroup
from .decode import Applications, RawInstance
from .labels import instance_labels


@dataclass(frozen=True, slots=True)
class Entry:
    """One instance of the local copy: its status (for the hash code), and its target
    or why it was skipped."""

    status: str
    labels: LabelSet | None
    problem: str | None = None


def entry(app: str, raw: RawInstance) -> Entry:
    """The local copy's entry for a decoded instance."""
    try:
        return Entry(raw.status(), instance_labels(app, raw))
    except ValueError as exc:
        return Entry(raw.status(), None, str(exc))


Apps = dict[str, dict[str, Entry]]  # application name -> instance id -> entry


def full_copy(answer: Applications) -> Apps:
    """The local copy a full ``/apps`` answer describes (empty applications left out)."""
    apps: Apps = {}
    for name, instances in answer.apps:
        for raw in instances:
            apps.setdefault(name, {})[raw.key()] = entry(name, raw)
    return apps


def apply_delta(apps: Apps, delta: Applications) -> tuple[Apps, set[str]]:
    """``apps`` with ``delta`` applied, as Eureka's ``DiscoveryClient.updateDelta``:
    ADDED and MODIFIED put the instance, DELETED removes it (and its application when it
    is the last). ``apps`` is not changed; returns the new copy and the touched names."""
    result = dict(apps)
    touched: set[str] = set()
    for name, instances in delta.apps:
        for raw in instances:
            action = raw.fields.get("actionType", "")
            if action not in ("ADDED", "MODIFIED", "DELETED"):
                continue  # Eureka's client ignores an instance without a known action
            if name not in touched:
                result[name] = dict(result.get(name, {}))
                touched.add(name)
            if action == "DELETED":
                result[name].pop(raw.key(), None)
            else:
                result[name][raw.key()] = entry(name, raw)
    for name in touched:
        if not result[name]:
            del result[name]
    return result, touched


def hash_code(apps: Apps) -> str:
    """Eureka's reconcile hash code of a copy: ``<STATUS>_<count>_`` per status, sorted."""
    counts = Counter(e.status for instances in apps.values() for e in instances.values())
    return "".join(f"{status}_{counts[status]}_" for status in sorted(counts))


def app_group(name: str, instances: dict[str, Entry]) -> TargetGroup:
    """One application's targets (skipped instances left out), sorted by instance id."""
    targets = tuple(
        entry.labels for _, entry in sorted(instances.items()) if entry.labels is not None
    )
    return TargetGroup(source=name, targets=targets)
