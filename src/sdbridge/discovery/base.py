"""The Discoverer contract and the thick base every mechanism builds on.

A mechanism is a class with ``async def run(self, send)``. ``run`` returns only when
cancelled; its first ``send`` is the full set of target groups, later sends carry the
changed groups keyed by ``source``, and a group with no targets removes its source.
A send with an empty list means "synced, nothing changed".

Polling mechanisms subclass :class:`RefreshDiscoverer` and implement ``refresh()``,
which returns the full set or raises: the base supplies the interval, the diffing,
backoff with jitter, metrics, status and "raise means keep the last good".
Watch-based mechanisms implement ``run`` and use :class:`GroupDiff`, :class:`Backoff`
and :meth:`DiscoveryContext.record_failure` / :meth:`record_current` for the same; the job
records every accepted send as a successful sync.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Generic, Protocol, Self, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, field_validator

from .. import metrics
from ..asyncutil import Backoff, wait_event
from ..durations import Duration
from ..errors import SdbridgeError, describe
from ..model import TargetGroup

if TYPE_CHECKING:
    from ..registry.store import StoreHandle

Send = Callable[[list[TargetGroup]], Awaitable[None]]
"""What a discoverer calls with its updates."""

log = logging.getLogger("sdbridge.discovery")


class Discoverer(Protocol):
    """The whole SDK contract: run until cancelled, sending updates."""

    async def run(self, send: Send) -> None:
        """Discover targets and call ``send`` with updates; return only when cancelled."""
        ...


class MechanismConfig(BaseModel):
    """Base of every ``<name>_sd_configs`` entry: frozen, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def resolve_paths(self, base_dir: Path) -> Self:
        """Return a copy whose relative paths are resolved against ``base_dir``.

        ``base_dir`` is the config file's directory (Prometheus's convention). The default
        resolves nested option blocks (``tls_config``, ``basic_auth`` ...), which resolve
        their own files; a config with file options of its own (a working directory)
        overrides it, typically with :func:`resolve_path` and ``super()``.
        """
        update = {
            name: value.resolve_paths(base_dir)
            for name, value in self
            if isinstance(value, MechanismConfig)
        }
        return self.model_copy(update=update) if update else self


def resolve_path(path: Path, base_dir: Path) -> Path:
    """``path`` if absolute, else ``base_dir / path`` (normalized, symlinks untouched)."""
    return path if path.is_absolute() else Path(os.path.normpath(base_dir / path))


def require_positive(value: float, name: str = "") -> float:
    """``value`` if above 0; the ValueError a config validator raises otherwise.

    ``name`` is left out where pydantic already names the field in the error.
    """
    if value <= 0:
        raise ValueError(f"{name} must be greater than 0".lstrip())
    return value


class RefreshConfig(MechanismConfig):
    """Config of a polling mechanism."""

    refresh_interval: Duration = 60.0

    @field_validator("refresh_interval")
    @classmethod
    def _positive_interval(cls, value: float) -> float:
        return require_positive(value, "refresh_interval")


@dataclass
class MechanismStatus:
    """What the job, the API and the UI know of one mechanism's health.

    ``last_success``: the last accepted update or "watch current" event (the view was
    known current then). ``last_current``: the last "watch current" event alone.
    ``refreshes`` counts accepted updates and failures. ``healthy_since``: when the
    current run of health began (None while failing or before the first sync).
    ``watches``: the mechanism follows a watch rather than polling, so a quiet backend
    leaves ``last_success`` old while the view is current ("watching since ...").
    """

    synced: bool = False
    last_success: float | None = None
    last_error: str | None = None
    failing_since: float | None = None
    refreshes: int = 0
    failures: int = 0
    last_current: float | None = None
    healthy_since: float | None = None
    watches: bool = False


@dataclass
class DiscoveryContext:
    """Where a discoverer runs: its job, mechanism name and index, logger, status.

    Health is reported one way. The job records a successful sync
    (:meth:`record_sync`) whenever it accepts an update from the mechanism, so a
    mechanism never reports its own successes; it reports only

    - :meth:`record_failure`: a refresh, a watch or a connection failed (nothing sent);
    - :meth:`record_current`: the backend confirmed the mechanism's view is still current
      without anything to send (an etcd progress notification, a blocking query or
      long-poll that returned with nothing new).
    """

    job: str
    mechanism: str
    index: int = 0
    data_dir: Path | None = None
    status: MechanismStatus = field(default_factory=MechanismStatus)
    # Called after every recorded failure (the job's ``sync_once`` waits on it).
    on_failure: Callable[[], None] | None = field(default=None, repr=False, compare=False)
    # The daemon's registry store, for ``registry_sd_configs`` (None: open its own).
    registry_store: StoreHandle | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.logger = logging.LoggerAdapter(
            logging.getLogger(f"sdbridge.discovery.{self.mechanism}"),
            {"job": self.job, "mechanism": self.mechanism, "index": self.index},
        )
        labels = {"job": self.job, "mechanism": self.mechanism}
        self._requests = metrics.BACKEND_REQUESTS.labels(**labels)
        self._refreshes = metrics.REFRESH_TOTAL.labels(**labels)
        self._failures = metrics.REFRESH_FAILURES.labels(**labels)
        self._duration = metrics.REFRESH_DURATION.labels(**labels)
        self._up = metrics.MECHANISM_UP.labels(**labels)
        self._invalid = metrics.INVALID_TARGETS.labels(**labels)

    def count_request(self, n: int = 1) -> None:
        """Count requests sent to the backend."""
        self._requests.inc(n)

    def record_invalid(self, what: str, error: Exception | str) -> None:
        """Report one backend object skipped as invalid, naming it; the rest goes on."""
        self._invalid.inc()
        self.logger.warning("skipping invalid backend object %s: %s", what, error)

    def observe_duration(self, seconds: float) -> None:
        """Record how long a refresh (or a full resync) took; health is not touched."""
        self._duration.observe(seconds)

    def record_sync(self) -> None:
        """The job accepted an update of this mechanism (called by the job only)."""
        self._healthy(time.time())
        self.status.synced = True
        self.status.refreshes += 1
        self._refreshes.inc()

    def record_current(self, duration: float | None = None) -> None:
        """The backend confirmed the view is current, with nothing to send."""
        now = time.time()
        self._healthy(now)
        self.status.last_current = now
        if duration is not None:
            self._duration.observe(duration)

    def record_success(self, duration: float | None = None) -> None:
        """Older name of :meth:`record_current`, kept for plugins written against it."""
        self.record_current(duration)

    def _healthy(self, now: float) -> None:
        status = self.status
        if status.failing_since is not None:
            self.logger.info("mechanism recovered after %d failure(s)", status.failures)
        status.last_success = now
        status.last_error = None
        status.failing_since = None
        if status.healthy_since is None:
            status.healthy_since = now
        self._up.set(1)

    def record_failure(self, error: BaseException, duration: float | None = None) -> None:
        """Mark a failed sync; logs only when the failure starts or its message changes."""
        status = self.status
        message = describe(error)
        if status.failing_since is None or status.last_error != message:
            # A bug (not a backend problem) deserves its traceback, once.
            exc_info = error if not isinstance(error, SdbridgeError | OSError) else None
            self.logger.error(
                "refresh failed, keeping the last good targets: %s", message, exc_info=exc_info
            )
        if status.failing_since is None:
            status.failing_since = time.time()
        status.healthy_since = None
        status.last_error = message
        status.refreshes += 1
        status.failures += 1
        self._refreshes.inc()
        self._failures.inc()
        self._up.set(0)
        if duration is not None:
            self._duration.observe(duration)
        if self.on_failure is not None:
            self.on_failure()


__all__ = [
    "Backoff",  # re-exported: it moved to sdbridge.asyncutil
    "BaseDiscoverer",
    "Discoverer",
    "DiscoveryContext",
    "GroupDiff",
    "MechanismConfig",
    "MechanismStatus",
    "RefreshConfig",
    "RefreshDiscoverer",
    "Send",
    "resolve_path",
    "wait_event",  # re-exported: it moved to sdbridge.asyncutil
]

C = TypeVar("C", bound=MechanismConfig)


class BaseDiscoverer(Generic[C]):
    """Holds a mechanism's config and context."""

    def __init__(self, config: C, context: DiscoveryContext) -> None:
        self.config = config
        self.context = context
        self.log = context.logger

    async def run(self, send: Send) -> None:  # pragma: no cover - abstract
        """Discover targets until cancelled."""
        raise NotImplementedError


class GroupDiff:
    """Turns successive full sets into the changes the contract sends.

    The first call returns the whole set; later calls return only groups that changed,
    plus an empty group for each source that disappeared.

    It remembers a 128-bit digest of each source's group, not the group: a mechanism of
    100,000 targets would otherwise keep all of them as Python dicts between refreshes
    (about 2.5 KB a target), after the job has already rendered them compactly.
    """

    def __init__(self) -> None:
        self._last: dict[str, bytes] | None = None

    def reset(self) -> None:
        """Forget the last set: the next call returns a full set again."""
        self._last = None

    def changes(self, groups: list[TargetGroup]) -> list[TargetGroup]:
        """Return what changed since the previous full set; raise on duplicate sources."""
        current: dict[str, bytes] = {}
        for group in groups:
            if group.source in current:
                raise SdbridgeError(f"duplicate source {group.source!r} in one refresh")
            current[(" " + group.source)[1:]] = group_digest(group)  # a copy: see render.fresh_str
        previous, self._last = self._last, current
        if previous is None:
            return list(groups)
        changed = [g for g in groups if previous.get(g.source) != current[g.source]]
        changed.extend(TargetGroup(source=s) for s in previous.keys() - current.keys())
        return changed


def group_digest(group: TargetGroup) -> bytes:
    """A digest equal for equal groups (label order does not matter, target order does)."""
    data = orjson.dumps((group.labels, group.targets), option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(data, digest_size=16).digest()


RC = TypeVar("RC", bound=RefreshConfig)


class RefreshDiscoverer(BaseDiscoverer[RC]):
    """A polling mechanism: implement :meth:`refresh`, which returns the full set or raises.

    A refresh that raises sends nothing, so the job keeps the last good targets; the
    next attempt follows a jittered exponential backoff capped at the refresh interval.
    Subclasses may also implement :meth:`watch` (run alongside the loop) and call
    :meth:`request_refresh` to refresh early, e.g. on a backend event.
    """

    initial_backoff: ClassVar[float] = 1.0

    def __init__(self, config: RC, context: DiscoveryContext) -> None:
        super().__init__(config, context)
        self._wakeup = asyncio.Event()

    async def refresh(self) -> list[TargetGroup]:
        """Return the full current set of target groups, or raise."""
        raise NotImplementedError

    async def watch(self) -> None:
        """Optionally follow backend events and call :meth:`request_refresh`; default: none."""
        await asyncio.Event().wait()

    def request_refresh(self) -> None:
        """Refresh as soon as possible instead of waiting for the interval."""
        self._wakeup.set()

    async def run(self, send: Send) -> None:
        """Refresh forever; send the changes of each successful refresh."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.watch())
            await self._refresh_loop(send)

    async def _refresh_loop(self, send: Send) -> None:
        diff = GroupDiff()
        interval = self.config.refresh_interval
        backoff = Backoff(self.initial_backoff, max(interval, self.initial_backoff))
        while True:
            self._wakeup.clear()
            started = time.monotonic()
            try:
                changes = diff.changes(await self.refresh())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.context.record_failure(exc, time.monotonic() - started)
                delay = min(backoff.next_delay(), interval)
            else:
                # The job records the sync when it accepts the send below.
                self.context.observe_duration(time.monotonic() - started)
                backoff.reset()
                await send(changes)
                delay = interval
                # The job has rendered them: drop the groups (100,000 targets are ~250 MB
                # of dicts) instead of keeping them alive through the sleep.
                del changes
            await self._sleep(delay)

    async def _sleep(self, delay: float) -> None:
        await wait_event(self._wakeup, delay)


def is_watch(discoverer: object) -> bool:
    """Whether a discoverer follows a watch (its own ``run``) rather than polling.

    A ``RefreshDiscoverer`` polls; so does a watch mechanism configured ``watch: false``.
    """
    config = getattr(discoverer, "config", None)
    return (
        not isinstance(discoverer, RefreshDiscoverer)
        and getattr(config, "watch", True) is not False
    )
