"""A Nacos server double (HTTP APIs of 1.x, 2.x and 3.x, and the 2.x/3.x gRPC channel).

No Nacos server can be run here, so this double follows Nacos's own sources
(alibaba/nacos), one fixture per endpoint and version, each citing the file it follows:

- v1 client API, on in every version (``nacos.core.api.compatibility.client.enabled``
  defaults to true, ``core/.../compatibility/ApiCompatibilityConfig.java``):
  ``/nacos/v1/ns/service/list`` (``naming/controllers/ServiceController.java``) and
  ``/nacos/v1/ns/instance/list`` (``naming/controllers/InstanceController.java``).
- v1 bulk listing ``/nacos/v1/ns/catalog/services?withInstances=true``
  (``naming/controllers/CatalogController.java``; on 2.x ``CatalogServiceV2Impl
  .pageListServiceDetail``): a bare list of ``ServiceDetailInfo`` without a count. Two
  quirks kept: 1.x passes ``pageNo`` straight to ``getPagedService`` (0-based, where the
  plain listing uses ``pageNo - 1``), and 2.x's ``doPage`` returns *every* service when
  there are fewer than ``pageSize``, whatever ``pageNo``. Off on 3.x (admin API, 410).
- v2 ``/nacos/v2/ns/instance/list`` (``controllers/v2/InstanceControllerV2.java``): a
  ``Result`` around the v1 ``ServiceInfo``; 2.x and 3.x.
- v3 (3.x only): ``/nacos/v3/client/ns/instance/list`` (``controllers/v3/
  InstanceOpenApiController.java``): ``Result<List<Instance>>``, disabled instances left
  out, ``clusterName`` defaulting to ``DEFAULT`` (``InstanceListForm.fillDefaultValue``);
  ``/nacos/v3/admin/ns/service/list?withInstances=true`` (``controllers/v3/
  ServiceControllerV3.java``): ``Result<Page<ServiceDetailInfo>>``, an admin API that a
  non-admin user is refused (403) when auth is on.
- Old console/admin APIs on 3.x answer 410 with a ``Result`` failure, as
  ``ApiCompatibilityFilter.responseReject`` does while ``nacos.core.api.compatibility.
  admin.enabled``/``console.enabled`` are off (their 3.x default); ``admin_api_compat``
  turns the admin switch on.
- Namespaces: ``/nacos/v1/console/namespaces`` (1.x/2.x: the public namespace is listed
  with id ``""``) and ``/nacos/v3/admin/core/namespace/list`` (3.x: id ``public``).
  ``""`` and ``public`` name the same namespace in every query.
- Server state ``/nacos/v1/console/server/state`` (1.x/2.x: ``{"version": ...}``).
- Auth: ``POST /nacos/v3/auth/user/login`` (3.x) and ``/nacos/v1/auth/users/login``
  (all; ``plugin-default-impl/.../UserController.login``), form ``username``/``password``,
  answering ``{accessToken, tokenTtl, globalAdmin, username}``; the token is accepted as
  the ``accessToken`` query parameter or header, or ``Authorization: Bearer``; a missing,
  unknown or expired token is 403, as Nacos's auth filter answers.
- gRPC (2.x/3.x, HTTP port + 1000): see :class:`GrpcNaming` below.

Faults per path regex as in the Consul double: ``status``, ``delay``, ``malformed``,
``truncated``, ``reset``; request counters per endpoint, gRPC messages per type.
Runs in a thread (``with NacosDouble(version="2.x") as nacos:``) or as a process
(``python -m tests.doubles.nacos_double --port N``) driven through ``POST /_double/call``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from tests.doubles.base import FaultInjector, ThreadedServer

DEFAULT_GROUP = "DEFAULT_GROUP"
DEFAULT_CLUSTER = "DEFAULT"
PUBLIC = "public"
VERSIONS = {"1.x": "1.4.8", "2.x": "2.4.3", "3.x": "3.1.0"}


def grouped(group: str, service: str) -> str:
    """Nacos's grouped service name, ``GROUP@@service`` (NamingUtils.getGroupedName)."""
    return f"{group}@@{service}"


def namespace_id(raw: str | None) -> str:
    """``""`` and a missing id are the public namespace (NamespaceUtil)."""
    return raw or PUBLIC


def result(data: Any, code: int = 0, message: str = "success") -> dict[str, Any]:
    """Nacos's v2/v3 ``Result`` envelope (api/model/v2/Result.java)."""
    return {"code": code, "message": message, "data": data}


def identity(instance: dict[str, Any]) -> tuple[str, int, str]:
    """What Nacos keys an instance of a service by: ip, port and cluster."""
    return instance["ip"], instance["port"], instance["clusterName"]


class NacosDouble(ThreadedServer, FaultInjector):
    """An in-memory Nacos naming server served over HTTP (and gRPC) on 127.0.0.1."""

    thread_name = "nacos-double"
    default_fault_body = "caused: injected fault;"

    def __init__(
        self,
        *,
        version: str = "2.x",
        port: int = 0,
        grpc: bool | None = None,
        grpc_port: int | None = None,
        users: dict[str, str] | None = None,
        admins: tuple[str, ...] = ("nacos",),
        token_ttl: int = 18000,
        admin_api_compat: bool = False,
        namespaces: tuple[str, ...] = (),
    ) -> None:
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {sorted(VERSIONS)}")
        self.version = version
        self.port = port
        self.grpc_enabled = version != "1.x" if grpc is None else grpc
        self.grpc_port = grpc_port
        self.users = dict(users or {})  # empty: auth off
        self.admins = admins
        self.token_ttl = token_ttl
        self.admin_api_compat = admin_api_compat
        self._lock = threading.RLock()
        # namespace -> (group, service) -> {"metadata": {...}, "instances": [Instance]}
        self._data: dict[str, dict[tuple[str, str], dict[str, Any]]] = {PUBLIC: {}}
        for ns in namespaces:
            self._data.setdefault(ns, {})
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (user, expires at)
        FaultInjector.__init__(self)
        self.requests: Counter[str] = Counter()
        self.grpc_messages: Counter[str] = Counter()
        self.logins: Counter[str] = Counter()  # path -> successful logins
        self.clock: Callable[[], float] = time.monotonic
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self.grpc_server: Any = None  # GrpcNaming, when the channel is on
        self.on_change: list[Callable[[str, str, str], None]] = []  # (ns, group, service)
        # (ns, group, service, ADD_SERVICE | DELETE_SERVICE): what 3.x's fuzzy watch tells
        self.on_service: list[Callable[[str, str, str, str], None]] = []

    @property
    def major(self) -> int:
        return int(self.version[0])

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        get, post = app.router.add_get, app.router.add_post
        get("/nacos/v1/ns/service/list", self._v1_service_list)
        get("/nacos/v1/ns/instance/list", self._v1_instance_list)
        get("/nacos/v1/ns/catalog/services", self._v1_catalog_services)
        get("/nacos/v1/console/server/state", self._v1_server_state)
        get("/nacos/v1/console/namespaces", self._v1_namespaces)
        post("/nacos/v1/auth/users/login", self._login)
        post("/nacos/v1/auth/login", self._login)
        get("/nacos/v2/ns/instance/list", self._v2_instance_list)
        get("/nacos/v3/client/ns/instance/list", self._v3_instance_list)
        get("/nacos/v3/admin/ns/service/list", self._v3_service_list)
        get("/nacos/v3/admin/core/namespace/list", self._v3_namespaces)
        post("/nacos/v3/auth/user/login", self._login)
        post("/_double/call", self._control_call)
        get("/_double/stats", self._control_stats)
        return app

    async def start_async(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.port == 0:
            self.port = free_port_pair() if self.grpc_enabled and self.grpc_port is None else 0
        await self.serve_app(self.make_app(), backlog=1024)
        if self.grpc_enabled:
            from tests.doubles.nacos_grpc import GrpcNaming

            self.grpc_server = GrpcNaming(self, self.grpc_port or self.port + 1000)
            await self.grpc_server.start()

    async def stop_async(self) -> None:
        if self.grpc_server is not None:
            await self.grpc_server.stop()
        await self.close_app()

    def call_soon(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` in the double's loop (for gRPC pushes after a change)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(fn)

    def detect_clients(self) -> None:
        """Probe every gRPC connection, as Nacos does to connections idle for 20 s."""
        if self.grpc_server is not None:
            self.call_soon(self.grpc_server.detect_clients)

    # --- data --------------------------------------------------------------------------

    def add_namespace(self, ns: str) -> None:
        with self._lock:
            self._data.setdefault(namespace_id(ns), {})

    def register(
        self,
        service: str,
        ip: str,
        port: int,
        *,
        group: str = DEFAULT_GROUP,
        namespace: str = PUBLIC,
        cluster: str = DEFAULT_CLUSTER,
        weight: float = 1.0,
        healthy: bool = True,
        enabled: bool = True,
        ephemeral: bool = True,
        metadata: dict[str, str] | None = None,
        instance_id: str | None = None,
    ) -> dict[str, Any]:
        """Register (or replace) an instance, keyed by ip, port and cluster as Nacos does."""
        ns = namespace_id(namespace)
        name = grouped(group, service)
        instance = {
            # The default "simple" generator: ip#port#cluster#group@@service.
            "instanceId": instance_id or f"{ip}#{port}#{cluster}#{name}",
            "ip": ip,
            "port": port,
            "weight": weight,
            "healthy": healthy,
            "enabled": enabled,
            "ephemeral": ephemeral,
            "clusterName": cluster,
            "serviceName": name,
            "metadata": dict(metadata or {}),
            "instanceHeartBeatInterval": 5000,
            "instanceHeartBeatTimeOut": 15000,
            "ipDeleteTimeout": 30000,
        }
        with self._lock:
            table = self._data.setdefault(ns, {})
            created = (group, service) not in table
            entry = table.setdefault((group, service), {"metadata": {}, "instances": []})
            entry["instances"] = [
                i for i in entry["instances"] if identity(i) != (ip, port, cluster)
            ] + [instance]
        if created:
            self._service_moved(ns, group, service, "ADD_SERVICE")
        self._changed(ns, group, service)
        return instance

    def deregister(
        self,
        service: str,
        ip: str,
        port: int,
        *,
        group: str = DEFAULT_GROUP,
        namespace: str = PUBLIC,
        cluster: str = DEFAULT_CLUSTER,
    ) -> None:
        ns = namespace_id(namespace)
        with self._lock:
            entry = self._data.get(ns, {}).get((group, service))
            if entry is None:
                return
            entry["instances"] = [
                i for i in entry["instances"] if identity(i) != (ip, port, cluster)
            ]
        self._changed(ns, group, service)

    def update(
        self,
        service: str,
        ip: str,
        port: int,
        *,
        group: str = DEFAULT_GROUP,
        namespace: str = PUBLIC,
        cluster: str = DEFAULT_CLUSTER,
        **changes: Any,
    ) -> None:
        """Change fields of an instance (healthy, enabled, weight, metadata ...)."""
        ns = namespace_id(namespace)
        with self._lock:
            for instance in self._data[ns][(group, service)]["instances"]:
                if identity(instance) == (ip, port, cluster):
                    instance.update(changes)
        self._changed(ns, group, service)

    def remove_service(
        self, service: str, *, group: str = DEFAULT_GROUP, namespace: str = PUBLIC
    ) -> None:
        ns = namespace_id(namespace)
        with self._lock:
            removed = self._data.get(ns, {}).pop((group, service), None)
        if removed is not None:
            self._service_moved(ns, group, service, "DELETE_SERVICE")
        self._changed(ns, group, service)

    def load(self, services: int, instances: int, *, namespace: str = PUBLIC) -> None:
        """``services`` services of ``instances`` instances each, on 127.0.x.y."""
        ns = namespace_id(namespace)
        with self._lock:
            table = self._data.setdefault(ns, {})
            for s in range(services):
                name = f"svc-{s:05d}"
                entry = table.setdefault((DEFAULT_GROUP, name), {"metadata": {}, "instances": []})
                entry["instances"] = []
                for i in range(instances):
                    ip = f"127.0.{s // 250}.{(s % 250) + 1}"
                    port = 9000 + i
                    entry["instances"].append(
                        {
                            "instanceId": f"{ip}#{port}#{DEFAULT_CLUSTER}#{grouped(DEFAULT_GROUP, name)}",
                            "ip": ip,
                            "port": port,
                            "weight": 1.0,
                            "healthy": True,
                            "enabled": True,
                            "ephemeral": True,
                            "clusterName": DEFAULT_CLUSTER,
                            "serviceName": grouped(DEFAULT_GROUP, name),
                            "metadata": {"version": "1"},
                        }
                    )

    def _service_moved(self, ns: str, group: str, service: str, how: str) -> None:
        for listener in list(self.on_service):
            listener(ns, group, service, how)

    def _changed(self, ns: str, group: str, service: str) -> None:
        for listener in list(self.on_change):
            listener(ns, group, service)

    def service_info(
        self, ns: str, group: str, service: str, clusters: list[str], healthy_only: bool
    ) -> dict[str, Any]:
        """The ``ServiceInfo`` a client sees: disabled instances left out (as
        ``InstanceOperatorClientImpl.listInstance`` / the v1 ``InstanceController`` do)."""
        with self._lock:
            entry = self._data.get(namespace_id(ns), {}).get((group, service))
            instances = [dict(i) for i in (entry["instances"] if entry else [])]
        hosts = [
            i
            for i in instances
            if i["enabled"]
            and (not clusters or i["clusterName"] in clusters)
            and (i["healthy"] or not healthy_only)
        ]
        return {
            "name": grouped(group, service),
            "groupName": group,
            "clusters": ",".join(clusters),
            "cacheMillis": 10000,
            "hosts": hosts,
            "lastRefTime": int(time.time() * 1000),
            "checksum": "",
            "allIPs": False,
            "reachProtectionThreshold": False,
            "valid": True,
        }

    def _services(self, ns: str) -> list[tuple[str, str]]:
        with self._lock:
            return sorted(self._data.get(namespace_id(ns), {}))

    def _detail(self, ns: str, key: tuple[str, str], full_instances: bool) -> dict[str, Any]:
        with self._lock:
            entry = self._data[namespace_id(ns)][key]
            clusters: dict[str, list[dict[str, Any]]] = {}
            for instance in entry["instances"]:
                if full_instances:  # 3.x ClusterInfo.hosts: List<Instance>
                    host = dict(instance)
                else:  # 1.x/2.x IpAddressInfo: ip, port, valid, weight, enabled, metadata
                    host = {
                        "ip": instance["ip"],
                        "port": instance["port"],
                        "valid": instance["healthy"],
                        "marked": False,
                        "weight": instance["weight"],
                        "enabled": instance["enabled"],
                        "metadata": dict(instance["metadata"]),
                    }
                clusters.setdefault(instance["clusterName"], []).append(host)
            metadata = dict(entry["metadata"])
        group, service = key
        cluster_map = {
            name: {
                "clusterName": name,
                "healthChecker": {"type": "TCP"},
                "metadata": {},
                "hosts": hosts,
            }
            for name, hosts in clusters.items()
        }
        detail: dict[str, Any] = {
            "serviceName": service,
            "groupName": group,
            "metadata": metadata,
            "clusterMap": cluster_map,
        }
        if full_instances:
            detail.update(namespaceId=namespace_id(ns), protectThreshold=0.0, ephemeral=True)
        return detail

    # --- tokens ------------------------------------------------------------------------

    def expire_tokens(self) -> None:
        """Make every token issued so far expired, as if tokenTtl had run out."""
        with self._lock:
            self._tokens = {t: (u, 0.0) for t, (u, _) in self._tokens.items()}

    def _user_of(self, request: web.Request) -> tuple[str | None, str]:
        token = request.query.get("accessToken") or request.headers.get("accessToken", "")
        bearer = request.headers.get("Authorization", "")
        if not token and bearer.startswith("Bearer "):
            token = bearer.removeprefix("Bearer ")
        return self.check_token(token)

    def check_token(self, token: str) -> tuple[str | None, str]:
        """(user, "") for a live token, else (None, why)."""
        if not token:
            return None, "user not found!"
        with self._lock:
            found = self._tokens.get(token)
        if found is None:
            return None, "token invalid!"
        user, expires = found
        if self.clock() >= expires:
            return None, "token expired!"
        return user, ""

    # --- faults ------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self.requests),
                "total_requests": sum(self.requests.values()),
                "grpc_messages": dict(self.grpc_messages),
                "total_grpc_messages": sum(self.grpc_messages.values()),
                "logins": dict(self.logins),
            }

    def reset_counters(self) -> None:
        with self._lock:
            self.requests.clear()
            self.grpc_messages.clear()
            self.logins.clear()

    # --- HTTP --------------------------------------------------------------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_double/"):
            return await handler(request)  # type: ignore[no-any-return]
        with self._lock:
            self.requests[path] += 1
        refused = await self.arrival_fault(request, path)
        if refused is not None:
            return refused
        gone = self._compatibility(path)
        if gone is not None:
            return gone
        if self.users and "/auth/" not in path and not path.endswith("/server/state"):
            user, why = self._user_of(request)
            if user is None:
                return web.Response(status=403, text=why)
            if "/v3/admin/" in path and user not in self.admins:
                # Admin APIs need an admin user (@Secured(apiType = ADMIN_API)).
                body = result(None, 403, "authorization failed!")
                return web.json_response(body, status=403)
        try:
            response: web.StreamResponse = await handler(request)
        except _BadRequest as exc:
            return web.Response(status=400, text=str(exc))
        damage = self._fault_for(path, ("malformed", "truncated"))
        if damage is not None and response.status == 200:
            body = getattr(response, "body", b"") or b""
            assert isinstance(body, bytes)
            if damage.kind == "malformed":
                body = b"<html>not json" + body[:20]
            else:
                body = body[: max(1, len(body) // 2)]
            return web.Response(body=body, content_type="application/json")
        return response

    def _compatibility(self, path: str) -> web.Response | None:
        """404 for what a version lacks; 410 for 3.x's switched-off old APIs."""
        if path.startswith("/nacos/v3/") and self.major < 3:
            return web.Response(status=404, text="Not Found")
        if path.startswith("/nacos/v2/") and self.major < 2:
            return web.Response(status=404, text="Not Found")
        if self.major >= 3:
            old_console = path.startswith("/nacos/v1/console/")
            # The v1 catalog and service list are admin APIs of 3.x (@Compatibility ADMIN_API).
            old_admin = path.startswith(("/nacos/v1/ns/catalog/", "/nacos/v1/ns/service/"))
            if old_console or (old_admin and not self.admin_api_compat):
                switch = "console" if old_console else "admin"
                message = (
                    f"Current API will be deprecated, please use the replacement API or set"
                    f" `nacos.core.api.compatibility.{switch}.enabled` to true"
                )
                body = orjson.dumps(result(None, 410, message)).decode()
                return web.Response(status=410, text=body)
        return None

    def _query(self, request: web.Request) -> tuple[str, str, str]:
        """(namespace, group, service) of a client instance query."""
        ns = namespace_id(request.query.get("namespaceId"))
        name = request.query.get("serviceName", "")
        if not name:
            raise _BadRequest("Required parameter 'serviceName' type String is not present")
        group = request.query.get("groupName") or DEFAULT_GROUP
        if "@@" in name:
            group, name = name.split("@@", 1)
        return ns, group, name

    # v1: naming/controllers/ServiceController.java list()
    async def _v1_service_list(self, request: web.Request) -> web.Response:
        page_no, page_size = _page(request, required=True)
        ns = namespace_id(request.query.get("namespaceId"))
        group = request.query.get("groupName") or DEFAULT_GROUP
        names = [s for g, s in self._services(ns) if g == group]
        start = (page_no - 1) * page_size
        return web.json_response({"count": len(names), "doms": names[start : start + page_size]})

    # v1: naming/controllers/InstanceController.java list() -> ServiceInfo
    async def _v1_instance_list(self, request: web.Request) -> web.Response:
        ns, group, service = self._query(request)
        clusters = [c for c in request.query.get("clusters", "").split(",") if c]
        healthy_only = request.query.get("healthyOnly", "false") == "true"
        return web.json_response(self.service_info(ns, group, service, clusters, healthy_only))

    # v2: controllers/v2/InstanceControllerV2.java list() -> Result<ServiceInfo>
    async def _v2_instance_list(self, request: web.Request) -> web.Response:
        ns, group, service = self._query(request)
        clusters = [c for c in request.query.get("clusterName", "").split(",") if c]
        healthy_only = request.query.get("healthyOnly", "false") == "true"
        return web.json_response(
            result(self.service_info(ns, group, service, clusters, healthy_only))
        )

    # v3: controllers/v3/InstanceOpenApiController.java list() -> Result<List<Instance>>
    async def _v3_instance_list(self, request: web.Request) -> web.Response:
        ns, group, service = self._query(request)
        # InstanceListForm.fillDefaultValue: a blank clusterName is DEFAULT.
        clusters = [
            c for c in (request.query.get("clusterName") or DEFAULT_CLUSTER).split(",") if c
        ]
        info = self.service_info(ns, group, service, clusters, False)
        return web.json_response(result(info["hosts"]))

    # 1.x: controllers/CatalogController.java listDetail(); 2.x: CatalogServiceV2Impl
    async def _v1_catalog_services(self, request: web.Request) -> web.Response:
        if request.query.get("withInstances", "false") != "true":
            page_no, page_size = _page(request, required=True)
            ns = namespace_id(request.query.get("namespaceId"))
            keys = self._services(ns)
            chosen = keys[(page_no - 1) * page_size : page_no * page_size]
            views = [{"name": s, "groupName": g} for g, s in chosen]
            return web.json_response({"serviceList": views, "count": len(keys)})
        page_no, page_size = _page(request, required=True)
        ns = namespace_id(request.query.get("namespaceId"))
        keys = _filter(self._services(ns), request)
        if self.major == 1:
            chosen = keys[page_no * page_size : (page_no + 1) * page_size]  # 0-based start page
        elif len(keys) < page_size:
            chosen = keys  # doPage: fewer than a page -> everything, whatever pageNo
        else:
            chosen = keys[(page_no - 1) * page_size : page_no * page_size]
        return web.json_response([self._detail(ns, k, False) for k in chosen])

    # 3.x: controllers/v3/ServiceControllerV3.java list() -> Result<Page<ServiceDetailInfo>>
    async def _v3_service_list(self, request: web.Request) -> web.Response:
        page_no, page_size = _page(request, required=False)
        ns = namespace_id(request.query.get("namespaceId"))
        keys = _filter(self._services(ns), request)
        chosen = keys[(page_no - 1) * page_size : page_no * page_size]
        if request.query.get("withInstances", "false") == "true":
            items = [self._detail(ns, k, True) for k in chosen]
        else:
            items = [{"name": s, "groupName": g} for g, s in chosen]
        pages = -(-len(keys) // page_size)
        page = {
            "totalCount": len(keys),
            "pageNumber": page_no,
            "pagesAvailable": pages,
            "pageItems": items,
        }
        return web.json_response(result(page))

    async def _v1_server_state(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "version": VERSIONS[self.version],
                "standalone_mode": "standalone",
                "function_mode": None,
            }
        )

    async def _v1_namespaces(self, request: web.Request) -> web.Response:
        with self._lock:
            ids = sorted(self._data)
        data = [
            {
                # 1.x/2.x list the public namespace with id "" (NamespaceController).
                "namespace": "" if ns == PUBLIC else ns,
                "namespaceShowName": ns,
                "quota": 200,
                "configCount": 0,
                "type": 0 if ns == PUBLIC else 2,
            }
            for ns in ids
        ]
        return web.json_response({"code": 200, "message": None, "data": data})

    async def _v3_namespaces(self, request: web.Request) -> web.Response:
        with self._lock:
            ids = sorted(self._data)
        data = [{"namespace": ns, "namespaceShowName": ns, "quota": 200, "type": 0} for ns in ids]
        return web.json_response(result(data))

    async def _login(self, request: web.Request) -> web.Response:
        form = await request.post()
        user = str(form.get("username") or request.query.get("username", ""))
        password = str(form.get("password") or request.query.get("password", ""))
        if not self.users:
            # Auth off: Nacos still answers a login, with a token nobody checks.
            pass
        elif self.users.get(user) != password:
            return web.Response(status=403, text="unknown user!")
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = (user, self.clock() + self.token_ttl)
            self.logins[request.path] += 1
        body = {
            "accessToken": token,
            "tokenTtl": self.token_ttl,
            "globalAdmin": user in self.admins,
            "username": user,
        }
        return web.json_response(body)

    async def _control_call(self, request: web.Request) -> web.Response:
        call = await request.json()
        method = call["method"]
        if method.startswith("_"):
            raise web.HTTPForbidden()
        value = getattr(self, method)(**call.get("kwargs", {}))
        return web.json_response(value if isinstance(value, dict | list | int | None) else None)

    async def _control_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())


class _BadRequest(Exception):
    pass


def _page(request: web.Request, *, required: bool) -> tuple[int, int]:
    try:
        page_no = int(request.query["pageNo"]) if "pageNo" in request.query else None
        page_size = int(request.query["pageSize"]) if "pageSize" in request.query else None
    except ValueError as exc:
        raise _BadRequest(f"bad page parameter: {exc}") from None
    if page_no is None or page_size is None:
        if required:
            raise _BadRequest("Required int parameter 'pageNo' is not present")
        # PageForm defaults.
        page_no, page_size = page_no or 1, page_size or 100
    return page_no, page_size


def _filter(keys: list[tuple[str, str]], request: web.Request) -> list[tuple[str, str]]:
    """groupNameParam/serviceNameParam match as substrings (CatalogServiceV2Impl.patternServices)."""
    group = request.query.get("groupNameParam", "")
    service = request.query.get("serviceNameParam", "")
    return [(g, s) for g, s in keys if group in g and service in s]


def free_port_pair() -> int:
    """A free port P on 127.0.0.1 with P + 1000 free too (Nacos's gRPC port offset)."""
    for _ in itertools.repeat(None, 200):
        with socket.socket() as low, socket.socket() as high:
            low.bind(("127.0.0.1", 0))
            port = int(low.getsockname()[1])
            if port + 1000 > 65535:
                continue
            try:
                high.bind(("127.0.0.1", port + 1000))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port pair")


def running(**options: Any) -> NacosDouble:
    """A double for a with-block: it serves from a thread until the block ends."""
    return NacosDouble(**options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", default="2.x", choices=sorted(VERSIONS))
    parser.add_argument("--no-grpc", action="store_true")
    parser.add_argument("--admin-api-compat", action="store_true")
    args = parser.parse_args()
    double = NacosDouble(
        port=args.port,
        version=args.version,
        grpc=not args.no_grpc and args.version != "1.x",
        admin_api_compat=args.admin_api_compat,
    )
    double.serve_forever("nacos double")


if __name__ == "__main__":
    main()
