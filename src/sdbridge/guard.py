"""Mass-deletion guard: a registry glitch must not make a fleet's targets vanish.

When a publish would drop more than ``max_drop_ratio`` of the job's targets, the
previous snapshot stays. The smaller set is published once the drop has been seen by
``confirmations`` further syncs in a row, or after ``hold_for``, whichever comes first.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from . import metrics
from .config import GuardConfig

log = logging.getLogger("sdbridge.guard")


class Guard:
    """Decides whether a job may publish a snapshot that drops many targets."""

    def __init__(self, config: GuardConfig, *, job: str) -> None:
        self.config = config
        self.job = job
        self._syncs = 0
        self._held_since: float | None = None
        self._syncs_at_hold = 0
        self._held_counts: tuple[int, int] | None = None
        self._holding = metrics.GUARD_HOLDING.labels(job=job)
        self._holds = metrics.GUARD_HOLDS.labels(job=job)
        self._holding.set(0)

    @property
    def holding(self) -> bool:
        """Whether an update is being held back now."""
        return self._held_since is not None

    def observe_sync(self) -> None:
        """Count one completed sync of any mechanism of the job."""
        self._syncs += 1

    def seconds_until_release(self) -> float | None:
        """While holding, the time left before ``hold_for`` releases the update."""
        if self._held_since is None:
            return None
        return max(0.0, self._held_since + self.config.hold_for - time.monotonic())

    def admit(self, previous: int, proposed: int) -> bool:
        """Return whether going from ``previous`` to ``proposed`` targets may be published."""
        config = self.config
        if not config.enabled or previous == 0 or proposed >= previous:
            self._release(None)
            return True
        ratio = (previous - proposed) / previous
        if ratio <= config.max_drop_ratio:
            self._release(None)
            return True
        if self._held_since is None:
            self._held_since = time.monotonic()
            self._syncs_at_hold = self._syncs
            self._held_counts = (previous, proposed)
            self._holding.set(1)
            self._holds.inc()
            log.warning(
                "holding the previous targets: the update would drop %d of %d (%.0f%%, limit "
                "%.0f%%); waiting for %d confirming syncs or %gs",
                previous - proposed,
                previous,
                ratio * 100,
                config.max_drop_ratio * 100,
                config.confirmations,
                config.hold_for,
                extra={"job": self.job},
            )
            return False
        self._held_counts = (previous, proposed)
        confirmed = self._syncs - self._syncs_at_hold >= config.confirmations
        if confirmed or time.monotonic() - self._held_since >= config.hold_for:
            self._release("confirmed" if confirmed else "hold_for elapsed")
            return True
        return False

    def _release(self, reason: str | None) -> None:
        if self._held_since is None:
            return
        if reason is not None:
            log.warning("releasing the held update (%s)", reason, extra={"job": self.job})
        else:
            log.info("the large drop went away; nothing held any more", extra={"job": self.job})
        self._held_since = None
        self._held_counts = None
        self._holding.set(0)

    def status(self) -> dict[str, Any]:
        """The guard's state for the API and UI."""
        return {
            "enabled": self.config.enabled,
            "holding": self.holding,
            "held_previous": self._held_counts[0] if self._held_counts else None,
            "held_proposed": self._held_counts[1] if self._held_counts else None,
            "confirmations_seen": self._syncs - self._syncs_at_hold if self.holding else None,
            "seconds_until_release": self.seconds_until_release(),
        }
