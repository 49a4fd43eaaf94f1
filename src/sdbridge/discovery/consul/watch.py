"""The consul_sd watcher: Consul's catalog, followed with three blocking queries.

Load design. Prometheus and vmagent keep one long-poll per service, so N services cost
N open connections and about N requests per wait period even when nothing changes.
sdbridge keeps three long-polls whatever N is:

- ``/v1/catalog/services``: the set of services. Its index is the services table's, so
  it also moves when an instance is registered, deregistered or re-registered;
- ``/v1/health/state/any``: every check with its status and modify index;
- ``/v1/catalog/nodes``: every node with its address, meta and modify index.

When the checks or the nodes change, only the services they touch are re-read
(a node-level check or a node change touches every service on that node). A move of
the catalog index cannot be traced to a service by any documented bulk endpoint (a
re-registration that changes only a port moves no check), so it starts a "sweep", at
most once per ``refresh_interval`` — the same throttle Prometheus applies to each of its
per-service long-polls; a new service is read at once. A sweep finds the changed
services by node when there are fewer nodes than services (the usual case: many
services per agent): ``/v1/catalog/node/<node>`` lists each instance on the node with
its ModifyIndex, and only the services whose instances' (node, ID, ModifyIndex) differ
from their last read are re-read. Otherwise (or with ``health_filter``, whose instances
the node answers cannot select) it re-reads every selected service. A sweep runs beside
the targeted reads, never in front of them; reads run with bounded concurrency
(``max_concurrency`` each), and a read whose X-Consul-Index did not move is reused
without decoding it.

Every resync is all-or-nothing: if one read fails, nothing is sent and the job keeps its
last good targets; the services stay pending and are retried with backoff. After any
gap (a failed long-poll, an index that went backwards) everything is re-read. Indexes
follow Consul's blocking-query rules (api-docs/features/blocking): an index below 1 is
treated as 1, an index that goes backwards resets to 0, and HTTP 429 backs off longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from ...errors import BackendError, DiscoveryError
from ...model import ADDRESS_LABEL, TargetGroup
from .. import register
from ..base import Backoff, BaseDiscoverer, GroupDiff, Send
from .client import Answer, ConsulClient, ThrottledError
from .config import ConsulSDConfig
from .labels import (
    DATACENTER,
    PARSERS,
    POLLS,
    SERVICE,
    SERVICE_ID,
    Catalog,
    Checks,
    Instance,
    InstanceVersion,
    Nodes,
    parse_node_services,
    parse_nodes,
    parse_service_nodes,
    service_versions,
)

_ERROR_BACKOFF = (1.0, 30.0)
_THROTTLED_BACKOFF = (5.0, 120.0)  # HTTP 429: Consul's per-client connection limit
# A write that moves the catalog usually moves the checks too (same raft index); wait this
# long for the other long-polls, so their cheap targeted reads go (and get published)
# before a sweep of every service takes the CPU. A sweep by node is light: it waits less.
_SWEEP_SETTLE = 0.3
_NODE_SWEEP_SETTLE = 0.02
# Two blocking queries of one kind start at least this far apart: under churn, answers
# are coalesced instead of re-downloaded back to back, and a server that answers at once
# without a new index (hashicorp/consul#3712) is not hammered.
_MIN_POLL_GAP = 0.25
_SWEEP_DONE = "sweep-done"


@dataclass
class _Event:
    """What a long-poll reports: a moved answer (parsed), or that it failed."""

    kind: str
    parsed: Any = None
    error: DiscoveryError | None = None
    gap: bool = False  # the watch was interrupted: changes may have been missed
    started: float = 0.0  # when the sweep that this event reports started


@dataclass
class _Pending:
    """Work the next resync must do."""

    services: set[str] = field(default_factory=set)
    sweep: bool = False
    prune: bool = False  # services left the catalog


@register("consul", ConsulSDConfig)
class ConsulDiscoverer(BaseDiscoverer[ConsulSDConfig]):
    """Watches Consul's catalog with three blocking queries; one group per service."""

    async def run(self, send: Send) -> None:
        """Discover until cancelled; each resync sends all of its changes or nothing."""
        client = ConsulClient(self.config, self.context.count_request)
        try:
            await _Watch(self, client).run(send)
        finally:
            await client.close()


class _Watch:
    """The state of one run: what Consul said last, per long-poll and per service."""

    def __init__(self, discoverer: ConsulDiscoverer, client: ConsulClient) -> None:
        self.config = discoverer.config
        self.context = discoverer.context
        self.log = discoverer.log
        self.client = client
        self.datacenter = self.config.datacenter
        self.diff = GroupDiff()
        self.events: asyncio.Queue[_Event] = asyncio.Queue()
        self.catalog: Catalog = {}  # the selected services
        self.checks: Checks = {}
        self.nodes: Nodes = {}
        self.groups: dict[str, TargetGroup] = {}
        self.service_nodes: dict[str, frozenset[str]] = {}
        # Each service's last read and its X-Consul-Index: an unchanged index (the usual
        # case in a sweep) reuses the read instead of decoding and rebuilding it.
        self.reads: dict[str, tuple[int, _ServiceRead]] = {}
        self.indexes: dict[str, int] = {}
        # Sweeps and targeted reads have their own slots: a sweep never starves the others.
        self.sweep_slots = asyncio.Semaphore(self.config.max_concurrency)
        self.targeted_slots = asyncio.Semaphore(self.config.max_concurrency)
        self.commit_lock = asyncio.Lock()
        self.epoch = 0  # bumped on every gap: reads begun before it are not committed
        self.last_sweep = float("-inf")
        self.sweep_not_before = float("-inf")
        self.failing: set[str] = set()  # long-polls currently failing

    # --- top level -----------------------------------------------------------------------

    async def run(self, send: Send) -> None:
        backoff = Backoff(*_ERROR_BACKOFF)
        while True:  # until the first complete resync
            started = time.monotonic()
            try:
                await self._initial_sync(send)
            except DiscoveryError as exc:
                self.context.record_failure(exc, time.monotonic() - started)
                await asyncio.sleep(_delay(backoff, exc))
                continue
            self.context.observe_duration(time.monotonic() - started)
            break
        async with asyncio.TaskGroup() as tasks:
            for kind in POLLS:
                tasks.create_task(self._poll(kind), name=f"consul long-poll {kind}")
            await self._process(send)

    async def _initial_sync(self, send: Send) -> None:
        if not self.config.datacenter:
            self.datacenter = await self._agent_datacenter()
        kinds = list(POLLS)
        answers = await asyncio.gather(*(self._poll_request(kind, 0) for kind in kinds))
        parsed = {
            kind: PARSERS[kind](answer.data) for kind, answer in zip(kinds, answers, strict=True)
        }
        self._apply_catalog(parsed["services"])
        self._apply_checks(parsed["checks"])
        self._apply_nodes(parsed["nodes"])
        self.last_sweep = time.monotonic()
        await self._resync(send, sorted(self.catalog), self.sweep_slots)
        # Only now: the long-polls start from what the complete resync has seen.
        for kind, answer in zip(kinds, answers, strict=True):
            self.indexes[kind] = max(answer.index, 1)

    async def _agent_datacenter(self) -> str:
        # Consul's default datacenter for a query is the agent's (Prometheus does the same).
        answer = await self.client.get("/v1/agent/self", [])
        config = answer.data.get("Config") if isinstance(answer.data, dict) else None
        datacenter = config.get("Datacenter") if isinstance(config, dict) else None
        if not isinstance(datacenter, str) or not datacenter:
            raise BackendError(
                f"/v1/agent/self: invalid value {datacenter!r} for Config.Datacenter"
            )
        self.log.info("using the agent's datacenter %r", datacenter)
        return datacenter

    # --- the long-polls ------------------------------------------------------------------

    def _poll_request(self, kind: str, index: int) -> Awaitable[Answer]:
        params = self.client.scope(self.datacenter)
        if kind == "services" and self.config.filter:
            params.append(("filter", self.config.filter))
        return self.client.get(POLLS[kind], params, index=index, wait=self.config.watch_timeout)

    async def _poll(self, kind: str) -> None:
        """Keep one blocking query on ``kind`` outstanding; report answers that moved."""
        errors = Backoff(*_ERROR_BACKOFF)
        throttled = Backoff(*_THROTTLED_BACKOFF)
        gap = False
        last_start = float("-inf")
        while True:
            index = self.indexes[kind]
            wait = last_start + _MIN_POLL_GAP - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            last_start = time.monotonic()
            try:
                # After a gap, ask without blocking: the answer must come at once.
                answer = await self._poll_request(kind, 0 if gap else index)
                parsed = PARSERS[kind](answer.data)
            except BackendError as exc:
                gap = True
                self.events.put_nowait(_Event(kind, error=exc))
                backoff = throttled if isinstance(exc, ThrottledError) else errors
                await asyncio.sleep(backoff.next_delay())
                continue
            errors.reset()
            throttled.reset()
            new_index = max(answer.index, 1)  # an index below 1 is treated as 1
            if new_index < index and not gap:
                # Consul's state was restored, or a stale server is behind: start again.
                self.log.warning("%s index went backwards (%d -> %d)", kind, index, new_index)
                gap = True
                continue
            if new_index == index and not gap:
                self.context.record_current()  # the wait ran out: nothing changed
                continue
            self.indexes[kind] = new_index
            self.events.put_nowait(_Event(kind, parsed=parsed, gap=gap))
            gap = False

    # --- turning answers into work -------------------------------------------------------

    async def _process(self, send: Send) -> None:
        """Turn long-poll events into resyncs. Targeted resyncs (a few services) run here,
        one at a time; a sweep runs as a task beside them, so it never delays them."""
        pending = _Pending()
        backoff = Backoff(*_ERROR_BACKOFF)
        sweep_backoff = Backoff(*_ERROR_BACKOFF)
        retry_at: float | None = None
        sweep_task: asyncio.Task[None] | None = None
        try:
            while True:
                timeout = self._next_wakeup(pending, retry_at, sweep_task is not None)
                try:
                    # Not wait_for: on 3.11 it can lose a cancellation (see base.wait_event).
                    async with asyncio.timeout(timeout):
                        event = await self.events.get()
                except TimeoutError:
                    pass
                else:
                    for item in [event, *_drain(self.events)]:  # coalesce what arrived
                        if item.kind == _SWEEP_DONE:
                            sweep_task = None
                            self._sweep_done(item, pending, sweep_backoff)
                        else:
                            self._take(item, pending)
                now = time.monotonic()
                if sweep_task is None and pending.sweep and now >= self._sweep_at():
                    pending.sweep = False
                    sweep_task = asyncio.create_task(self._sweep(send))
                if (retry_at is not None and now < retry_at) or not (
                    pending.services or pending.prune
                ):
                    continue
                work = _Pending(services=pending.services, prune=pending.prune)
                pending.services, pending.prune = set(), False
                started = time.monotonic()
                try:
                    await self._resync(send, sorted(work.services), self.targeted_slots)
                except DiscoveryError as exc:
                    self.context.record_failure(exc, time.monotonic() - started)
                    pending.services |= work.services
                    pending.prune = pending.prune or work.prune
                    retry_at = time.monotonic() + _delay(backoff, exc)
                    continue
                backoff.reset()
                retry_at = None
                if not self.failing:
                    self.context.observe_duration(time.monotonic() - started)
        finally:
            if sweep_task is not None:
                sweep_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweep_task

    async def _sweep(self, send: Send) -> None:
        """Re-read every selected service that may have changed; report the outcome as an
        event."""
        self.last_sweep = started = time.monotonic()
        try:
            if self._sweep_by_node():
                names = await self._changed_services()
            else:
                names = sorted(self.catalog)
            if names:
                await self._resync(send, names, self.sweep_slots)
        except DiscoveryError as exc:
            self.events.put_nowait(_Event(_SWEEP_DONE, error=exc, started=started))
        else:
            self.events.put_nowait(_Event(_SWEEP_DONE, started=started))

    def _sweep_by_node(self) -> bool:
        # The node answers list every instance, unfiltered: health_filter cannot be applied.
        return not self.config.health_filter and len(self.nodes) < len(self.catalog)

    async def _changed_services(self) -> list[str]:
        """The selected services whose instances differ, by (node, ID, ModifyIndex), from
        their last read: a fresh node list, then each node's services."""
        params = self.client.scope(self.datacenter)
        # A fresh list, not the nodes long-poll's: a node registered with the service being
        # looked for may not have reached that long-poll yet.
        nodes = parse_nodes((await self.client.get(POLLS["nodes"], params)).data)
        node_params = [p for p in params if p[0] != "node-meta"]  # the nodes are selected
        paths = ["/v1/catalog/node/" + _quote(node) for node in sorted(nodes)]
        found: dict[str, set[InstanceVersion]] = {}
        for answer in await self._read_all(paths, node_params, self.sweep_slots):
            for name, tags, version in parse_node_services(answer.data, where=answer.where):
                if name in self.catalog and all(tag in tags for tag in self.config.tags):
                    found.setdefault(name, set()).add(version)
        return [
            name
            for name in sorted(self.catalog)
            if (read := self.reads.get(name)) is None or read[1][3] != found.get(name, set())
        ]

    def _sweep_done(self, event: _Event, pending: _Pending, backoff: Backoff) -> None:
        duration = time.monotonic() - event.started
        if event.error is not None:
            self.context.record_failure(event.error, duration)
            pending.sweep = True
            self.sweep_not_before = time.monotonic() + _delay(backoff, event.error)
            self.last_sweep = float("-inf")
            return
        backoff.reset()
        if not self.failing:
            self.context.observe_duration(duration)

    def _next_wakeup(
        self, pending: _Pending, retry_at: float | None, sweeping: bool
    ) -> float | None:
        now = time.monotonic()
        deadlines = []
        if pending.services or pending.prune:
            deadlines.append(retry_at if retry_at is not None else now)
        if pending.sweep and not sweeping:
            deadlines.append(self._sweep_at())
        return max(min(deadlines) - now, 0.0) if deadlines else None

    def _sweep_at(self) -> float:
        return max(self.last_sweep + self.config.refresh_interval, self.sweep_not_before)

    def _take(self, event: _Event, pending: _Pending) -> None:
        if event.error is not None:
            self.failing.add(event.kind)
            self.context.record_failure(event.error)
            return
        self.failing.discard(event.kind)
        if event.gap:
            pending.sweep = True
            self.last_sweep = float("-inf")  # a gap is repaired at once
            self.sweep_not_before = float("-inf")
            self.reads = {}  # indexes may have been reset: trust no cached read
            self.epoch += 1
        if event.kind == "services":
            before = set(self.catalog)
            self._apply_catalog(event.parsed)
            pending.services |= set(self.catalog) - before
            pending.prune = pending.prune or bool(before - set(self.catalog))
            # Re-registrations move this index without telling which service: sweep.
            pending.sweep = True
            settle = _NODE_SWEEP_SETTLE if self._sweep_by_node() else _SWEEP_SETTLE
            self.sweep_not_before = time.monotonic() + settle
        elif event.kind == "checks":
            pending.services |= self._apply_checks(event.parsed)
        else:
            pending.services |= self._apply_nodes(event.parsed)

    def _apply_catalog(self, catalog: Catalog) -> None:
        self.catalog = {name: tags for name, tags in catalog.items() if self._selected(name, tags)}

    def _selected(self, name: str, tags: list[str]) -> bool:
        # Prometheus's shouldWatch: by name (exact), then the service must have every tag.
        if self.config.services and name not in self.config.services:
            return False
        return all(tag in tags for tag in self.config.tags)

    def _apply_checks(self, current: Checks) -> set[str]:
        previous, self.checks = self.checks, current
        touched: set[str] = set()
        for key in previous.keys() | current.keys():
            before, after = previous.get(key), current.get(key)
            if before == after:
                continue
            for state in (before, after):
                if state is None:
                    continue
                if state[0]:
                    touched.add(state[0])
                else:  # a node-level check, e.g. serfHealth: every service on the node
                    touched |= self._services_on(key[0])
        return touched & set(self.catalog)

    def _apply_nodes(self, current: Nodes) -> set[str]:
        previous, self.nodes = self.nodes, current
        touched: set[str] = set()
        for name in previous.keys() | current.keys():
            if previous.get(name) != current.get(name):
                touched |= self._services_on(name)
        return touched & set(self.catalog)

    def _services_on(self, node: str) -> set[str]:
        return {service for service, nodes in self.service_nodes.items() if node in nodes}

    # --- reading services ----------------------------------------------------------------

    async def _resync(self, send: Send, names: list[str], slots: asyncio.Semaphore) -> None:
        """Read ``names``; send the changes only if every read succeeded.

        Concurrent resyncs (a sweep and targeted reads) commit one at a time, and a
        service's read replaces the one in place only if its X-Consul-Index is not older.
        """
        epoch = self.epoch
        answers = await self._read_services(names, slots)
        async with self.commit_lock:
            if epoch != self.epoch:
                return  # a gap happened meanwhile: a full re-read is already pending
            reads = {n: r for n, r in self.reads.items() if n in self.catalog}
            changed: dict[str, _ServiceRead] = {}
            for name, answer in answers.items():
                cached = reads.get(name)
                if name not in self.catalog or (cached is not None and cached[0] > answer.index):
                    continue  # deregistered meanwhile, or a fresher read is in place
                if cached is not None and cached[0] == answer.index:
                    changed[name] = cached[1]
                else:
                    changed[name] = self._service_read(name, answer)
                reads[name] = (answer.index, changed[name])
            groups = {n: g for n, g in self.groups.items() if n in self.catalog}
            service_nodes = {n: s for n, s in self.service_nodes.items() if n in self.catalog}
            for name, (group, nodes, problems, _) in changed.items():
                service_nodes[name] = nodes
                previous = self.reads.get(name)
                if problems and (previous is None or previous[1][2] != problems):
                    for problem in problems:
                        self.context.record_invalid(problem, "the address is not a valid host:port")
                if group is None:
                    groups.pop(name, None)
                else:
                    groups[name] = group
            changes = self.diff.changes([groups[name] for name in sorted(groups)])
            # Commit only now: a failed read above leaves every cache as it was.
            self.groups, self.service_nodes, self.reads = groups, service_nodes, reads
            await send(changes)

    async def _read_services(self, names: list[str], slots: asyncio.Semaphore) -> dict[str, Answer]:
        params = self.client.scope(self.datacenter)
        params.extend(("tag", tag) for tag in self.config.tags)
        if self.config.health_filter:
            params.append(("filter", self.config.health_filter))
        paths = ["/v1/health/service/" + _quote(name) for name in names]
        answers = await self._read_all(paths, params, slots)
        return dict(zip(names, answers, strict=True))

    async def _read_all(
        self, paths: list[str], params: list[tuple[str, str]], slots: asyncio.Semaphore
    ) -> list[Answer]:
        """GET every path, at most ``slots`` at once; one failure fails them all."""

        async def read(path: str) -> Answer:
            async with slots:
                return await self.client.get(path, params)

        tasks: list[asyncio.Task[Answer]] = []
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(read(path)) for path in paths]
        except* DiscoveryError as failures:
            # One failure fails the resync; report the first, count the rest.
            first = failures.exceptions[0]
            more = len(failures.exceptions) - 1
            suffix = f" (and {more} more failed read(s))" if more else ""
            raise BackendError(f"{first}{suffix}") from first
        return [task.result() for task in tasks]

    def _service_read(self, name: str, answer: Answer) -> _ServiceRead:
        """Build a service's group from its answer; BackendError on a bad shape."""
        data = answer.data
        instances = parse_service_nodes(
            data, service=name, tag_separator=self.config.tag_separator, where=answer.where
        )
        versions = service_versions(data)
        problems = [i for i in instances if isinstance(i, str)]
        good = [i for i in instances if isinstance(i, Instance)]
        nodes = frozenset(i.node for i in good)
        if not good:
            return None, nodes, problems, versions
        targets = sorted(
            (i.labels for i in good), key=lambda t: (t[ADDRESS_LABEL], t.get(SERVICE_ID, ""))
        )
        labels = {SERVICE: name, DATACENTER: self.datacenter}
        group = TargetGroup(
            source=name, targets=tuple(targets), labels={k: v for k, v in labels.items() if v}
        )
        return group, nodes, problems, versions


# A service's group (None: no valid instance), its nodes, its invalid instances, and the
# versions of its instances.
_ServiceRead = tuple[TargetGroup | None, frozenset[str], list[str], frozenset[InstanceVersion]]


def _drain(queue: asyncio.Queue[_Event]) -> list[_Event]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


def _delay(backoff: Backoff, error: BaseException) -> float:
    delay = backoff.next_delay()
    throttled = isinstance(error, ThrottledError) or isinstance(error.__cause__, ThrottledError)
    return max(delay, _THROTTLED_BACKOFF[0]) if throttled else delay


def _quote(name: str) -> str:
    return quote(name, safe="")
