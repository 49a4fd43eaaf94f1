"""The registry's store: SQLite (WAL) in ``data_dir``, mirrored in memory, with TTL expiry.

Every write goes through one worker thread that owns the SQLite connection, so the
event loop never blocks on disk and writes reach the database in the order they were
made. The in-memory mirror is updated on the event loop right after each commit, in
that same order; reads (the API's GETs, the mechanism) are served from memory.

Expiry is stored as absolute wall-clock time, so a TTL keeps counting while sdbridge is
stopped: an instance that ran out meanwhile is removed when the store opens.

Subscribers (the ``registry_sd_configs`` mechanism) are called on the event loop with
the keys whose *targets* changed: a registration, a changed address or labels, a
deregistration, an expiry. A heartbeat, or a re-registration with the same address and
labels, only moves the expiry and notifies nobody, so a busy fleet does not cause
publishes.

One store serves the whole process: its owner (the daemon) holds a :class:`StoreHandle`
and passes it to the API and the mechanism; an exclusive lock file keeps a second
process off the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import heapq
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from .. import metrics
from ..asyncutil import wait_event
from ..errors import BackendError
from .instance import (
    Instance,
    Key,
    RegistryStore,
    Subscribable,
    Subscriber,
    name_some,
)

if TYPE_CHECKING:
    from .config import RegistryConfig, RegistryEtcdConfig

log = logging.getLogger("sdbridge.registry")

DB_FILE = "registry.db"
# Expiry also wakes up at least this often, in case the wall clock jumped.
_MAX_SLEEP = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    service TEXT NOT NULL,
    instance TEXT NOT NULL,
    address TEXT NOT NULL,
    labels TEXT NOT NULL,
    ttl REAL NOT NULL,
    expires_at REAL NOT NULL,
    registered_at REAL NOT NULL,
    PRIMARY KEY (service, instance)
) WITHOUT ROWID
"""


_UPSERT = (
    "INSERT INTO instances (service, instance, address, labels, ttl, expires_at, registered_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (service, instance) DO UPDATE SET"
    " address=excluded.address, labels=excluded.labels, ttl=excluded.ttl,"
    " expires_at=excluded.expires_at"
)
_RENEW = "UPDATE instances SET expires_at=? WHERE service=? AND instance=?"
HEARTBEAT_WRITE_DELAY = 1.0
"""Seconds within which a heartbeat's new expiry reaches the database."""


@dataclass(slots=True)
class _Write:
    sql: str
    params: Any
    many: bool
    done: asyncio.Future[int]


def _row(instance: Instance) -> tuple[Any, ...]:
    labels = orjson.dumps(instance.labels, option=orjson.OPT_SORT_KEYS).decode()
    return (
        instance.service,
        instance.instance,
        instance.address,
        labels,
        instance.ttl,
        instance.expires_at,
        instance.registered_at,
    )


# --- the store ---------------------------------------------------------------------------


T = TypeVar("T")


class Store(Subscribable):
    """An open registry database; create with :meth:`open`, end with :meth:`close`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdbridge-registry")
        self._db: sqlite3.Connection | None = None  # only touched in the worker thread
        self._lock_fd: int | None = None
        self._instances: dict[Key, Instance] = {}
        self._subscribers: list[Subscriber] = []
        self._heap: list[tuple[float, str, str]] = []
        self._wake = asyncio.Event()
        self._expiry_task: asyncio.Task[None] | None = None
        self._closed = False
        # Group commit: writes queue here and the flusher commits each batch at once.
        self._batch: list[_Write] = []
        self._batch_ready = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        # Heartbeats are written behind: renewed in memory at once, persisted in batches.
        self._dirty: set[Key] = set()
        self._dirty_timer: asyncio.TimerHandle | None = None

    # --- lifecycle ------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path) -> Store:
        """Open (or create) the database at ``path``; raise BackendError if it cannot."""
        store = cls(path)
        try:
            rows = await store._call(store._open_db)
        except BaseException:
            await store._shutdown_executor()
            raise
        store._flusher = asyncio.create_task(store._flush_loop(), name=f"registry-writer:{path}")
        now = time.time()
        expired = [i.key for i in rows if i.expires_at <= now]
        for instance in rows:
            store._instances[instance.key] = instance
            heapq.heappush(store._heap, (instance.expires_at, instance.service, instance.instance))
        if expired:
            try:
                await store._expire(expired, now)
            except BaseException:
                await store.close()  # release the lock and the thread
                raise
            log.info("removed %d registration(s) whose ttl ran out while stopped", len(expired))
        metrics.REGISTRY_INSTANCES.set(len(store._instances))
        store._expiry_task = asyncio.create_task(
            store._expiry_loop(), name=f"registry-expiry:{path}"
        )
        log.info("registry store %s open with %d instance(s)", path, len(store._instances))
        return store

    def _open_db(self) -> list[Instance]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BackendError(
                    f"registry database {self.path} is in use by another sdbridge process; "
                    "give each one its own global.data_dir"
                ) from None
            db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
            self._db = db
            db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a commit survives a crash of sdbridge; only an OS crash may lose
            # the last few, which the clients' next heartbeat restores.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            rows = db.execute(
                "SELECT service, instance, address, labels, ttl, expires_at, registered_at FROM instances"
            ).fetchall()
        except sqlite3.Error as exc:
            self._close_db()
            raise BackendError(f"cannot open registry database {self.path}: {exc}") from exc
        except OSError as exc:
            self._close_db()
            raise BackendError(f"cannot open registry database {self.path}: {exc}") from exc
        except BaseException:
            self._close_db()
            raise
        return [
            Instance(s, i, a, orjson.loads(lab), ttl, exp, reg)
            for s, i, a, lab, ttl, exp, reg in rows
        ]

    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    async def close(self) -> None:
        """Stop expiry and close the database; pending writes finish first."""
        if self._closed:
            return
        if self._dirty_timer is not None:
            self._dirty_timer.cancel()
        self._queue_dirty()  # heartbeats not persisted yet
        self._closed = True
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry_task
        if self._flusher is not None:
            self._batch_ready.set()  # the flusher commits what is queued, then returns
            await self._flusher
        try:
            await self._call(self._close_db, closing=True)
        except Exception:
            log.exception("error closing registry database %s", self.path)
        await self._shutdown_executor()

    async def _shutdown_executor(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    async def _call(self, fn: Callable[..., T], *args: Any, closing: bool = False) -> T:
        if self._closed and not closing:
            raise BackendError(f"registry database {self.path} is closed")
        loop = asyncio.get_running_loop()
        # Shielded: a cancelled request must not leave memory behind the database.
        return await asyncio.shield(loop.run_in_executor(self._executor, fn, *args))

    async def _write(self, sql: str, params: Any, *, many: bool = False) -> int:
        """Queue one statement for the next group commit; its row count once committed."""
        return await self._enqueue(sql, params, many=many)

    def _enqueue(self, sql: str, params: Any, *, many: bool = False) -> asyncio.Future[int]:
        if self._closed:
            raise BackendError(f"registry database {self.path} is closed")
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._batch.append(_Write(sql, params, many, done))
        self._batch_ready.set()
        return done

    async def _flush_loop(self) -> None:
        # Whatever queued while the previous batch was committing goes in one transaction:
        # one trip to the worker thread and one commit for many requests.
        loop = asyncio.get_running_loop()
        while True:
            if not self._batch:
                if self._closed:
                    return
                await self._batch_ready.wait()
                self._batch_ready.clear()
                continue
            batch, self._batch = self._batch, []
            try:
                counts = await asyncio.shield(
                    loop.run_in_executor(self._executor, self._commit, batch)
                )
            except asyncio.CancelledError:
                for write in batch:
                    if not write.done.done():
                        write.done.set_exception(
                            BackendError(f"registry database {self.path} is closing")
                        )
                raise
            except Exception as exc:
                error = exc if isinstance(exc, BackendError) else BackendError(str(exc))
                for write in batch:
                    if not write.done.done():
                        write.done.set_exception(error)
                continue
            # In batch order, so callers resume (and update memory) in the order they wrote.
            for write, count in zip(batch, counts, strict=True):
                if not write.done.done():
                    write.done.set_result(count)

    def _commit(self, batch: list[_Write]) -> list[int]:
        if self._db is None:
            raise BackendError(f"registry database {self.path} is not open")
        counts = []
        try:
            with self._db:  # one transaction: commit, or roll back on error
                self._db.execute("BEGIN")
                for write in batch:
                    if write.many:
                        counts.append(self._db.executemany(write.sql, write.params).rowcount)
                    else:
                        counts.append(self._db.execute(write.sql, write.params).rowcount)
        except sqlite3.Error as exc:
            raise BackendError(f"registry database {self.path}: {exc}") from exc
        return counts

    async def restore(self, instance: Instance) -> None:
        """Write ``instance`` as it is, expiry included (``sdbridge registry import``)."""
        await self._write(_UPSERT, _row(instance))
        previous = self._instances.get(instance.key)
        self._set(instance)
        if previous is None or not previous.same_target(instance):
            self._notify({instance.key})

    async def check_writable(self) -> str | None:
        """None while the database takes writes (it is open), else why not."""
        return f"registry database {self.path} is closed" if self._closed else None

    # --- reads ----------------------------------------------------------------------

    def instances(self, service: str | None = None) -> list[Instance]:
        """Registered instances (of one service), sorted by service and instance."""
        found = (i for i in self._instances.values() if service is None or i.service == service)
        return sorted(found, key=lambda i: i.key)

    def get(self, key: Key) -> Instance | None:
        """The instance registered under ``key``, if any."""
        return self._instances.get(key)

    def __len__(self) -> int:
        return len(self._instances)

    # --- writes ---------------------------------------------------------------------
    #
    # Each write runs as its own task, shielded from the caller: a caller cancelled
    # mid-write (a client hanging up) cannot leave memory behind the database. Tasks
    # start, reach the worker thread and resume in creation order, so memory is updated
    # in the order the database was.

    async def put(
        self, service: str, instance: str, address: str, labels: Mapping[str, str], ttl: float
    ) -> tuple[Instance, bool]:
        """Register or replace an instance; return it and whether it is new."""
        return await asyncio.shield(
            asyncio.ensure_future(self._put(service, instance, address, labels, ttl))
        )

    async def heartbeat(self, service: str, instance: str) -> Instance | None:
        """Renew an instance's ttl from now; None if it is not registered (or expired).

        The new expiry is written behind, within :data:`HEARTBEAT_WRITE_DELAY` seconds and
        for many heartbeats in one transaction: heartbeats are most of a fleet's requests,
        and losing the last second of them in a crash only moves some expiries back by
        that second.
        """
        if self._closed:
            raise BackendError(f"registry database {self.path} is closed")
        current = self._instances.get((service, instance))
        if current is None:
            return None
        renewed = dataclasses.replace(current, expires_at=time.time() + current.ttl)
        self._set(renewed)
        self._mark_dirty(renewed.key)
        return renewed

    def _mark_dirty(self, key: Key) -> None:
        self._dirty.add(key)
        if self._dirty_timer is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._dirty_timer = loop.call_later(HEARTBEAT_WRITE_DELAY, self._queue_dirty)

    def _queue_dirty(self) -> None:
        """Queue upserts of the renewed instances, as they are in memory now."""
        self._dirty_timer = None
        keys, self._dirty = self._dirty, set()
        # An UPDATE, not an upsert: a row deleted meanwhile must stay deleted.
        rows = [
            (i.expires_at, *k) for k in sorted(keys) if (i := self._instances.get(k)) is not None
        ]
        if not rows or self._closed:
            return
        done = self._enqueue(_RENEW, rows, many=True)

        def check(future: asyncio.Future[int]) -> None:
            if not future.cancelled() and future.exception() is not None:
                log.error("cannot persist heartbeats, retrying: %s", future.exception())
                for key in keys:
                    self._mark_dirty(key)

        done.add_done_callback(check)

    async def delete(self, service: str, instance: str) -> bool:
        """Deregister an instance; return whether it was registered."""
        return await asyncio.shield(asyncio.ensure_future(self._delete(service, instance)))

    async def _put(
        self, service: str, instance: str, address: str, labels: Mapping[str, str], ttl: float
    ) -> tuple[Instance, bool]:
        """Register or replace an instance; return it and whether it is new."""
        now = time.time()
        key = (service, instance)
        previous = self._instances.get(key)
        registered_at = previous.registered_at if previous is not None else now
        new = Instance(service, instance, address, dict(labels), ttl, now + ttl, registered_at)
        await self._write(_UPSERT, _row(new))
        # Re-read after the commit: an earlier write may have changed the entry meanwhile.
        previous = self._instances.get(key)
        if previous is not None:
            new = Instance(
                service, instance, address, new.labels, ttl, new.expires_at, previous.registered_at
            )
        self._set(new)
        if previous is None or not previous.same_target(new):
            self._notify({key})
        return new, previous is None

    async def _delete(self, service: str, instance: str) -> bool:
        """Deregister an instance; return whether it was registered."""
        key = (service, instance)
        deleted = await self._write("DELETE FROM instances WHERE service=? AND instance=?", key)
        existed = self._instances.pop(key, None) is not None
        metrics.REGISTRY_INSTANCES.set(len(self._instances))
        if existed:
            self._notify({key})
        return bool(deleted) or existed

    def _set(self, instance: Instance) -> None:
        self._instances[instance.key] = instance
        metrics.REGISTRY_INSTANCES.set(len(self._instances))
        heapq.heappush(self._heap, (instance.expires_at, instance.service, instance.instance))
        if self._heap[0][0] == instance.expires_at:
            self._wake.set()  # the earliest expiry moved earlier
        if len(self._heap) > 2 * len(self._instances) + 1024:
            # Heartbeats leave superseded entries behind; rebuild now and then.
            self._heap = [(i.expires_at, i.service, i.instance) for i in self._instances.values()]
            heapq.heapify(self._heap)

    # --- expiry ---------------------------------------------------------------------

    async def _expiry_loop(self) -> None:
        while not self._closed:
            self._wake.clear()
            now = time.time()
            due: list[Key] = []
            while self._heap and self._heap[0][0] <= now:
                _, service, instance = heapq.heappop(self._heap)
                current = self._instances.get((service, instance))
                if current is not None and current.expires_at <= now:
                    due.append(current.key)
            if due:
                try:
                    await asyncio.shield(
                        asyncio.ensure_future(self._expire(list(dict.fromkeys(due)), now))
                    )
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    exc_info = None if isinstance(exc, BackendError) else exc
                    log.error(
                        "cannot remove expired registrations, retrying: %s", exc, exc_info=exc_info
                    )
                    for key in due:  # try again on the next round
                        heapq.heappush(self._heap, (now, *key))
                    await asyncio.sleep(1.0)
                    continue
            timeout = _MAX_SLEEP
            if self._heap:
                timeout = min(_MAX_SLEEP, max(0.0, self._heap[0][0] - time.time()))
            await wait_event(self._wake, timeout)

    async def _expire(self, keys: list[Key], now: float) -> None:
        # The expires_at condition spares an instance renewed after the decision was made.
        await self._write(
            "DELETE FROM instances WHERE service=? AND instance=? AND expires_at<=?",
            [(s, i, now) for s, i in keys],
            many=True,
        )
        gone = set()
        renewed = []
        for key in keys:
            current = self._instances.get(key)
            if current is not None and current.expires_at <= now:
                del self._instances[key]
                gone.add(key)
            elif current is not None:
                renewed.append(_row(current))
        if renewed:
            # Renewed by a heartbeat not written yet, so the DELETE may have removed the
            # row: write the instance again as memory has it.
            await self._write(_UPSERT, renewed, many=True)
        metrics.REGISTRY_INSTANCES.set(len(self._instances))
        if gone:
            metrics.REGISTRY_EXPIRED.inc(len(gone))
            log.info(
                "%d registration(s) expired: %s",
                len(gone),
                name_some(gone),
                extra={"count": len(gone)},
            )
            self._notify(gone)


# --- one store per process, handed out by its owner ---------------------------------------


def db_path(data_dir: Path) -> Path:
    """The registry database file in ``data_dir``."""
    return Path(os.path.abspath(data_dir / DB_FILE))  # no filesystem access, unlike resolve()


class StoreHandle:
    """The process's registry store, opened on first use where the config says.

    The daemon creates one and passes it to the registry API and to the
    ``registry_sd_configs`` mechanism, so both work on the same store (SQLite has one
    writer; the lock file keeps other processes off). With ``registry.backend: etcd``
    (see :meth:`configure`) the store is an :class:`~.etcd_store.EtcdStore` that every
    replica shares through etcd. When ``data_dir`` or the backend changes on a reload,
    the next :meth:`get` closes the old store and opens the new one.
    """

    def __init__(self, registry: RegistryConfig | None = None) -> None:
        self._store: RegistryStore | None = None
        self._where: object = None  # what the open store was opened for
        self._lock = asyncio.Lock()
        self._etcd: RegistryEtcdConfig | None = None
        if registry is not None:
            self.configure(registry)

    def configure(self, registry: RegistryConfig) -> None:
        """Use the backend ``registry`` names from the next :meth:`get` on."""
        self._etcd = registry.etcd if registry.backend == "etcd" else None

    @property
    def current(self) -> RegistryStore | None:
        """The open store, if any."""
        return self._store

    async def get(self, data_dir: Path) -> RegistryStore:
        """The store; raise BackendError if it cannot be opened."""
        etcd = self._etcd
        where: object = etcd if etcd is not None else db_path(data_dir)
        store = self._store
        if store is not None and self._where == where:
            return store  # the common case: no lock
        async with self._lock:
            if self._store is not None and self._where != where:
                old, self._store = self._store, None
                await old.close()
            if self._store is None:
                if etcd is not None:
                    from .etcd_store import EtcdStore  # it builds on this module

                    self._store = await EtcdStore.open(etcd)
                else:
                    self._store = await Store.open(db_path(data_dir))
                self._where = where
                metrics.REGISTRY_WRITABLE.set(1)
            return self._store

    async def close(self) -> None:
        """Close the store; a later :meth:`get` opens it again."""
        async with self._lock:
            if self._store is not None:
                store, self._store = self._store, None
                await store.close()
