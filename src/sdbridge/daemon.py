"""The daemon: runs every job of a config, serves the web endpoints, and reloads.

A reload keeps every job whose config (and the global config) did not change running
undisturbed; changed jobs are restarted, removed ones stopped. An invalid config is
rejected and the running one stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from . import metrics
from .config import ConfigBase, GlobalConfig, JobConfigBase, load_config
from .errors import ConfigError
from .job import Job
from .masking import mask_text
from .registry.store import StoreHandle

log = logging.getLogger("sdbridge.daemon")


class Daemon:
    """Owns the running jobs; ``config_loader`` re-reads the config on reload."""

    def __init__(
        self,
        config: ConfigBase,
        *,
        config_path: Path | None = None,
        config_loader: Callable[[], ConfigBase] | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self._loader = config_loader or (lambda: load_config(self._require_path()))
        self.jobs: dict[str, Job] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.last_reload_error: str | None = None
        self.last_reload: float | None = None
        self._reload_lock = asyncio.Lock()
        self.on_jobs_changed: list[Callable[[Daemon], Any]] = []
        # The built-in registry's store, shared by its API and registry_sd_configs jobs.
        self.registry_store = StoreHandle(getattr(config, "registry", None))

    def _require_path(self) -> Path:
        if self.config_path is None:
            raise ConfigError("no config file to reload: sdbridge runs its built-in default")
        return self.config_path

    @property
    def ready(self) -> bool:
        """Whether every job has synced or serves its last-known-good state."""
        return all(job.snapshot is not None for job in self.jobs.values())

    def start(self) -> None:
        """Start every job of the current config."""
        for job_config in self.config.jobs:
            self._start_job(self._new_job(job_config, self.config.global_))
        metrics.CONFIG_RELOAD_SUCCESS.set(1)
        metrics.CONFIG_RELOAD_TIMESTAMP.set(time.time())
        self.last_reload = time.time()

    def _new_job(self, job_config: JobConfigBase, global_config: GlobalConfig) -> Job:
        # Daemon jobs keep their last-known-good state in <data_dir>/state.
        return Job(
            job_config,
            global_config,
            state_dir=global_config.data_dir / "state",
            registry_store=self.registry_store,
        )

    def _start_job(self, job: Job) -> None:
        self.jobs[job.name] = job
        task = asyncio.create_task(job.run(), name=f"job/{job.name}")
        task.add_done_callback(partial_log_crash(job.name))
        self._tasks[job.name] = task

    async def _stop_job(self, name: str) -> None:
        task = self._tasks.pop(name)
        self.jobs.pop(name)
        task.cancel()
        # A job that already died was logged by its done-callback; stopping it must not raise.
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        metrics.forget_job(name)

    async def reload(self) -> None:
        """Re-read the config and apply it; raise ConfigError and keep running if invalid.

        A failure of any kind (not only an invalid config) is counted, sets
        ``sdbridge_config_last_reload_successful`` to 0 and raises ConfigError, so that
        SIGHUP and ``/-/reload`` report it the same way.
        """
        async with self._reload_lock:
            try:
                new = await asyncio.to_thread(self._loader)
            except Exception as exc:
                self._reload_failed(exc, "config reload failed, the running config stays")
            try:
                kept, restarted, removed, added = await self._apply(new)
            except Exception as exc:
                self._reload_failed(exc, "config reload failed while applying the new config")
            self.last_reload_error = None
            self.last_reload = time.time()
            metrics.CONFIG_RELOAD_SUCCESS.set(1)
            metrics.CONFIG_RELOAD_TIMESTAMP.set(self.last_reload)
            metrics.CONFIG_RELOADS.labels(result="success").inc()
            log.info(
                "config reloaded: %d job(s) unchanged, %d restarted, %d removed, %d added",
                kept,
                restarted,
                removed,
                added,
            )

    def _reload_failed(self, exc: Exception, what: str) -> NoReturn:
        """Count and record a failed reload, then raise it as a ConfigError."""
        error = exc if isinstance(exc, ConfigError) else ConfigError(f"{type(exc).__name__}: {exc}")
        metrics.CONFIG_RELOAD_SUCCESS.set(0)
        metrics.CONFIG_RELOADS.labels(result="failure").inc()
        self.last_reload_error = mask_text(str(error))
        # An unexpected exception is a bug: its traceback goes to the log (masked there).
        log.error("%s: %s", what, error, exc_info=None if error is exc else exc)
        if error is exc:
            raise error
        raise error from exc

    async def _apply(self, new: ConfigBase) -> tuple[int, int, int, int]:
        """Apply ``new``: unchanged jobs keep their Job object and task untouched.

        Returns how many jobs were kept, restarted, removed and added.
        """
        global_changed = new.global_ != self.config.global_
        registry = getattr(new, "registry", None)
        if registry is not None and _backend(registry) != _backend(self.config):
            # Another registry backend: jobs restart to follow the new store.
            self.registry_store.configure(registry)
            global_changed = True
        wanted = {job.name: job for job in new.jobs}
        restarted = removed = 0
        for name in list(self.jobs):
            current = self.jobs[name]
            if name not in wanted:
                removed += 1
                await self._stop_job(name)
            elif global_changed or wanted[name] != current.config:
                restarted += 1
                await self._stop_job(name)
        kept = len(self.jobs)
        for name, job_config in wanted.items():
            if name not in self.jobs:
                self._start_job(self._new_job(job_config, new.global_))
        self.config = new
        for callback in self.on_jobs_changed:
            callback(self)
        return kept, restarted, removed, len(wanted) - kept - restarted

    async def stop(self) -> None:
        """Stop every job (in-flight file writes finish first), then close the registry store."""
        for name in list(self.jobs):
            await self._stop_job(name)
        await self.registry_store.close()


def _backend(config: object) -> object:
    """Where the built-in registry keeps its data, per the ``registry:`` section."""
    registry = getattr(config, "registry", config)
    return (getattr(registry, "backend", None), getattr(registry, "etcd", None))


def partial_log_crash(name: str) -> Callable[[asyncio.Task[None]], None]:
    """A done-callback that logs a job task that died of anything but cancellation."""

    def done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("job %s stopped unexpectedly", name, exc_info=task.exception())

    return done
