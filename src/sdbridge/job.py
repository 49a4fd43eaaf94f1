"""One job: runs its mechanisms, merges their updates, relabels, guards and publishes.

State is the merge of every mechanism's groups keyed by (config index, source). Each
group is relabeled and rendered once when it arrives; a publish sorts the cached
entries into a :class:`Snapshot` and hands it to the outputs. Nothing is published
until every mechanism has completed its first sync; a burst of changes is batched by
the quiescence delay (``publish_delay``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from . import metrics
from .asyncutil import Backoff, wait_event
from .config import GlobalConfig, JobConfigBase
from .discovery import mechanisms
from .discovery.base import Discoverer, DiscoveryContext, MechanismConfig
from .errors import DiscoveryError, InvalidTargetError
from .guard import Guard
from .model import (
    ADDRESS_LABEL,
    LabelSet,
    TargetGroup,
    is_valid_address,
    is_valid_label_name,
    reserved_label_problem,
    target_problem,
)
from .outputs import Output, SnapshotWriter
from .outputs.file import FileOutput
from .relabel import Rule, compile_rules, process
from .render import Entry, Snapshot, entry_address, finish_sort, gc_paused, make_entry
from .state import StateOutput

log = logging.getLogger("sdbridge.job")

T = TypeVar("T")
GroupKey = tuple[int, str]
RenderedGroups = list[tuple[GroupKey, list[Entry] | None]]

# Updates bigger than this are rendered off the event loop, so the API stays responsive.
_RENDER_IN_THREAD_ABOVE = 2000


STRICT_MECHANISMS = frozenset({"registry", "exec", "sql"})
"""Built-in mechanisms whose targets sdbridge owns; plugins are strict too."""


class MechanismRunner:
    """One ``<name>_sd_configs`` entry of a job: its config, context and discoverer."""

    def __init__(
        self, job: str, index: int, name: str, config: MechanismConfig, global_config: GlobalConfig
    ) -> None:
        self.name = name
        self.index = index
        self.config = config
        self.context = DiscoveryContext(
            job=job, mechanism=name, index=index, data_dir=global_config.data_dir
        )
        # Set by the job when it has merged this mechanism's first full set; the
        # mechanism's own status.synced is set before that send reaches the job.
        self.received = False
        mechanism = mechanisms()[name]
        # sdbridge's own sources (its registry, exec, sql, plugins) are checked strictly; the
        # others publish what Prometheus would discover (see model.target_problem).
        self.strict_targets = (
            name in STRICT_MECHANISMS or not mechanism.factory.__module__.startswith("sdbridge.")
        )
        try:
            self.discoverer: Discoverer = mechanism.factory(config, self.context)
        except Exception as exc:
            # A plugin whose constructor fails: its job runs on, this mechanism reports.
            self.discoverer = _Failing(exc)

    @property
    def label(self) -> str:
        """Where this mechanism sits in the config, e.g. ``exec_sd_configs[0]``."""
        return f"{self.name}_sd_configs[{self.index}]"


class Job:
    """A running job. Create it, then ``await run()`` until cancelled."""

    def __init__(
        self,
        config: JobConfigBase,
        global_config: GlobalConfig,
        *,
        extra_outputs: Sequence[Output] = (),
        state_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.global_config = global_config
        self.runners = [
            MechanismRunner(config.name, index, name, mech_config, global_config)
            for index, (name, mech_config) in enumerate(config.mechanism_configs())
        ]
        self.outputs: list[Output] = list(extra_outputs)
        self.file_output: FileOutput | None = None
        if config.output.file is not None:
            self.file_output = FileOutput(
                config.name,
                config.output.file,
                mode=config.output.file_mode,
                pretty=config.output.pretty,
            )
            self.outputs.append(self.file_output)
        # Last-known-good persistence (the daemon turns it on; see state.py).
        self.state_output: StateOutput | None = None
        if state_dir is not None:
            self.state_output = StateOutput(config.name, state_dir)
            self.outputs.append(self.state_output)
        self.guard = Guard(config.guard, job=config.name)
        self._rules: list[Rule] = compile_rules(config.relabel_configs)
        self._groups: dict[GroupKey, list[Entry]] = {}
        # The entries of the last build in sorted order (duplicates kept), plus what has
        # changed since: a publish then re-sorts a nearly sorted list, which Timsort does
        # in about linear time, instead of sorting every entry from scratch.
        self._order: list[Entry] = []
        self._order_valid = False
        self._gone: set[int] = set()  # ids of entries in _order or _new that left _groups
        self._new: list[Entry] = []
        self._dirty = False
        # Any sync (or a guard release) wakes the publish loop; only a change moves
        # _last_change, so syncs that found nothing new never postpone a pending publish.
        self._wake = asyncio.Event()
        self._last_change = 0.0
        # The snapshot the guard holds back, with the _last_change it was built at: syncs
        # that change nothing re-ask the guard about it instead of rebuilding the job.
        self._held: tuple[float, Snapshot] | None = None
        self._release_timer: asyncio.TimerHandle | None = None
        self._published = asyncio.Event()
        self._snapshot: Snapshot | None = None
        self.last_publish: float | None = None
        self._targets_gauge = metrics.JOB_TARGETS.labels(job=self.name)
        self._groups_gauge = metrics.JOB_GROUPS.labels(job=self.name)
        self._synced_gauge = metrics.JOB_SYNCED.labels(job=self.name)
        self._stale_gauge = metrics.JOB_STALE.labels(job=self.name)
        self._last_success = metrics.LAST_SUCCESS.labels(job=self.name)
        self._publish_duration = metrics.PUBLISH_DURATION.labels(job=self.name)
        self._http_published = metrics.PUBLISH_TOTAL.labels(job=self.name, output="http")
        self._synced_gauge.set(0)

    # --- state -------------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot | None:
        """The snapshot being served, or None before the first complete sync."""
        return self._snapshot

    @property
    def synced(self) -> bool:
        """Whether every mechanism's first full set has been merged."""
        return all(r.received for r in self.runners)

    def restore(self, snapshot: Snapshot) -> None:
        """Serve a last-known-good snapshot until the first complete sync replaces it."""
        if self._snapshot is None:
            self._set_snapshot(snapshot)

    async def wait_published(self) -> Snapshot:
        """Wait until a snapshot from a complete sync has been published."""
        await self._published.wait()
        assert self._snapshot is not None
        return self._snapshot

    # --- running -----------------------------------------------------------------------

    async def run(self) -> None:
        """Run mechanisms, the publisher and the outputs until cancelled."""
        if self.state_output is not None:
            restored = await self.state_output.load()
            if restored is not None:
                self.restore(restored)
        async with asyncio.TaskGroup() as tasks:
            for output in self.outputs:
                tasks.create_task(
                    self._run_output(output), name=f"{self.name}/output/{output.name}"
                )
            for runner in self.runners:
                tasks.create_task(self._supervise(runner), name=f"{self.name}/{runner.label}")
            tasks.create_task(self._publish_loop(), name=f"{self.name}/publish")

    async def _run_output(self, output: Output) -> None:
        """Run an output; one that crashes (a bug) is logged and restarted, never fatal."""
        backoff = Backoff(1.0, 30.0)
        while True:
            try:
                await output.run()
                raise RuntimeError("run() returned; an output must run until cancelled")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "output %s crashed; restarting it", output.name, extra={"job": self.name}
                )
            await asyncio.sleep(backoff.next_delay())

    async def sync_once(self, within: float | None = None) -> Snapshot:
        """Run every mechanism until its first sync and publish the result once.

        Raises DiscoveryError naming the mechanisms whose first refresh failed, or that
        had not synced after ``within`` seconds.
        """
        delay = self.global_config.publish_delay.model_copy(update={"min": 0.0, "max": 0.0})
        self.global_config = self.global_config.model_copy(update={"publish_delay": delay})
        tasks = [asyncio.create_task(self._supervise(r)) for r in self.runners]
        tasks.append(asyncio.create_task(self._publish_loop()))
        deadline = None if within is None else time.monotonic() + within
        try:
            while not self._published.is_set():
                failed = [r for r in self.runners if r.context.status.failures]
                if failed:
                    details = "; ".join(f"{r.label}: {r.context.status.last_error}" for r in failed)
                    raise DiscoveryError(f"job {self.name!r}: {details}")
                if deadline is not None and time.monotonic() > deadline:
                    waiting = ", ".join(r.label for r in self.runners if not r.received)
                    raise DiscoveryError(
                        f"job {self.name!r}: no complete sync within {within:g}s "
                        f"(waiting for: {waiting or 'the publish'})"
                    )
                await asyncio.sleep(0.02)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert self._snapshot is not None
        return self._snapshot

    async def _supervise(self, runner: MechanismRunner) -> None:
        """Keep a discoverer running: a crash is recorded, backed off and restarted.

        The first send of every ``run`` is a full set, so it replaces everything the
        mechanism sent before (a restarted discoverer does not know what it sent).
        """
        backoff = Backoff(1.0, 30.0)
        while True:
            full = True

            async def send(groups: list[TargetGroup]) -> None:
                nonlocal full
                if await self._receive(runner, groups, full=full):
                    full = False

            try:
                await runner.discoverer.run(send)
                raise DiscoveryError("run() returned; a discoverer must run until cancelled")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                runner.context.record_failure(exc)
            await asyncio.sleep(backoff.next_delay())

    async def _receive(
        self, runner: MechanismRunner, groups: list[TargetGroup], *, full: bool = False
    ) -> bool:
        """Merge a discoverer's update into the job; return whether it was accepted.

        ``full`` means ``groups`` is the mechanism's whole set, replacing its earlier groups.
        """
        try:
            rendered = await self._render_groups(runner, groups)
        except InvalidTargetError as exc:
            # Not a list of TargetGroups (a broken plugin): a failed refresh, state stays.
            runner.context.record_failure(exc)
            return False
        changed = bool(rendered) or not runner.received
        runner.received = True
        runner.context.status.synced = True
        if full:
            sent = {key for key, _ in rendered}
            stale = [k for k in self._groups if k[0] == runner.index and k not in sent]
            for key in stale:
                self._replace_group(key, None)
            changed = changed or bool(stale)
        for key, entries in rendered:
            self._replace_group(key, entries)
        if changed:
            self._dirty = True
            self._last_change = time.monotonic()
        self.guard.observe_sync(runner.index, changed=changed)
        self._wake.set()
        return True

    def _replace_group(self, key: GroupKey, entries: list[Entry] | None) -> None:
        """Set (or, with None, remove) one group's entries, noting the change for _publish."""
        old = self._groups.pop(key, None)
        if old:
            self._gone.update(map(id, old))
        if entries is not None:
            self._groups[key] = entries
            self._new.extend(entries)

    def _entries_to_build(self) -> list[Entry]:
        """Every entry of the job, in an order close to sorted when few changed."""
        gone, new = self._gone, self._new
        self._gone, self._new = set(), []
        if not self._order_valid or 2 * (len(gone) + len(new)) > len(self._order):
            return [e for group in self._groups.values() for e in group]
        # Entries in _order and _new stay referenced until here, so their ids are unique.
        entries = [e for e in self._order if id(e) not in gone] if gone else list(self._order)
        entries.extend(e for e in new if id(e) not in gone)
        return entries

    async def _render_groups(
        self, runner: MechanismRunner, groups: list[TargetGroup]
    ) -> RenderedGroups:
        untrusted: object = groups  # plugins are untrusted
        if not isinstance(untrusted, list) or not all(
            isinstance(g, TargetGroup) for g in untrusted
        ):
            raise InvalidTargetError(
                f"{runner.label} sent {type(groups).__name__}, not TargetGroups"
            )
        if sum(len(g.targets) for g in groups) > _RENDER_IN_THREAD_ABOVE:
            return await asyncio.to_thread(_paused, partial(self._render_all, runner, groups))
        return self._render_all(runner, groups)

    def _render_all(self, runner: MechanismRunner, groups: list[TargetGroup]) -> RenderedGroups:
        result: RenderedGroups = []
        for group in groups:
            key = (runner.index, group.source)
            if not group.targets:
                result.append((key, None))
                continue
            entries = []
            for labels in group.merged_targets():
                entry = self._process_target(runner, group.source, labels)
                if entry is not None:
                    entries.append(entry)
            result.append((key, entries))
        return result

    def _process_target(
        self, runner: MechanismRunner, source: str, labels: LabelSet
    ) -> Entry | None:
        if self._rules:
            relabeled = process(labels, self._rules)
            if relabeled is None:
                return None
            problem = _relabel_problem(relabeled)
            if problem:
                runner.context.record_invalid(f"{runner.label} source {source!r}", problem)
                return None
            labels = relabeled
        # The address was checked as host:port already (by TargetGroup or after relabeling).
        if runner.strict_targets:
            problem = target_problem(labels, strict=True)
        else:
            reserved = reserved_label_problem(labels)
            problem = reserved[1] if reserved is not None else None
        if problem:
            runner.context.record_invalid(f"{runner.label} source {source!r}", problem)
            return None
        return make_entry(labels)

    async def _publish_loop(self) -> None:
        while True:
            await self._wake.wait()
            await self._quiesce()
            if self.synced:
                self._synced_gauge.set(1)
                self._last_success.set(time.time())
                if self._dirty:
                    self._dirty = False
                    await self._publish()

    async def _quiesce(self) -> None:
        """Wait until changes pause for ``min`` after the last one, but no longer than ``max``."""
        delay = self.global_config.publish_delay
        deadline = time.monotonic() + delay.max
        while True:
            self._wake.clear()
            remaining = min(self._last_change + delay.min, deadline) - time.monotonic()
            if remaining <= 0:
                return
            if not await wait_event(self._wake, remaining):
                return

    async def _publish(self) -> None:
        started = time.perf_counter()
        built_at = self._last_change  # before the build: a change during it is not in it
        held, self._held = self._held, None
        if held is not None and held[0] == built_at:
            snapshot = held[1]
        else:
            snapshot = await self._build()
        previous = self._snapshot
        if previous is not None and not previous.stale and previous.body == snapshot.body:
            self.guard.admit(previous, snapshot)  # back to what is published: a hold ends
            self._published.set()
            return
        if not self.guard.admit(previous, snapshot):
            # Re-evaluate on every later sync, and when hold_for runs out.
            self._held = (built_at, snapshot)
            self._dirty = True
            wait = self.guard.seconds_until_release()
            if self._release_timer is not None:
                self._release_timer.cancel()  # one pending wake-up per hold, not one per sync
            if wait is not None:
                loop = asyncio.get_running_loop()
                self._release_timer = loop.call_later(wait + 0.01, self._wake.set)
            return
        self._set_snapshot(snapshot)
        self._published.set()
        self._publish_duration.observe(time.perf_counter() - started)

    async def _build(self) -> Snapshot:
        """Sort the job's entries (off the loop when many) and render a snapshot."""
        entries = self._entries_to_build()
        build = partial(_build, self.name, entries, len(self._groups))
        self._order_valid = False  # until this build has sorted ``entries``
        if len(entries) > _RENDER_IN_THREAD_ABOVE:
            ordered, snapshot = await asyncio.to_thread(_paused, build)
        else:
            ordered, snapshot = build()
        self._order, self._order_valid = ordered, True
        return snapshot

    def _set_snapshot(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self.last_publish = time.time()
        self._targets_gauge.set(snapshot.target_count)
        self._groups_gauge.set(snapshot.groups)
        self._stale_gauge.set(1 if snapshot.stale else 0)
        self._http_published.inc()
        for output in self.outputs:
            output.publish(snapshot)

    def status(self) -> dict[str, Any]:
        """The job's state for the API and UI; secrets in configs are masked."""
        snapshot = self._snapshot
        return {
            "name": self.name,
            "synced": self.synced,
            "stale": snapshot.stale if snapshot is not None else None,
            # A stale snapshot's creation time: when its data was last fresh.
            "stale_since": snapshot.created if snapshot is not None and snapshot.stale else None,
            "targets": snapshot.target_count if snapshot is not None else 0,
            "groups": snapshot.groups if snapshot is not None else 0,
            "last_publish": self.last_publish,
            "guard": self.guard.status(),
            "mechanisms": [
                {
                    "name": r.name,
                    "index": r.index,
                    "config": r.config.model_dump(mode="json"),
                    **vars(r.context.status),
                }
                for r in self.runners
            ],
            "outputs": [
                {"name": o.name, "path": str(o.path), "last_error": o.last_error}
                for o in self.outputs
                if isinstance(o, SnapshotWriter)
            ],
        }


class _Failing:
    """Stands in for a discoverer whose constructor raised; its run raises the same error."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def run(self, send: object) -> None:
        raise DiscoveryError(f"cannot create the discoverer: {self.error}") from self.error


def _paused(work: Callable[[], T]) -> T:
    with gc_paused():
        return work()


def _build(job: str, entries: list[Entry], groups: int) -> tuple[list[Entry], Snapshot]:
    """Sort ``entries`` in place (kept for the next build) and render the snapshot."""
    entries.sort(key=entry_address)
    return entries, Snapshot.build(job, finish_sort(entries), groups=groups)


def _relabel_problem(labels: LabelSet) -> str | None:
    address = labels.get(ADDRESS_LABEL)
    if not address:
        return "no __address__ left after relabeling"
    if not is_valid_address(address):
        return f"__address__ {address!r} is not host:port after relabeling"
    for name in labels:
        if not is_valid_label_name(name):
            return f"invalid label name {name!r} after relabeling"
    return None
