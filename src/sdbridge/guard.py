"""Mass-deletion guard: a registry glitch must not make a fleet's targets vanish.

When an update would remove more than ``max_drop_ratio`` of the published targets (a
target is removed when its ``__address__`` no longer appears; label changes do not
count), the previous snapshot stays published and the update is held. The smaller set
is published once the drop has been confirmed by ``confirmations`` further syncs of the
mechanisms whose changes made it, in a row, or after ``hold_for``, whichever comes
first. If a later sync brings the targets back, the hold simply ends.

Only syncs of the mechanisms that caused the drop confirm it: in a job with two
mechanisms, the healthy one refreshing does not confirm the other one's glitch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from . import metrics
from .config import GuardConfig
from .snapshot import Snapshot

log = logging.getLogger("sdbridge.guard")


@dataclass(frozen=True, slots=True)
class GuardStatus:
    """The guard's configuration and what it holds now (``held_*`` are None unless holding)."""

    enabled: bool
    max_drop_ratio: float
    confirmations: int
    hold_for: float
    holding: bool
    held_previous: int | None
    held_proposed: int | None
    held_removed: int | None
    confirmations_seen: int | None
    seconds_until_release: float | None
    holds_total: int
    last_release: str | None


def removed_targets(previous: Snapshot, proposed: Snapshot) -> int:
    """How many of ``previous``'s targets have an address that ``proposed`` lacks."""
    if proposed.target_count == 0:
        return previous.target_count
    kept = {entry.address for entry in proposed.entries}
    return sum(1 for entry in previous.entries if entry.address not in kept)


class Guard:
    """Decides whether a job may publish a snapshot that removes many targets.

    The job calls :meth:`observe_sync` for every sync of a mechanism (``changed``: the
    sync changed groups) and :meth:`admit` before each publish.
    """

    def __init__(self, config: GuardConfig, *, job: str) -> None:
        self.config = config
        self.job = job
        self._changed_since_publish: set[int] = set()
        self._held_since: float | None = None
        self._suspects: set[int] | None = None  # None: any mechanism's sync confirms
        self._confirmations = 0
        self._held_counts: tuple[int, int, int] | None = None  # previous, proposed, removed
        self.holds = 0
        self.last_release: str | None = None
        self._holding = metrics.GUARD_HOLDING.labels(job=job)
        self._holds = metrics.GUARD_HOLDS.labels(job=job)
        self._holding.set(0)

    @property
    def holding(self) -> bool:
        """Whether an update is being held back now."""
        return self._held_since is not None

    def observe_sync(self, mechanism: int | None = None, *, changed: bool = True) -> None:
        """Record one completed sync of mechanism index ``mechanism`` of the job."""
        if self._held_since is None:
            if changed and mechanism is not None:
                self._changed_since_publish.add(mechanism)
            return
        if self._suspects is None or mechanism is None or mechanism in self._suspects:
            self._confirmations += 1
        elif changed:
            # Its change is part of what is held now; its later syncs confirm too.
            self._suspects.add(mechanism)

    def seconds_until_release(self) -> float | None:
        """While holding, the time left before ``hold_for`` releases the update."""
        if self._held_since is None:
            return None
        return max(0.0, self._held_since + self.config.hold_for - time.monotonic())

    def admit(
        self, previous: Snapshot | None, proposed: Snapshot, *, removed_at_most: int | None = None
    ) -> bool:
        """Return whether going from ``previous`` to ``proposed`` may be published now.

        ``removed_at_most``: a bound on the targets removed, when the caller knows one (the
        entries the store dropped since ``previous`` was built): a small change is then
        admitted without comparing every address.
        """
        config = self.config
        if previous is None or not config.enabled or previous.target_count == 0:
            return self._admitted(None)
        if (
            removed_at_most is not None
            and not self.holding
            and removed_at_most / previous.target_count <= config.max_drop_ratio
        ):
            return self._admitted(None)
        removed = removed_targets(previous, proposed)
        ratio = removed / previous.target_count
        if ratio <= config.max_drop_ratio:
            return self._admitted(None)
        self._held_counts = (previous.target_count, proposed.target_count, removed)
        if self._held_since is None:
            self._start_hold(previous.target_count, proposed.target_count, removed, ratio)
            return False
        if self._confirmations >= config.confirmations:
            return self._admitted(f"confirmed by {self._confirmations} syncs")
        if time.monotonic() - self._held_since >= config.hold_for:
            return self._admitted(f"held for {config.hold_for:g}s")
        return False

    def _start_hold(self, previous: int, proposed: int, removed: int, ratio: float) -> None:
        self._held_since = time.monotonic()
        self._suspects = set(self._changed_since_publish) or None
        self._confirmations = 0
        self.holds += 1
        self._holding.set(1)
        self._holds.inc()
        log.warning(
            "holding the published targets: the update would remove %d of %d targets "
            "(%.0f%%, more than max_drop_ratio %.0f%%; %d would remain); publishing it after "
            "%d confirming syncs or %gs",
            removed,
            previous,
            ratio * 100,
            self.config.max_drop_ratio * 100,
            proposed,
            self.config.confirmations,
            self.config.hold_for,
            extra={"job": self.job},
        )

    def _admitted(self, reason: str | None) -> bool:
        self._changed_since_publish.clear()
        if self._held_since is None:
            return True
        if reason is not None:
            log.warning("publishing the held update: %s", reason, extra={"job": self.job})
        else:
            log.info(
                "the large drop went away before it was confirmed; nothing is held now",
                extra={"job": self.job},
            )
        self.last_release = reason or "drop went away"
        self._held_since = None
        self._suspects = None
        self._held_counts = None
        self._confirmations = 0
        self._holding.set(0)
        return True

    def status(self) -> GuardStatus:
        """The guard's state for the API and UI."""
        counts = self._held_counts if self.holding else None
        return GuardStatus(
            enabled=self.config.enabled,
            max_drop_ratio=self.config.max_drop_ratio,
            confirmations=self.config.confirmations,
            hold_for=self.config.hold_for,
            holding=self.holding,
            held_previous=counts[0] if counts else None,
            held_proposed=counts[1] if counts else None,
            held_removed=counts[2] if counts else None,
            confirmations_seen=self._confirmations if self.holding else None,
            seconds_until_release=self.seconds_until_release(),
            holds_total=self.holds,
            last_release=self.last_release,
        )
