"""One full listing of the configured scope, with as few requests as the server allows.

Where the server offers a bulk call, a listing is a few pages of services *with* their
instances: 3.x's admin ``/v3/admin/ns/service/list?withInstances=true`` or 1.x/2.x's
``/v1/ns/catalog/services?withInstances=true``. Where it refuses (3.x's old admin API
switched off, a user without admin rights, a proxy that hides it), a listing reads the
service names and then each service's instances through the client API. Any failed page
or service fails the whole listing: nothing partial is ever returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ...errors import BackendError
from ...model import LabelSet
from .client import NacosClient, Server, result_data
from .config import ALL, NacosSDConfig
from .labels import (
    DEFAULT_GROUP,
    PUBLIC,
    Keep,
    Reader,
    ServiceKey,
    Skips,
    parse_hosts,
    parse_service_detail,
    split_grouped,
)

REFUSED = (403, 404, 405, 410, 501)  # what a server says of an API it does not offer
MAX_PAGES = 100_000

Listing = dict[ServiceKey, list[LabelSet]]
ServiceNames = Callable[[str, str], Awaitable[list[str] | None]]  # (ns, group) -> names


@dataclass
class Lister:
    """Lists the scope of one config; remembers per server what it offers."""

    client: NacosClient
    config: NacosSDConfig
    grpc_service_names: ServiceNames | None = None  # 3.x without an HTTP service list
    bulk: dict[str, bool] = field(default_factory=dict)  # server address -> bulk works
    known_namespaces: dict[str, set[str] | None] = field(default_factory=dict)
    mode: str = ""  # "bulk" or "per-service", for logs and the bench

    def keep(self) -> Keep:
        clusters = set(self.config.clusters)
        healthy_only = self.config.healthy_only

        def keep(cluster: str, healthy: bool) -> bool:
            return (not clusters or cluster in clusters) and (healthy or not healthy_only)

        return keep

    def wanted(self, key: ServiceKey, *, default_groups: bool) -> bool:
        groups = self.config.group or ([DEFAULT_GROUP] if default_groups else [])
        if groups and key.group not in groups:
            return False
        return not self.config.services or key.service in self.config.services

    async def list_all(self, skips: Skips) -> Listing:
        server = await self.client.connect()
        listing: Listing = {}
        for namespace in await self.namespaces(server):
            listing.update(await self.list_namespace(server, namespace, skips))
        return listing

    # --- namespaces --------------------------------------------------------------------

    async def server_namespaces(self, server: Server) -> set[str] | None:
        """The namespace ids the server lists (``""`` as ``public``), None if it won't."""
        if server.address in self.known_namespaces:
            return self.known_namespaces[server.address]
        path = "/v3/admin/core/namespace/list" if server.major >= 3 else "/v1/console/namespaces"
        status, body = await self.client.get_json(path, [], accept=REFUSED)
        found: set[str] | None = None
        if status == 200:
            where = server.base + path
            shape = Reader(where)
            data = result_data(where, body)
            found = {
                shape.text(item.get("namespace"), "namespace") or PUBLIC
                for item in shape.objects(data, "namespace")
            }
        self.known_namespaces[server.address] = found
        return found

    async def namespaces(self, server: Server) -> list[str]:
        listed = await self.server_namespaces(server)
        if ALL in self.config.namespace:
            if listed is None:
                raise BackendError(
                    f"{server.base}: the server does not list namespaces to this user;"
                    " name them in `namespace`"
                )
            return sorted(listed)
        wanted = [ns or PUBLIC for ns in self.config.namespace]
        if listed is not None:
            missing = [ns for ns in wanted if ns not in listed]
            if missing:
                self.known_namespaces.pop(server.address, None)  # ask again next time
                raise BackendError(
                    f"{server.base}: namespace {', '.join(map(repr, missing))} does not exist"
                    f" (the server has {', '.join(sorted(listed))})"
                )
        return wanted

    # --- one namespace -----------------------------------------------------------------

    async def list_namespace(self, server: Server, namespace: str, skips: Skips) -> Listing:
        if self.bulk.get(server.address, True):
            found = await self.bulk_listing(server, namespace, skips)
            if found is not None:
                self.bulk[server.address] = True
                self.mode = "bulk"
                return found
            self.bulk[server.address] = False
        self.mode = "per-service"
        return await self.per_service_listing(server, namespace, skips)

    async def bulk_listing(self, server: Server, namespace: str, skips: Skips) -> Listing | None:
        """Pages of services with their instances; None if the server refuses the call."""
        keep = self.keep()
        params = [("namespaceId", namespace), ("withInstances", "true")]
        if len(self.config.group) == 1:  # the server matches it as a substring: check below
            params.append(("groupNameParam", self.config.group[0]))
        if len(self.config.services) == 1:
            params.append(("serviceNameParam", self.config.services[0]))
        size = self.config.page_size
        listing: Listing = {}
        v3 = server.major >= 3
        path = "/v3/admin/ns/service/list" if v3 else "/v1/ns/catalog/services"
        # 1.x passes pageNo straight on as a 0-based page; 2.x and 3.x count from 1.
        first = 0 if server.major == 1 else 1
        for page in range(first, first + MAX_PAGES):
            query = [*params, ("pageNo", str(page)), ("pageSize", str(size))]
            status, body = await self.client.get_json(path, query, accept=REFUSED)
            if status != 200:
                if page != first:  # it answered page one: a refusal now is a failure
                    raise BackendError(f"{server.base}{path}: page {page} refused (HTTP {status})")
                return None
            where = f"{server.base}{path} page {page}"
            shape = Reader(where)
            if v3:
                data = shape.obj(result_data(where, body), "data")
                items = shape.objects(data.get("pageItems"), "service")
                total = data.get("totalCount")
            else:
                items, total = shape.objects(body, "service"), None
            for n, detail in enumerate(items):
                key, labels = parse_service_detail(
                    shape, detail, namespace, at=f"{where}[{n}]", keep=keep, skips=skips
                )
                if self.wanted(key, default_groups=False):
                    listing[key] = labels
            done = len(items) < size or (isinstance(total, int) and page * size >= total)
            if done or not items:
                return listing
        raise BackendError(f"{server.base}{path}: more than {MAX_PAGES} pages")

    async def service_names(self, server: Server, namespace: str, group: str) -> list[str]:
        """The service names of one group: ``/v1/ns/service/list``, paged, or over gRPC."""
        names: list[str] = []
        size = self.config.page_size
        path = "/v1/ns/service/list"
        for page in range(1, MAX_PAGES):
            query = [
                ("namespaceId", namespace),
                ("groupName", group),
                ("pageNo", str(page)),
                ("pageSize", str(size)),
            ]
            status, body = await self.client.get_json(path, query, accept=REFUSED)
            if status != 200:
                if page == 1 and self.grpc_service_names is not None:
                    over_grpc = await self.grpc_service_names(namespace, group)
                    if over_grpc is not None:
                        return over_grpc
                raise BackendError(
                    f"{server.base}{path}: refused (HTTP {status}); with no bulk or service"
                    " list API open to this user, name the services in `services` (or let"
                    " the user read the admin API, or subscribe over gRPC)"
                )
            shape = Reader(f"{server.base}{path} page {page}")
            data = shape.obj(body, "answer")
            doms = data.get("doms")
            if not isinstance(doms, list) or not all(isinstance(d, str) for d in doms):
                raise shape.fail(f"doms is not a list of names: {doms!r:.100}")
            names.extend(split_grouped(d, group)[1] for d in doms)
            count = data.get("count")
            if len(doms) < size or (isinstance(count, int) and page * size >= count):
                return names
        raise BackendError(f"{server.base}{path}: more than {MAX_PAGES} pages")

    async def service_keys(self, server: Server, namespace: str) -> list[ServiceKey]:
        """The services of a per-service listing: named, or listed group by group."""
        keys: list[ServiceKey] = []
        for group in self.config.group or [DEFAULT_GROUP]:
            names = self.config.services or await self.service_names(server, namespace, group)
            keys.extend(ServiceKey(namespace, group, name) for name in sorted(set(names)))
        return keys

    async def all_service_keys(self) -> list[ServiceKey]:
        """Every service of the scope, without instances (what a push needs to follow)."""
        server = await self.client.connect()
        keys: list[ServiceKey] = []
        for namespace in await self.namespaces(server):
            keys.extend(await self.service_keys(server, namespace))
        return keys

    async def per_service_listing(self, server: Server, namespace: str, skips: Skips) -> Listing:
        keys = await self.service_keys(server, namespace)
        limit = asyncio.Semaphore(self.config.max_concurrency)

        async def one(key: ServiceKey) -> tuple[ServiceKey, list[LabelSet]]:
            async with limit:
                return key, await self.instances(server, key, skips)

        # TaskGroup: the first failure cancels the rest, and the listing fails whole.
        try:
            async with asyncio.TaskGroup() as tasks:
                pending = [tasks.create_task(one(key)) for key in keys]
        except ExceptionGroup as failed:
            raise first_error(failed) from None
        return dict(task.result() for task in pending)

    async def instances(self, server: Server, key: ServiceKey, skips: Skips) -> list[LabelSet]:
        """One service's instances through the client API."""
        keep = self.keep()
        grouped = f"{key.group}@@{key.service}"
        base = [("namespaceId", key.namespace), ("groupName", key.group)]
        if server.major >= 3 and self.config.clusters:
            # The v3 client API lists only clusterName (default DEFAULT): name them all.
            path = "/v3/client/ns/instance/list"
            query = [
                *base,
                ("serviceName", key.service),
                ("clusterName", ",".join(self.config.clusters)),
            ]
            status, body = await self.client.get_json(path, query)
            where = f"{server.base}{path} {key.source}"
            return parse_hosts(
                Reader(where), result_data(where, body), key, at=where, keep=keep, skips=skips
            )
        path = "/v1/ns/instance/list"
        query = [*base, ("serviceName", grouped), ("healthyOnly", "false")]
        if self.config.clusters:
            query.append(("clusters", ",".join(self.config.clusters)))
        status, body = await self.client.get_json(path, query, accept=(410,))
        where = f"{server.base}{path} {key.source}"
        if status == 410:
            raise BackendError(
                f"{where}: the v1 client API is switched off and Nacos 3's v3 client API"
                " lists only the clusters it is given: set `clusters`"
            )
        shape = Reader(where)
        return parse_hosts(
            shape, shape.obj(body, "answer").get("hosts"), key, at=where, keep=keep, skips=skips
        )


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first failure of a task group, unwrapped (it names what failed)."""
    first = group.exceptions[0]
    return first_error(first) if isinstance(first, BaseExceptionGroup) else first
