"""The registry's etcd backend: every replica pointed at the same etcd shares one registry.

Same interface as the SQLite :class:`~sdbridge.registry.store.Store` (reads from memory,
``put``/``heartbeat``/``delete``, ``subscribe``), so the API and ``registry_sd_configs``
do not know which backend they use. Each instance is one key ``<prefix><service>/<id>``
holding ``{"address", "labels", "registered_at", "ttl"}`` and attached to an etcd lease
of its TTL, so expiry happens in etcd whichever replica is up:

- PUT: grant a lease, then one put of key + lease (one transaction replaces both);
- heartbeat: one lease keep-alive (the lease id comes from memory); only when memory does
  not know the instance (not registered, or this replica's watch is behind) one read first;
- DELETE: one delete of the key, so a key re-put meanwhile by another replica is still
  deleted (revoking a lease known from memory could miss it); the lease, left without a
  key, runs out by itself.

A write is answered once etcd has committed it, and after this replica's watch has seen
its revision (bounded by ``request_timeout``), so a read right after a write sees it.

The memory mirror is kept by listing the prefix and watching it from the listed revision,
with the etcd mechanism's gateway (pagination, watch stream, compaction); after any gap
it lists again and reports only what changed. Values that are not sdbridge's (not JSON,
wrong shape, unknown fields, a key that is not ``<service>/<id>``) are skipped, logged and
counted once per key, never published; they never remove a good instance.

No etcd traffic without client requests, apart from the one watch stream.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from .. import metrics
from ..discovery.etcd.gateway import Gateway, KeyValue, WatchCompacted, kv_from_json
from ..errors import BackendError, describe
from .config import RegistryEtcdConfig
from .instance import (
    Instance,
    Key,
    RegistrationError,
    Subscribable,
    Subscriber,
    check_address,
    check_instance,
    check_labels,
    check_service,
)

log = logging.getLogger("sdbridge.registry")

_FIELDS = frozenset({"address", "labels", "registered_at", "ttl"})


def lease_ttl(ttl: float) -> int:
    """The whole seconds of an etcd lease for ``ttl`` (rounded up: never shorter)."""
    return max(1, math.ceil(ttl - 1e-9))


def encode_value(address: str, labels: Mapping[str, str], ttl: int, registered_at: float) -> bytes:
    """An instance's value in etcd: compact JSON with sorted keys."""
    value = {
        "address": address,
        "labels": dict(labels),
        "registered_at": round(registered_at, 3),
        "ttl": ttl,
    }
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def decode_instance(name: str, value: bytes, now: float) -> Instance:
    """The instance in ``value`` at ``<service>/<id>`` = ``name``; RegistrationError if it is not one."""
    service, sep, instance = name.partition("/")
    if not sep:
        raise RegistrationError(f"key {name!r} is not <service>/<instance>", field="key")
    check_service(service)
    check_instance(instance)
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise RegistrationError("value is not JSON", field="value") from None
    if not isinstance(data, dict):
        raise RegistrationError("value is not a JSON object", field="value")
    unknown = set(data) - _FIELDS
    if unknown:
        raise RegistrationError(f"unknown fields {sorted(unknown)}", field="value")
    ttl = data.get("ttl")
    registered_at = data.get("registered_at", now)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
        raise RegistrationError('"ttl" must be a positive whole number of seconds', field="ttl")
    if isinstance(registered_at, bool) or not isinstance(registered_at, int | float):
        raise RegistrationError('"registered_at" must be a number', field="registered_at")
    address = check_address(data.get("address"))
    labels = check_labels(data.get("labels"))
    return Instance(service, instance, address, labels, float(ttl), now + ttl, registered_at)


@dataclasses.dataclass(slots=True)
class _Entry:
    instance: Instance
    lease: int
    mod_revision: int


class EtcdStore(Subscribable):
    """The registry in etcd under ``config.prefix``; create with :meth:`open`."""

    def __init__(self, config: RegistryEtcdConfig) -> None:
        self.config = config
        self.prefix = config.prefix.encode("utf-8")
        self.path = f"etcd {config.prefix}"  # what the store is, in messages
        self._gateway = Gateway(config, self._count_request)
        self._entries: dict[Key, _Entry] = {}
        self._subscribers: list[Subscriber] = []
        self._invalid: dict[str, str] = {}  # key -> why it was skipped
        self._revision = 0  # the newest revision the mirror reflects
        self._progress = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._closed = False
        self.requests = 0  # etcd requests sent, for the bench and the tests
        self.write_error: str | None = None  # why the last write failed, until one succeeds
        self.watch_error: str | None = None  # why the mirror is not following etcd now

    def _count_request(self) -> None:
        self.requests += 1
        metrics.REGISTRY_ETCD_REQUESTS.inc()

    # --- lifecycle ------------------------------------------------------------------

    @classmethod
    async def open(cls, config: RegistryEtcdConfig) -> EtcdStore:
        """List the prefix and start watching it; BackendError if etcd cannot be read."""
        store = cls(config)
        try:
            kvs, revision = await store._gateway.range_prefix(store.prefix)
        except BaseException:
            await store._gateway.close()
            raise
        store._apply_list(kvs, revision)
        store._watcher = asyncio.create_task(
            store._watch_loop(), name=f"registry-watch:{store.path}"
        )
        log.info("registry store %s open with %d instance(s)", store.path, len(store._entries))
        return store

    async def close(self) -> None:
        """Stop watching and close the connections."""
        if self._closed:
            return
        self._closed = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self._gateway.close()

    # --- reads ----------------------------------------------------------------------

    def instances(self, service: str | None = None) -> list[Instance]:
        """Registered instances (of one service), sorted by service and instance."""
        found = (
            e.instance
            for e in self._entries.values()
            if service is None or e.instance.service == service
        )
        return sorted(found, key=lambda i: i.key)

    def get(self, key: Key) -> Instance | None:
        """The instance registered under ``key``, if any."""
        entry = self._entries.get(key)
        return entry.instance if entry is not None else None

    def __len__(self) -> int:
        return len(self._entries)

    async def instances_with_expiry(self) -> list[Instance]:
        """The instances with the expiry etcd's leases have now (one request per instance).

        Memory only knows when a replica last saw a write or heartbeat; an export needs
        the lease's own remaining time.
        """
        found = []
        for entry in sorted(self._entries.values(), key=lambda e: e.instance.key):
            answer = await self._write("/v3/lease/timetolive", {"ID": entry.lease})
            remaining = int(answer.get("TTL", -1))
            if remaining > 0:
                expires_at = time.time() + remaining
                found.append(dataclasses.replace(entry.instance, expires_at=expires_at))
        return found

    @property
    def invalid_keys(self) -> dict[str, str]:
        """Keys under the prefix skipped because they hold no sdbridge instance, and why."""
        return dict(self._invalid)

    # --- writes ---------------------------------------------------------------------

    def _key(self, service: str, instance: str) -> bytes:
        return self.prefix + f"{service}/{instance}".encode()

    async def _write(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One etcd request; a write's failure is kept for the health endpoint."""
        if self._closed:
            raise BackendError(f"registry store {self.path} is closed")
        for attempt in range(len(self._gateway.urls)):
            try:
                answer = await self._gateway.post(path, body)
            except BackendError as exc:
                # Refused before anything was sent: the gateway moved on to the next endpoint.
                unsent = isinstance(exc.__cause__, aiohttp.ClientConnectorError)
                if unsent and attempt + 1 < len(self._gateway.urls):
                    continue
                self._write_failed(exc)
                raise BackendError(f"cannot commit to etcd: {describe(exc)}") from exc
            self._write_ok()
            return answer
        raise AssertionError("unreachable: every attempt returns or raises")

    def _write_failed(self, exc: Exception) -> None:
        if self.write_error is None:
            log.error("registry writes to %s are failing: %s", self.path, describe(exc))
        self.write_error = describe(exc)
        metrics.REGISTRY_WRITABLE.set(0)

    def _write_ok(self) -> None:
        if self.write_error is not None:
            log.info("registry writes to %s work again", self.path)
        self.write_error = None
        metrics.REGISTRY_WRITABLE.set(1)

    async def put(
        self, service: str, instance: str, address: str, labels: Mapping[str, str], ttl: float
    ) -> tuple[Instance, bool]:
        """Register or replace an instance; return it and whether it is new."""
        return await asyncio.shield(
            asyncio.ensure_future(self._put(service, instance, address, labels, ttl))
        )

    async def restore(self, instance: Instance) -> None:
        """Write ``instance`` keeping its expiry (``sdbridge registry import``).

        Its lease gets the remaining seconds; its first heartbeat puts it on a lease of its
        whole ttl again.
        """
        remaining = instance.expires_at - time.time()
        if remaining > 0:
            await self._put(
                instance.service,
                instance.instance,
                instance.address,
                instance.labels,
                instance.ttl,
                lease_seconds=lease_ttl(remaining),
                registered_at=instance.registered_at,
            )

    async def _put(
        self,
        service: str,
        instance: str,
        address: str,
        labels: Mapping[str, str],
        ttl: float,
        *,
        lease_seconds: int | None = None,
        registered_at: float | None = None,
    ) -> tuple[Instance, bool]:
        seconds = lease_ttl(ttl)
        now = time.time()
        previous = self.get((service, instance))
        if registered_at is None:
            registered_at = previous.registered_at if previous is not None else round(now, 3)
        granted = lease_seconds or seconds
        grant = await self._write("/v3/lease/grant", {"TTL": granted})
        lease = int(grant.get("ID", 0))
        if not lease:
            raise BackendError(f"etcd granted no lease: {grant.get('error') or grant}")
        value = encode_value(address, labels, seconds, registered_at)
        put = {"key": _b64(self._key(service, instance)), "value": _b64(value), "lease": lease}
        answer = await self._write("/v3/kv/put", {**put, "prev_kv": True})
        await self._caught_up(int(answer.get("header", {}).get("revision", 0)))
        new = Instance(
            service, instance, address, dict(labels), float(seconds), now + granted, registered_at
        )
        return new, "prev_kv" not in answer

    async def heartbeat(self, service: str, instance: str) -> Instance | None:
        """Renew an instance's lease; None if it is not registered (or its lease ran out)."""
        entry = self._entries.get((service, instance))
        if entry is None:
            # Registered through another replica a moment ago, and this replica's watch
            # has not applied it yet (or is relisting)? One read says; a 404 otherwise.
            entry = await self._read_entry(service, instance)
            if entry is None:
                return None
        answer = await self._write("/v3/lease/keepalive", {"ID": entry.lease})
        result = answer.get("result", answer)
        granted = int(result.get("TTL", 0) or 0)
        if granted <= 0:
            return None  # the lease ran out: the watch removes the key
        if granted < entry.instance.ttl:
            # An imported instance on a lease of its remaining seconds: a full lease now.
            old = entry.instance
            full, _ = await self._put(service, instance, old.address, old.labels, old.ttl)
            return full
        renewed = dataclasses.replace(entry.instance, expires_at=time.time() + entry.instance.ttl)
        latest = self._entries.get((service, instance))
        if latest is not None and latest.lease == entry.lease:
            latest.instance = renewed
        return renewed

    async def _read_entry(self, service: str, instance: str) -> _Entry | None:
        """The key as etcd has it now, or None if it holds no registration."""
        answer = await self._write("/v3/kv/range", {"key": _b64(self._key(service, instance))})
        for raw in answer.get("kvs", ()):
            kv = kv_from_json(raw)
            try:
                found = decode_instance(f"{service}/{instance}", kv.value or b"", time.time())
            except RegistrationError:
                return None
            return _Entry(found, kv.lease, kv.mod_revision)
        return None

    async def delete(self, service: str, instance: str) -> bool:
        """Deregister an instance; return whether it was registered."""
        return await asyncio.shield(asyncio.ensure_future(self._delete(service, instance)))

    async def _delete(self, service: str, instance: str) -> bool:
        answer = await self._write(
            "/v3/kv/deleterange", {"key": _b64(self._key(service, instance))}
        )
        await self._caught_up(int(answer.get("header", {}).get("revision", 0)))
        return int(answer.get("deleted", 0) or 0) > 0

    async def check_writable(self) -> str | None:
        """Whether etcd can commit now (a quorum read); None if it can, else why not."""
        try:
            await self._write("/v3/kv/range", {"key": _b64(self.prefix), "count_only": True})
        except BackendError as exc:
            return str(exc)
        return None

    async def _caught_up(self, revision: int) -> None:
        """Wait (bounded) until the watch has applied ``revision``, for read-your-writes."""
        deadline = time.monotonic() + self.config.request_timeout
        while self._revision < revision and not self._closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return  # committed anyway; the mirror catches up when the watch does
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)

    # --- the mirror -----------------------------------------------------------------

    def _advance(self, revision: int) -> None:
        if revision > self._revision:
            self._revision = revision
            self._progress.set()

    def _apply_list(self, kvs: list[KeyValue], revision: int) -> None:
        """Replace the mirror by a full listing; notify the keys whose targets changed."""
        now = time.time()
        seen: set[Key] = set()
        changed: set[Key] = set()
        listed: set[str] = set()
        for kv in kvs:
            key = self._apply_kv(kv, now, changed)
            if key is not None:
                seen.add(key)
            listed.add(kv.key.decode("utf-8", "replace"))
        for key in set(self._entries) - seen:
            del self._entries[key]
            changed.add(key)
        for name in set(self._invalid) - listed:
            del self._invalid[name]
        self._counted()
        self._advance(revision)
        if changed:
            self._notify(changed)

    def _apply_kv(self, kv: KeyValue, now: float, changed: set[Key]) -> Key | None:
        """Apply one key (a deletion when ``kv.value`` is None); return its registry key."""
        name = kv.key[len(self.prefix) :].decode("utf-8", "replace")
        full = kv.key.decode("utf-8", "replace")
        service, _, instance = name.partition("/")
        key = (service, instance)
        if kv.value is None:
            self._invalid.pop(full, None)
            if self._entries.pop(key, None) is not None:
                changed.add(key)
            return None
        try:
            new = decode_instance(name, kv.value, now)
        except RegistrationError as exc:
            if self._invalid.get(full) != str(exc):
                log.warning("skipping etcd key %r: not an sdbridge registration: %s", full, exc)
            self._invalid[full] = str(exc)
            # A good instance overwritten by junk is gone from etcd: withdraw it too.
            if self._entries.pop(key, None) is not None:
                changed.add(key)
            return None
        self._invalid.pop(full, None)
        previous = self._entries.get(key)
        if previous is not None and previous.mod_revision == kv.mod_revision:
            return key  # already applied (a relist after a watch event)
        self._entries[key] = _Entry(new, kv.lease, kv.mod_revision)
        if previous is None or not previous.instance.same_target(new):
            changed.add(key)
        return key

    def _counted(self) -> None:
        metrics.REGISTRY_INSTANCES.set(len(self._entries))
        metrics.REGISTRY_INVALID_KEYS.set(len(self._invalid))

    async def _watch_loop(self) -> None:
        delay = 0.1
        listed = True  # open() has just listed
        while True:
            try:
                if not listed:
                    kvs, revision = await self._gateway.range_prefix(self.prefix)
                    self._apply_list(kvs, revision)
                listed = False
                await self._follow(self._revision + 1)
            except asyncio.CancelledError:
                raise
            except WatchCompacted as exc:
                log.warning("registry watch on %s lost its history (%s); relisting", self.path, exc)
            except Exception as exc:
                if self.watch_error is None:
                    log.error("registry watch on %s failed, retrying: %s", self.path, describe(exc))
                self.watch_error = describe(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1

    async def _follow(self, start: int) -> None:
        async with self._gateway.watch(self.prefix, start) as stream:
            async for result in stream:
                if result.get("created") and self.watch_error is not None:
                    log.info("registry watch on %s follows etcd again", self.path)
                    self.watch_error = None
                if result.get("canceled"):
                    compact = int(result.get("compact_revision", 0))
                    if compact:
                        raise WatchCompacted(compact)
                    raise BackendError(f"watch cancelled: {result.get('cancel_reason')}")
                events = result.get("events") or ()
                changed: set[Key] = set()
                now = time.time()
                for event in events:
                    deleted = event.get("type") == "DELETE"
                    self._apply_kv(kv_from_json(event.get("kv", {}), deleted), now, changed)
                if events:
                    self._counted()
                    if changed:
                        self._notify(changed)
                self._advance(int(result.get("header", {}).get("revision", 0)))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
