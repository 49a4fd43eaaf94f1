"""A Consul HTTP API double, built from Consul's documented API, for tests and benchmarks.

Endpoints (developer.hashicorp.com/consul/api-docs): ``/v1/agent/self``,
``/v1/catalog/services``, ``/v1/catalog/nodes``, ``/v1/catalog/node/<node>``,
``/v1/health/service/<name>`` and ``/v1/health/state/<state>``, with ``dc``, ``stale``,
``node-meta``, ``tag``, ``filter`` (a subset of go-bexpr), ``ns``/``partition``, and
blocking queries (``index``, ``wait``, ``X-Consul-Index``; api-docs/features/blocking).

Indexes follow Consul's state store: one raft index counter; ``catalog/services`` answers
with the services table's index, ``catalog/nodes`` with the nodes table's,
``health/state/*`` with the checks table's, ``catalog/node/<node>`` with the highest of the
nodes' and services' tables', and ``health/service/<name>`` with that
service's own index, which moves when one of its instances, their nodes or their checks
change (state/catalog.go ``updateAllServiceIndexesOfNode``). A blocking query returns as
soon as its index passes ``index``, or after ``wait`` (capped at 10m, plus up to wait/16
of jitter when ``jitter`` is on).

Faults can be injected per path: an HTTP status (5xx, 403, 429), a delay, malformed
JSON, a truncated body, a connection reset; ``rewind_index`` makes the index go
backwards, as after a snapshot restore (which also wakes every blocking query).
The double counts requests per endpoint and its open connections.

It runs in a thread with its own event loop (``with ConsulDouble() as consul:``), or as
a process (``python -m tests.doubles.consul_double --port N``) driven through
``POST /_double/call`` with ``{"method": ..., "kwargs": {...}}`` and ``GET /_double/stats``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import random
import re
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from aiohttp import web

from .base import Fault, FaultInjector, ThreadedServer, reset_connection

_MAX_WAIT = 600.0
_DEFAULT_WAIT = 300.0
_MAX_BODIES = 20_000  # serialized answers kept (one per path and query)
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float:
    """Parse a Go duration (``10s``, ``1m30s``, ``250ms``) into seconds; ValueError if bad."""
    if text in ("0", ""):
        return 0.0
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            raise ValueError(text)
        total += float(match[1]) * _UNITS[match[2]]
        position = match.end()
    if position != len(text):
        raise ValueError(text)
    return total


# --- a small subset of go-bexpr, the filter language ---------------------------------------

_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)|(?P<op>==|!=|\(|\))|(?P<word>[A-Za-z0-9_.\-/:]+))'
)


class FilterError(ValueError):
    """The filter expression cannot be parsed."""


def _tokens(text: str) -> list[tuple[str, str]]:
    out, position = [], 0
    text = text.strip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise FilterError(f"unexpected input at {text[position:]!r}")
        kind = match.lastgroup or ""
        value = match[kind]
        if kind == "str":
            value = json.loads(value) if value.startswith('"') else value[1:-1]
        out.append((kind, value))
        position = match.end()
        while position < len(text) and text[position].isspace():
            position += 1
    return out


def compile_filter(text: str) -> Callable[[dict[str, Any]], bool]:
    """Compile a bexpr subset: ``==``, ``!=``, ``in``, ``not in``, ``contains``,
    ``is empty``, ``is not empty``, ``and``, ``or``, ``not`` and parentheses."""
    tokens = _tokens(text)
    position = 0

    def peek() -> tuple[str, str] | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> tuple[str, str]:
        nonlocal position
        if position >= len(tokens):
            raise FilterError("unexpected end of filter")
        position += 1
        return tokens[position - 1]

    def word(value: str) -> bool:
        token = peek()
        return token is not None and token[0] == "word" and token[1] == value

    def expr_or() -> Callable[[dict[str, Any]], bool]:
        left = expr_and()
        while word("or"):
            take()
            right = expr_and()
            left = (lambda a, b: lambda d: a(d) or b(d))(left, right)
        return left

    def expr_and() -> Callable[[dict[str, Any]], bool]:
        left = expr_not()
        while word("and"):
            take()
            right = expr_not()
            left = (lambda a, b: lambda d: a(d) and b(d))(left, right)
        return left

    def expr_not() -> Callable[[dict[str, Any]], bool]:
        if word("not"):
            take()
            inner = expr_not()
            return lambda d: not inner(d)
        token = peek()
        if token == ("op", "("):
            take()
            inner = expr_or()
            if take() != ("op", ")"):
                raise FilterError("missing )")
            return inner
        return match_expr()

    def match_expr() -> Callable[[dict[str, Any]], bool]:
        first = take()
        if first[0] == "str":  # "value" in Selector / "value" not in Selector
            negate = False
            if word("not"):
                take()
                negate = True
            if take() != ("word", "in"):
                raise FilterError("expected 'in'")
            selector = take()[1]
            value = first[1]
            return lambda d: _contains(_select(d, selector), value) != negate
        selector = first[1]
        op = take()
        if op == ("op", "=="):
            value = take()[1]
            return lambda d: _as_text(_select(d, selector)) == value
        if op == ("op", "!="):
            value = take()[1]
            return lambda d: _as_text(_select(d, selector)) != value
        if op == ("word", "contains"):
            value = take()[1]
            return lambda d: _contains(_select(d, selector), value)
        if op == ("word", "not") and word("contains"):
            take()
            value = take()[1]
            return lambda d: not _contains(_select(d, selector), value)
        if op == ("word", "is"):
            negate = False
            if word("not"):
                take()
                negate = True
            if take() != ("word", "empty"):
                raise FilterError("expected 'empty'")
            return lambda d: (not _select(d, selector)) != negate
        raise FilterError(f"unexpected {op[1]!r}")

    result = expr_or()
    if position != len(tokens):
        raise FilterError(f"unexpected {tokens[position][1]!r}")
    return result


def _select(data: Any, selector: str) -> Any:
    for part in selector.split("."):
        if isinstance(data, dict):
            data = data.get(part)
        else:
            return None
    return data


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _contains(container: Any, value: str) -> bool:
    if isinstance(container, dict):
        return value in container
    if isinstance(container, list):
        return value in container
    if isinstance(container, str):
        return value in container
    return False


# --- the double ----------------------------------------------------------------------------


class ConsulDouble(ThreadedServer, FaultInjector):
    """An in-memory Consul catalog served over HTTP on 127.0.0.1."""

    thread_name = "consul-double"
    default_fault_body = "rpc error: injected fault"

    def __init__(
        self,
        *,
        datacenter: str = "dc1",
        port: int = 0,
        acl_token: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        jitter: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        path_prefix: str = "",
    ) -> None:
        self.datacenter = datacenter
        self.port = port
        self.acl_token = acl_token
        self.basic_auth = basic_auth
        self.jitter = jitter
        self.ssl_context = ssl_context
        self.path_prefix = path_prefix  # serve the API under it, as behind a proxy
        self._lock = threading.RLock()
        self._index = 1
        self._nodes: dict[str, dict[str, Any]] = {}
        self._services: dict[tuple[str, str], dict[str, Any]] = {}
        self._checks: dict[tuple[str, str], dict[str, Any]] = {}
        self._table_index = {"services": 1, "nodes": 1, "checks": 1}
        self._service_index: dict[str, int] = {}
        FaultInjector.__init__(self)
        self._version = 0  # bumped on every change: invalidates the views below
        self._views_cache: (
            tuple[int, dict[str, list[tuple[str, str]]], dict[str, list[dict[str, Any]]]] | None
        ) = None
        self._by_node_cache: tuple[int, dict[str, list[tuple[str, dict[str, Any]]]]] | None = None
        self._agents: dict[int, str] = {}  # id(transport) -> User-Agent of its requests
        self.requests: Counter[str] = Counter()
        self.requests_by_agent: Counter[str] = Counter()
        self.index_params: dict[str, list[str]] = {}  # endpoint -> ``index`` values asked
        self.blocking_requests: Counter[str] = Counter()
        self.waiting = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        # Blocking queries waiting, by what they watch ("services", "nodes", "checks" or
        # "service:<name>"): a write wakes only those whose index it moved, as Consul's
        # memdb watch sets do, not every long-poll.
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._moved: set[str] = set()  # keys moved since the last wake (under the lock)
        # Answers serialized once per state and reused by every client that asks the same
        # query at the same indexes: (path, query) -> (dependency indexes, body, index).
        self._bodies: dict[tuple[str, str], tuple[tuple[int, ...], bytes, int]] = {}
        self._epoch = 0  # bumped when indexes are rewound: no cached body survives it
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8500``."""
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``, for a ``server:`` option."""
        return f"127.0.0.1:{self.port}"

    def make_app(self) -> web.Application:
        """The aiohttp application serving the API."""
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/v1/agent/self", self._agent_self)
        app.router.add_get("/v1/catalog/services", self._catalog_services)
        app.router.add_get("/v1/catalog/nodes", self._catalog_nodes)
        app.router.add_get("/v1/catalog/node/{node}", self._catalog_node)
        app.router.add_get("/v1/health/service/{name}", self._health_service)
        app.router.add_get("/v1/health/state/{state}", self._health_state)
        app.router.add_post("/_double/call", self._control_call)
        app.router.add_get("/_double/stats", self._control_stats)
        if self.path_prefix:
            root = web.Application()
            root.add_subapp(self.path_prefix, app)
            return root
        return app

    async def start_async(self) -> None:
        """Start serving in the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        # Thousands of long-polls open at once: a small backlog would stall clients in SYN retries.
        await self.serve_app(self.make_app(), backlog=4096, ssl_context=self.ssl_context)

    async def stop_async(self) -> None:
        """Stop serving; wakes every blocking query first."""
        if self._stopped is not None:
            self._stopped.set()
        self._notify(everything=True)
        await self.close_app()

    # --- stats -------------------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        """TCP connections currently open to the double."""
        runner = self._runner
        server = runner.server if runner is not None else None
        return len(server.connections) if server is not None else 0

    def connections_by_agent(self) -> dict[str, int]:
        """Open connections, by the User-Agent of the requests they carried."""
        runner = self._runner
        server = runner.server if runner is not None else None
        handlers = server.connections if server is not None else []
        live = {id(h.transport): h for h in handlers if h.transport is not None}
        counts: Counter[str] = Counter()
        with self._lock:
            for key in list(self._agents):
                if key not in live:
                    del self._agents[key]
            for key in live:
                counts[self._agents.get(key, "unknown")] += 1
        return dict(counts)

    def stats(self) -> dict[str, Any]:
        """Requests per endpoint and client, blocking ones, open connections, long-polls."""
        connections = self.connections_by_agent()
        with self._lock:
            return {
                "requests_by_agent": dict(self.requests_by_agent),
                "connections_by_agent": connections,
                "requests": dict(self.requests),
                "blocking_requests": dict(self.blocking_requests),
                "total_requests": sum(self.requests.values()),
                "open_connections": self.open_connections,
                "waiting": self.waiting,
                "index": self._index,
            }

    def reset_counters(self) -> None:
        """Zero the request counters."""
        with self._lock:
            self.requests.clear()
            self.requests_by_agent.clear()
            self.blocking_requests.clear()

    # --- mutations (thread-safe) -------------------------------------------------------

    def _bump(self, *tables: str, services: Iterable[str] = ()) -> int:
        self._version += 1
        self._index += 1
        for table in tables:
            self._table_index[table] = self._index
            self._moved.add(table)
        for name in services:
            self._service_index[name] = self._index
            self._moved.add("service:" + name)
        return self._index

    def _notify(self, *, everything: bool = False) -> None:
        """Wake the blocking queries whose index moved (``everything``: all of them)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def wake() -> None:
            with self._lock:
                moved, self._moved = self._moved, set()
                keys = list(self._waiters) if everything else moved
                woken = [f for key in keys for f in self._waiters.get(key, ())]
            for waiter in woken:
                if not waiter.done():
                    waiter.set_result(None)

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake()
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake)

    def _views(self) -> tuple[dict[str, list[tuple[str, str]]], dict[str, list[dict[str, Any]]]]:
        """Instances by service name and checks by node, rebuilt once per change."""
        cache = self._views_cache
        if cache is not None and cache[0] == self._version:
            return cache[1], cache[2]
        by_service: dict[str, list[tuple[str, str]]] = {}
        for key in sorted(self._services):
            by_service.setdefault(self._services[key]["Service"], []).append(key)
        checks_by_node: dict[str, list[dict[str, Any]]] = {}
        for (node, _), check in sorted(self._checks.items()):
            checks_by_node.setdefault(node, []).append(check)
        self._views_cache = (self._version, by_service, checks_by_node)
        return by_service, checks_by_node

    def _services_by_node(self) -> dict[str, list[tuple[str, dict[str, Any]]]]:
        """Instances (ID, row) by node, sorted by ID, rebuilt once per change."""
        cache = self._by_node_cache
        if cache is not None and cache[0] == self._version:
            return cache[1]
        by_node: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for (node, service_id), svc in sorted(self._services.items()):
            by_node.setdefault(node, []).append((service_id, svc))
        self._by_node_cache = (self._version, by_node)
        return by_node

    def _services_of_node(self, node: str) -> set[str]:
        return {s["Service"] for (n, _), s in self._services.items() if n == node}

    def register_node(
        self,
        node: str,
        address: str,
        *,
        meta: dict[str, str] | None = None,
        tagged_addresses: dict[str, str] | None = None,
        node_id: str | None = None,
    ) -> int:
        """Register or update a node (catalog/register); returns the new index."""
        with self._lock:
            existing = self._nodes.get(node)
            index = self._bump("nodes", services=self._services_of_node(node))
            self._nodes[node] = {
                "ID": node_id or (existing or {}).get("ID") or _uuid(node),
                "Node": node,
                "Address": address,
                "Datacenter": self.datacenter,
                "TaggedAddresses": dict(tagged_addresses or {}),
                "Meta": dict(meta or {}),
                "CreateIndex": existing["CreateIndex"] if existing else index,
                "ModifyIndex": index,
            }
        self._notify()
        return index

    def register_service(
        self,
        node: str,
        name: str,
        port: Any,
        *,
        service_id: str | None = None,
        address: str = "",
        tags: list[str] | None = None,
        meta: dict[str, str] | None = None,
        namespace: str | None = None,
        partition: str | None = None,
        checks: list[dict[str, str]] | None = None,
    ) -> int:
        """Register or update a service instance on an existing node; ``checks``
        (``[{"id", "status"}]``) are written in the same transaction (one index), as
        ``/v1/catalog/register`` and an agent's sync do."""
        service_id = service_id or name
        with self._lock:
            if node not in self._nodes:
                raise KeyError(f"unknown node {node!r}")
            key = (node, service_id)
            existing = self._services.get(key)
            touched = {name} | ({existing["Service"]} if existing else set())
            tables = ("services", "checks") if checks else ("services",)
            index = self._bump(*tables, services=touched)
            entry: dict[str, Any] = {
                "ID": service_id,
                "Service": name,
                "Tags": list(tags or []),
                "Address": address,
                "TaggedAddresses": {},
                "Meta": dict(meta or {}),
                "Port": port,
                "Weights": {"Passing": 1, "Warning": 1},
                "EnableTagOverride": False,
                "CreateIndex": existing["CreateIndex"] if existing else index,
                "ModifyIndex": index,
            }
            if namespace is not None:
                entry["Namespace"] = namespace
            if partition is not None:
                entry["Partition"] = partition
            self._services[key] = entry
            for check in checks or []:
                previous = self._checks.get((node, check["id"]))
                self._checks[(node, check["id"])] = _check_row(
                    node,
                    check["id"],
                    check.get("status", "passing"),
                    service_id,
                    name,
                    list(tags or []),
                    previous["CreateIndex"] if previous else index,
                    index,
                )
        self._notify()
        return index

    def register_check(
        self,
        node: str,
        check_id: str,
        status: str = "passing",
        *,
        service_id: str = "",
        name: str | None = None,
    ) -> int:
        """Register or update a check; ``service_id`` empty makes it node-level."""
        with self._lock:
            service_name = ""
            if service_id:
                service = self._services.get((node, service_id))
                if service is None:
                    raise KeyError(f"unknown service {service_id!r} on {node!r}")
                service_name = service["Service"]
            touched = {service_name} if service_name else self._services_of_node(node)
            existing = self._checks.get((node, check_id))
            index = self._bump("checks", services=touched)
            self._checks[(node, check_id)] = _check_row(
                node,
                check_id,
                status,
                service_id,
                service_name,
                list(self._services[(node, service_id)]["Tags"]) if service_id else [],
                existing["CreateIndex"] if existing else index,
                index,
                name=name,
            )
        self._notify()
        return index

    def set_check_status(self, node: str, check_id: str, status: str) -> int:
        """Change a check's status (e.g. a TTL check failing)."""
        with self._lock:
            check = self._checks[(node, check_id)]
            service_id, name = check["ServiceID"], check["Name"]
        return self.register_check(node, check_id, status, service_id=service_id, name=name)

    def deregister_check(self, node: str, check_id: str) -> int:
        """Remove a check."""
        with self._lock:
            check = self._checks.pop((node, check_id))
            name = check["ServiceName"]
            touched = {name} if name else self._services_of_node(node)
            index = self._bump("checks", services=touched)
        self._notify()
        return index

    def deregister_service(self, node: str, service_id: str) -> int:
        """Remove a service instance and its checks."""
        with self._lock:
            service = self._services.pop((node, service_id))
            tables = ["services"]
            for key in [k for k, c in self._checks.items() if k[0] == node]:
                if self._checks[key]["ServiceID"] == service_id:
                    del self._checks[key]
                    tables.append("checks")
            index = self._bump(*set(tables), services={service["Service"]})
        self._notify()
        return index

    def deregister_node(self, node: str) -> int:
        """Remove a node with its services and checks."""
        with self._lock:
            touched = self._services_of_node(node)
            self._nodes.pop(node)
            for key in [k for k in self._services if k[0] == node]:
                del self._services[key]
            for key in [k for k in self._checks if k[0] == node]:
                del self._checks[key]
            index = self._bump("nodes", "services", "checks", services=touched)
        self._notify()
        return index

    def clear(self) -> int:
        """Remove everything (indexes keep growing)."""
        with self._lock:
            touched = {s["Service"] for s in self._services.values()}
            self._nodes.clear()
            self._services.clear()
            self._checks.clear()
            index = self._bump("nodes", "services", "checks", services=touched)
        self._notify()
        return index

    def load(self, dataset: list[dict[str, Any]]) -> int:
        """Replace the catalog with ``dataset``: a list of nodes, each
        ``{"node", "address", "meta", "tagged_addresses", "checks": [{"id","status"}],
        "services": [{"name","id","port","address","tags","meta","namespace","partition",
        "checks": [{"id","status"}]}]}``."""
        with self._lock:
            self.clear()
            for node in dataset:
                self.register_node(
                    node["node"],
                    node["address"],
                    meta=node.get("meta"),
                    tagged_addresses=node.get("tagged_addresses"),
                )
                for check in node.get("checks", []):
                    self.register_check(node["node"], check["id"], check.get("status", "passing"))
                for svc in node.get("services", []):
                    service_id = svc.get("id") or svc["name"]
                    self.register_service(
                        node["node"],
                        svc["name"],
                        svc["port"],
                        service_id=service_id,
                        address=svc.get("address", ""),
                        tags=svc.get("tags"),
                        meta=svc.get("meta"),
                        namespace=svc.get("namespace"),
                        partition=svc.get("partition"),
                        checks=svc.get("checks"),
                    )
            return self._index

    def rewind_index(self, to: int = 1) -> int:
        """Make every index go backwards, as after a snapshot restore; wakes every query."""
        with self._lock:
            self._version += 1
            self._index = to
            for table in self._table_index:
                self._table_index[table] = to
            for name in self._service_index:
                self._service_index[name] = to
            for row in [*self._nodes.values(), *self._services.values(), *self._checks.values()]:
                row["ModifyIndex"] = min(row["ModifyIndex"], to)
                row["CreateIndex"] = min(row["CreateIndex"], to)
            self._epoch += 1
            self._bodies.clear()
        self._notify(everything=True)
        return to

    # --- faults ------------------------------------------------------------------------

    # --- HTTP --------------------------------------------------------------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        path = request.path.removeprefix(self.path_prefix)
        if path.startswith("/_double/"):
            return await handler(request)  # type: ignore[no-any-return]
        endpoint = "/v1/health/service" if path.startswith("/v1/health/service/") else path
        agent = _agent_name(request.headers.get("User-Agent", ""))
        with self._lock:
            if request.transport is not None:
                self._agents[id(request.transport)] = agent
            self.requests_by_agent[agent] += 1
            self.requests[endpoint] += 1
            if "index" in request.query:
                self.blocking_requests[endpoint] += 1
                self.index_params.setdefault(endpoint, []).append(request.query["index"])
        # Faults of the request apply on arrival, damage to the body when the answer leaves
        # (so a blocking query already waiting gets a damaged answer too).
        refused = await self.arrival_fault(request, path)
        if refused is not None:
            return refused
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        dc = request.query.get("dc")
        if dc and dc != self.datacenter:
            return web.Response(status=500, text="No path to datacenter")
        response: web.StreamResponse = await handler(request)
        damage = self._fault_for(path, ("malformed", "truncated", "short", "index"))
        if damage is not None and response.status == 200:
            if damage.kind == "index":
                response.headers["X-Consul-Index"] = str(damage.index)
                return response
            return await _damaged(request, response, damage.kind)
        return response

    def _check_auth(self, request: web.Request) -> web.Response | None:
        if self.basic_auth is not None:
            expected = "Basic " + base64.b64encode(":".join(self.basic_auth).encode()).decode()
            if request.headers.get("Authorization") != expected:
                return web.Response(status=401, text="Unauthorized")
        if self.acl_token is None:
            return None
        token = request.headers.get("X-Consul-Token") or request.query.get("token")
        bearer = request.headers.get("Authorization", "")
        if not token and bearer.startswith("Bearer "):
            token = bearer[len("Bearer ") :]
        if token == self.acl_token:
            return None
        if not token:
            return web.Response(status=403, text="Permission denied")
        return web.Response(status=403, text="ACL not found")

    async def _blocking(
        self, request: web.Request, current: Callable[[], int], keys: Callable[[], list[str]]
    ) -> int | None:
        """Wait as Consul's blockingQuery does; return the index to answer with, or None
        after writing a 400. ``keys`` names what the query watches (see ``_waiters``)."""
        raw_index = request.query.get("index")
        if raw_index is None:
            return current()
        try:
            min_index = int(raw_index)
            wait = parse_go_duration(request.query.get("wait", ""))
        except ValueError:
            return None
        if wait <= 0:
            wait = _DEFAULT_WAIT
        wait = min(wait, _MAX_WAIT)
        if self.jitter:
            wait += random.uniform(0, wait / 16)
        deadline = time.monotonic() + wait
        with self._lock:
            self.waiting += 1
        loop = asyncio.get_running_loop()
        try:
            while True:
                index = current()
                if index > min_index or min_index == 0:
                    return index
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopped_set():
                    return index
                # A future and a timer, not wait_for: no task per waiter per wake.
                waiter: asyncio.Future[None] = loop.create_future()
                watched = keys()
                with self._lock:
                    for key in watched:
                        self._waiters.setdefault(key, set()).add(waiter)
                timer = loop.call_later(remaining, _release, waiter)
                try:
                    await waiter
                finally:
                    timer.cancel()
                    with self._lock:
                        for key in watched:
                            waiters = self._waiters.get(key)
                            if waiters is not None:
                                waiters.discard(waiter)
                                if not waiters:
                                    del self._waiters[key]
                if self._rewound(min_index):
                    return current()  # a restore wakes every query, with the lower index
        finally:
            with self._lock:
                self.waiting -= 1

    def _stopped_set(self) -> bool:
        return self._stopped is not None and self._stopped.is_set()

    def _rewound(self, min_index: int) -> bool:
        with self._lock:
            return self._index < min_index

    def _answer(
        self,
        request: web.Request,
        depends: tuple[int, ...],
        index: int,
        build: Callable[[], Any],
    ) -> web.Response:
        """Answer with ``build()`` serialized, or the same bytes serialized earlier for the
        same path and query at the same ``depends`` indexes (call with the lock held). A
        thousand long-polls running out together thus cost a thousand writes, not a
        thousand encodings of an unchanged catalog."""
        query = "&".join(
            f"{k}={v}" for k, v in sorted(request.query.items()) if k not in ("index", "wait")
        )
        key = (request.path, query)
        depends = (self._epoch, *depends)
        cached = self._bodies.get(key)
        if cached is not None and cached[0] == depends:
            body, index = cached[1], cached[2]
        else:
            body = orjson.dumps(build())
            if len(self._bodies) >= _MAX_BODIES:
                self._bodies.clear()
            self._bodies[key] = (depends, body, index)
        return web.Response(
            body=body,
            content_type="application/json",
            headers={
                "X-Consul-Index": str(index),
                "X-Consul-KnownLeader": "true",
                "X-Consul-LastContact": "0",
            },
        )

    async def _agent_self(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "Config": {
                    "Datacenter": self.datacenter,
                    "NodeName": "consul-double",
                    "Server": True,
                    "Version": "1.15.0",
                },
                "Member": {"Name": "consul-double", "Addr": "127.0.0.1", "Port": 8301},
            }
        )

    def _node_meta_filter(self, request: web.Request) -> Callable[[dict[str, Any]], bool]:
        wanted = [v.split(":", 1) for v in request.query.getall("node-meta", [])]
        return lambda node: all(
            len(w) == 2 and node.get("Meta", {}).get(w[0]) == w[1] for w in wanted
        )

    def _filter(self, request: web.Request) -> Callable[[dict[str, Any]], bool] | web.Response:
        text = request.query.get("filter")
        if not text:
            return lambda _: True
        try:
            return compile_filter(text)
        except FilterError as exc:
            return web.Response(
                status=400, text=f"Failed to create boolean expression evaluator: {exc}"
            )

    def _namespace_ok(self, request: web.Request, service: dict[str, Any]) -> bool:
        namespace = request.query.get("ns")
        return not namespace or service.get("Namespace", "default") == namespace

    async def _catalog_services(self, request: web.Request) -> web.Response:
        index = await self._blocking(
            request, lambda: self._table_index["services"], lambda: ["services"]
        )
        if index is None:
            return web.Response(status=400, text="Invalid wait time or index")
        filtered = bool(request.query.get("filter"))
        bexpr = self._filter(request)
        if isinstance(bexpr, web.Response):
            return bexpr
        node_ok = self._node_meta_filter(request)

        def build() -> dict[str, list[str]]:
            result: dict[str, set[str]] = {}
            for (node_name, _), svc in self._services.items():
                node = self._nodes[node_name]
                if not node_ok(node) or not self._namespace_ok(request, svc):
                    continue
                # The catalog API filters over ServiceNode fields.
                if filtered and not bexpr(_service_node(node, svc)):
                    continue
                result.setdefault(svc["Service"], set()).update(svc["Tags"])
            return {name: sorted(tags) for name, tags in sorted(result.items())}

        with self._lock:
            tables = self._table_index
            return self._answer(
                request, (tables["services"], tables["nodes"]), tables["services"], build
            )

    async def _catalog_nodes(self, request: web.Request) -> web.Response:
        index = await self._blocking(request, lambda: self._table_index["nodes"], lambda: ["nodes"])
        if index is None:
            return web.Response(status=400, text="Invalid wait time or index")
        node_ok = self._node_meta_filter(request)
        with self._lock:
            nodes = self._table_index["nodes"]
            return self._answer(
                request,
                (nodes,),
                nodes,
                lambda: [n for _, n in sorted(self._nodes.items()) if node_ok(n)],
            )

    async def _catalog_node(self, request: web.Request) -> web.Response:
        """``/v1/catalog/node/<node>``: the node and a map of its services by ID, or
        ``null`` for an unknown node; its index is the nodes' and services' tables' highest
        (state/catalog.go ``NodeServices``), so every catalog write moves it."""
        name = request.match_info["node"]

        def current() -> int:
            with self._lock:
                return max(self._table_index["services"], self._table_index["nodes"])

        index = await self._blocking(request, current, lambda: ["services", "nodes"])
        if index is None:
            return web.Response(status=400, text="Invalid wait time or index")

        def build() -> dict[str, Any] | None:
            node = self._nodes.get(name)
            if node is None:
                return None
            services = {
                service_id: svc
                for service_id, svc in self._services_by_node().get(name, [])
                if self._namespace_ok(request, svc)
            }
            return {"Node": node, "Services": services}

        with self._lock:
            tables = self._table_index
            index = max(tables["services"], tables["nodes"])
            return self._answer(request, (tables["services"], tables["nodes"]), index, build)

    async def _health_state(self, request: web.Request) -> web.Response:
        state = request.match_info["state"]
        if state not in ("any", "passing", "warning", "critical"):
            return web.Response(status=400, text=f"Invalid check state '{state}'")
        index = await self._blocking(
            request, lambda: self._table_index["checks"], lambda: ["checks"]
        )
        if index is None:
            return web.Response(status=400, text="Invalid wait time or index")
        node_ok = self._node_meta_filter(request)

        def build() -> list[dict[str, Any]]:
            return [
                c
                for key, c in sorted(self._checks.items())
                if (state == "any" or c["Status"] == state) and node_ok(self._nodes[key[0]])
            ]

        with self._lock:
            tables = self._table_index
            return self._answer(
                request, (tables["checks"], tables["nodes"]), tables["checks"], build
            )

    async def _health_service(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]

        def current() -> int:
            with self._lock:
                return self._service_index.get(name, self._table_index["services"])

        def watched() -> list[str]:
            # A service never registered answers with the services table's index.
            with self._lock:
                known = name in self._service_index
            return ["service:" + name] if known else ["service:" + name, "services"]

        index = await self._blocking(request, current, watched)
        if index is None:
            return web.Response(status=400, text="Invalid wait time or index")
        bexpr = self._filter(request)
        if isinstance(bexpr, web.Response):
            return bexpr
        node_ok = self._node_meta_filter(request)
        tags = request.query.getall("tag", [])
        passing_only = "passing" in request.query

        def build() -> list[dict[str, Any]]:
            body = []
            by_service, checks_by_node = self._views()
            for node_name, service_id in by_service.get(name, []):
                svc = self._services[(node_name, service_id)]
                if not self._namespace_ok(request, svc):
                    continue
                node = self._nodes[node_name]
                if not node_ok(node) or not all(t in svc["Tags"] for t in tags):
                    continue
                checks = [
                    c
                    for c in checks_by_node.get(node_name, [])
                    if c["ServiceID"] in ("", service_id)
                ]
                if passing_only and any(c["Status"] != "passing" for c in checks):
                    continue
                entry = {"Node": node, "Service": svc, "Checks": checks}
                if bexpr(entry):
                    body.append(entry)
            return body

        with self._lock:
            index = self._service_index.get(name, self._table_index["services"])
            return self._answer(request, (index,), index, build)

    # --- control API (when run as a process) ---------------------------------------------

    async def _control_call(self, request: web.Request) -> web.Response:
        payload = await request.json()
        method = payload["method"]
        if method.startswith("_") or method in ("start", "stop", "start_async", "stop_async"):
            return web.json_response({"error": f"not callable: {method}"}, status=400)
        try:
            result = getattr(self, method)(**payload.get("kwargs", {}))
        except Exception as exc:
            return web.json_response({"error": f"{type(exc).__name__}: {exc}"}, status=400)
        if isinstance(result, Fault):
            result = {"kind": result.kind, "path": result.path}
        return web.json_response({"result": result})

    async def _control_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())


def _check_row(
    node: str,
    check_id: str,
    status: str,
    service_id: str,
    service_name: str,
    service_tags: list[str],
    create_index: int,
    modify_index: int,
    *,
    name: str | None = None,
) -> dict[str, Any]:
    """A HealthCheck as /v1/health/* return it."""
    return {
        "Node": node,
        "CheckID": check_id,
        "Name": name or check_id,
        "Status": status,
        "Notes": "",
        "Output": "",
        "ServiceID": service_id,
        "ServiceName": service_name,
        "ServiceTags": service_tags,
        "Type": "ttl",
        "Definition": {},
        "CreateIndex": create_index,
        "ModifyIndex": modify_index,
    }


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _service_node(node: dict[str, Any], svc: dict[str, Any]) -> dict[str, Any]:
    """The ServiceNode fields that ``/v1/catalog/services``' filter runs over."""
    return {
        "Node": node["Node"],
        "Address": node["Address"],
        "Datacenter": node["Datacenter"],
        "TaggedAddresses": node["TaggedAddresses"],
        "NodeMeta": node["Meta"],
        "ServiceID": svc["ID"],
        "ServiceName": svc["Service"],
        "ServiceTags": svc["Tags"],
        "ServiceAddress": svc["Address"],
        "ServiceMeta": svc["Meta"],
        "ServicePort": svc["Port"],
    }


def _agent_name(user_agent: str) -> str:
    """A short client name: ``sdbridge``, ``vmagent`` (fasthttp's vm_promscrape), or the UA."""
    if user_agent.startswith("sdbridge"):
        return "sdbridge"
    if "vm_promscrape" in user_agent or "vmagent" in user_agent:
        return "vmagent"
    return user_agent.split("/")[0] or "unknown"


def _uuid(seed: str) -> str:
    digest = hashlib.md5(seed.encode(), usedforsecurity=False).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


async def _damaged(
    request: web.Request, response: web.StreamResponse, kind: str
) -> web.StreamResponse:
    body = getattr(response, "body", b"") or b""
    assert isinstance(body, bytes)
    if kind == "malformed":
        return web.Response(
            body=b"{not json at all" + body[:20],
            content_type="application/json",
            headers={"X-Consul-Index": response.headers.get("X-Consul-Index", "1")},
        )
    if kind == "truncated":  # a complete HTTP answer whose JSON stops half-way
        return web.Response(
            body=body[: max(1, len(body) // 2)],
            content_type="application/json",
            headers={"X-Consul-Index": response.headers.get("X-Consul-Index", "1")},
        )
    # "short": announces the full length, sends half, then closes the connection.
    stream = web.StreamResponse(
        headers={
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            "X-Consul-Index": response.headers.get("X-Consul-Index", "1"),
        }
    )
    await stream.prepare(request)
    await stream.write(body[: len(body) // 2])
    reset_connection(request)
    return stream


def running(**options: Any) -> ConsulDouble:
    """A double for a with-block: it serves from a thread until the block ends."""
    return ConsulDouble(**options)


def main() -> None:
    """Run the double as a process until killed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--datacenter", default="dc1")
    parser.add_argument("--jitter", action="store_true")
    args = parser.parse_args()
    double = ConsulDouble(port=args.port, datacenter=args.datacenter, jitter=args.jitter)
    double.serve_forever("consul double")


if __name__ == "__main__":
    main()
