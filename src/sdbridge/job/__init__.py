"""One job: runs its mechanisms, merges their updates, and publishes the result.

A job is three parts with one direction of flow:

- mechanisms (:class:`MechanismRunner`), each supervised: a crash is recorded, backed off
  and restarted, and the restart's first send replaces what the mechanism sent before;
- the :class:`~sdbridge.job.store.TargetStore` ("what the job knows"), merged by
  ``(config index, source)``, relabeled and rendered once per group as it arrives;
- the :class:`~sdbridge.job.publisher.Publisher` ("when and where it is published"):
  pacing, the mass-deletion guard, the snapshot and the outputs.

Nothing is published until every mechanism has completed its first sync. The job
records a successful sync of a mechanism whenever it accepts one of its updates; the
mechanism itself reports only failures and "watch current" events (see
:class:`~sdbridge.discovery.base.DiscoveryContext`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import metrics
from ..asyncutil import Backoff
from ..config import GlobalConfig, JobConfigBase
from ..discovery import mechanisms
from ..discovery.base import Discoverer, DiscoveryContext, MechanismConfig, is_watch
from ..errors import DiscoveryError, InvalidTargetError
from ..guard import Guard
from ..model import TargetGroup
from ..outputs import Output, SnapshotWriter
from ..outputs.file import FileOutput
from ..relabel import compile_rules
from ..snapshot import Snapshot
from ..state import StateOutput
from ..workers import run_publish_work, settle
from .publisher import Clock, Publisher
from .status import JobStatus, MechanismState, OutputState
from .store import Discovered, Origin, RenderedGroups, TargetStore

if TYPE_CHECKING:
    from ..registry.store import StoreHandle

__all__ = [
    "Backoff",
    "Discovered",
    "Job",
    "JobStatus",
    "MechanismRunner",
    "MechanismState",
    "OutputState",
]

log = logging.getLogger("sdbridge.job")

# Updates bigger than this are rendered off the event loop, so the API stays responsive.
_RENDER_IN_THREAD_ABOVE = 2000

STRICT_MECHANISMS = frozenset({"registry", "exec", "sql"})
"""Built-in mechanisms whose targets sdbridge owns; plugins are strict too."""


class MechanismRunner:
    """One ``<name>_sd_configs`` entry of a job: its config, context and discoverer."""

    def __init__(
        self,
        job: str,
        index: int,
        name: str,
        config: MechanismConfig,
        global_config: GlobalConfig,
        registry_store: StoreHandle | None = None,
    ) -> None:
        self.name = name
        self.index = index
        self.config = config
        self.context = DiscoveryContext(
            job=job,
            mechanism=name,
            index=index,
            data_dir=global_config.data_dir,
            registry_store=registry_store,
        )
        # Set by the job when it has merged this mechanism's first full set.
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
        self.context.status.watches = is_watch(self.discoverer)

    @property
    def label(self) -> str:
        """Where this mechanism sits in the config, e.g. ``exec_sd_configs[0]``."""
        return f"{self.name}_sd_configs[{self.index}]"

    @property
    def origin(self) -> Origin:
        """What the store needs to know of this mechanism to render its updates."""
        return Origin(self.index, self.label, self.context, strict=self.strict_targets)


class Job:
    """A running job. Create it, then ``await run()`` until cancelled."""

    def __init__(
        self,
        config: JobConfigBase,
        global_config: GlobalConfig,
        *,
        extra_outputs: Sequence[Output] = (),
        state_dir: Path | None = None,
        clock: Clock | None = None,
        registry_store: StoreHandle | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.global_config = global_config
        self.runners = [
            MechanismRunner(config.name, index, name, mech_config, global_config, registry_store)
            for index, (name, mech_config) in enumerate(config.mechanism_configs())
        ]
        self._progress = asyncio.Event()  # a mechanism failed: sync_once re-checks
        for runner in self.runners:
            runner.context.on_failure = self._progress.set
        outputs: list[Output] = list(extra_outputs)
        self.file_output: FileOutput | None = None
        if config.output.file is not None:
            self.file_output = FileOutput(
                config.name,
                config.output.file,
                mode=config.output.file_mode,
                pretty=config.output.pretty,
            )
            outputs.append(self.file_output)
        # Last-known-good persistence (the daemon turns it on; see state.py).
        self.state_output: StateOutput | None = None
        if state_dir is not None:
            self.state_output = StateOutput(config.name, state_dir)
            outputs.append(self.state_output)
        self.guard = Guard(config.guard, job=config.name)
        self.store = TargetStore(
            config.name,
            compile_rules(config.relabel_configs),
            keep_dropped_targets=config.keep_dropped_targets,
        )
        self.publisher = Publisher(
            config.name,
            self.store,
            delay=global_config.publish_delay,
            guard=self.guard,
            outputs=outputs,
            ready=lambda: self.synced,
            clock=clock,
        )
        self._synced_gauge = metrics.JOB_SYNCED.labels(job=self.name)
        self._last_success = metrics.LAST_SUCCESS.labels(job=self.name)
        self._synced_gauge.set(0)

    # --- state -------------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot | None:
        """The snapshot being served, or None before the first complete sync."""
        return self.publisher.snapshot

    @property
    def outputs(self) -> list[Output]:
        """Where the job's snapshots go (the publisher hands them over)."""
        return self.publisher.outputs

    @outputs.setter
    def outputs(self, outputs: list[Output]) -> None:
        self.publisher.outputs = outputs

    @property
    def last_publish(self) -> float | None:
        """Unix time of the last publish (or restore), None before it."""
        return self.publisher.last_publish

    @property
    def synced(self) -> bool:
        """Whether every mechanism's first full set has been merged."""
        return all(r.received for r in self.runners)

    def restore(self, snapshot: Snapshot) -> None:
        """Serve a last-known-good snapshot until the first complete sync replaces it."""
        self.publisher.restore(snapshot)

    def targets_before_relabeling(self) -> list[Discovered]:
        """With relabel rules: each target as discovered, with what relabeling made of it.

        Dropped targets are included up to ``keep_dropped_targets``; [] without rules.
        """
        return self.store.targets_before_relabeling()

    async def wait_published(self) -> Snapshot:
        """Wait until a snapshot from a complete sync has been published."""
        await self.publisher.published.wait()
        assert self.publisher.snapshot is not None
        return self.publisher.snapshot

    # --- running -----------------------------------------------------------------------

    async def run(self) -> None:
        """Run mechanisms, the publisher and the outputs until cancelled."""
        if self.state_output is not None:
            restored = await self.state_output.load()
            if restored is not None:
                self.restore(restored)
        try:
            async with asyncio.TaskGroup() as tasks:
                for output in self.outputs:
                    tasks.create_task(
                        self._run_output(output), name=f"{self.name}/output/{output.name}"
                    )
                for runner in self.runners:
                    tasks.create_task(self._supervise(runner), name=f"{self.name}/{runner.label}")
                tasks.create_task(self.publisher.run(), name=f"{self.name}/publish")
        finally:
            await settle()  # an output's shielded write in flight lands before we return

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
        self.publisher.pacer.delay = self.global_config.publish_delay.model_copy(
            update={"min": 0.0, "max": 0.0}
        )
        tasks: list[asyncio.Future[Any]] = [
            asyncio.create_task(self._supervise(r)) for r in self.runners
        ]
        tasks.append(asyncio.create_task(self.publisher.run()))
        published = asyncio.ensure_future(self.publisher.published.wait())
        tasks.append(published)
        try:
            async with asyncio.timeout(within):
                while not published.done():
                    failed = [r for r in self.runners if r.context.status.failures]
                    if failed:
                        details = "; ".join(
                            f"{r.label}: {r.context.status.last_error}" for r in failed
                        )
                        raise DiscoveryError(f"job {self.name!r}: {details}")
                    self._progress.clear()
                    progress = asyncio.ensure_future(self._progress.wait())
                    try:
                        await asyncio.wait({published, progress}, return_when="FIRST_COMPLETED")
                    finally:
                        progress.cancel()
        except TimeoutError:
            waiting = ", ".join(r.label for r in self.runners if not r.received)
            raise DiscoveryError(
                f"job {self.name!r}: no complete sync within {within:g}s "
                f"(waiting for: {waiting or 'the publish'})"
            ) from None
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert self.publisher.snapshot is not None
        return self.publisher.snapshot

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
            rendered = await self._render(runner, groups)
        except InvalidTargetError as exc:
            # Not a list of TargetGroups (a broken plugin): a failed refresh, state stays.
            runner.context.record_failure(exc)
            return False
        first = not runner.received
        changed = self.store.apply(runner.index, rendered, full=full)
        runner.received = True
        # Health is recorded here, once per accepted update, for every mechanism alike.
        runner.context.record_sync()
        if self.synced:
            self._synced_gauge.set(1)
            self._last_success.set(time.time())
        self.guard.observe_sync(runner.index, changed=changed)
        if changed or first:
            self.publisher.changed()
        else:
            self.publisher.synced()
        return True

    async def _render(self, runner: MechanismRunner, groups: list[TargetGroup]) -> RenderedGroups:
        untrusted: object = groups  # plugins are untrusted
        if not isinstance(untrusted, list) or not all(
            isinstance(g, TargetGroup) for g in untrusted
        ):
            raise InvalidTargetError(
                f"{runner.label} sent {type(groups).__name__}, not TargetGroups"
            )
        if sum(len(g.targets) for g in groups) > _RENDER_IN_THREAD_ABOVE:
            return await run_publish_work(self.store.render, runner.origin, groups)
        return self.store.render(runner.origin, groups)

    def status(self) -> JobStatus:
        """The job's state for the API and UI (configs in JSON mode: SecretStr masked)."""
        snapshot = self.publisher.snapshot
        return JobStatus(
            name=self.name,
            synced=self.synced,
            stale=snapshot.stale if snapshot is not None else None,
            stale_since=snapshot.created if snapshot is not None and snapshot.stale else None,
            targets=snapshot.target_count if snapshot is not None else 0,
            groups=snapshot.groups if snapshot is not None else 0,
            dropped_targets=self.store.dropped_total,
            last_publish=self.publisher.last_publish,
            guard=self.guard.status(),
            mechanisms=tuple(
                MechanismState(
                    name=r.name,
                    index=r.index,
                    config=r.config.model_dump(mode="json"),
                    health=dataclasses.replace(r.context.status),
                )
                for r in self.runners
            ),
            outputs=tuple(
                OutputState(o.name, str(o.path), o.last_error)
                for o in self.outputs
                if isinstance(o, SnapshotWriter)
            ),
        )


class _Failing:
    """Stands in for a discoverer whose constructor raised; its run raises the same error."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def run(self, send: object) -> None:
        raise DiscoveryError(f"cannot create the discoverer: {self.error}") from self.error
