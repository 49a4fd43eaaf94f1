"""The gRPC side of the Nacos double: ``Request.request`` and ``BiRequestStream``.

Follows ``api/src/main/proto/nacos_grpc_service.proto`` and the server's handlers in
``core/remote`` and ``naming/remote/rpc/handler``: a connection is the client's TCP
connection (its peer address), opened by ``ServerCheckRequest`` (answering the
``connectionId``) and bound by the ``ConnectionSetupRequest`` that starts the bi stream.
``SubscribeServiceRequest`` answers the ``ServiceInfo`` and subscribes the connection
(``subscribe: false`` unsubscribes); every later change of the service is pushed as a
``NotifySubscriberRequest``, which the client acknowledges on the stream.
``InstanceRequest`` (``registerInstance``/``deregisterInstance``) registers ephemeral
instances owned by the connection, removed when it closes, as 2.x does.
``ServiceListRequest`` pages service names; ``HealthCheckRequest`` is answered. On 3.x,
``NamingFuzzyWatchRequest`` registers a ``namespace>>group>>service`` pattern
(``common/utils/FuzzyGroupKeyPattern``), and a service created or deleted that matches is
told as a ``NamingFuzzyWatchChangeNotifyRequest`` (``ADD_SERVICE``/``DELETE_SERVICE``). With
auth on, a request without a live ``accessToken`` header is an ``ErrorResponse`` 403.
Every message, both ways, is counted by type in ``double.grpc_messages``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from sdbridge.discovery.nacos import proto

if TYPE_CHECKING:
    from tests.doubles.nacos_double import NacosDouble

Subscription = tuple[str, str, str, str]  # namespace, group, service, clusters


class Connection:
    def __init__(self, connection_id: str) -> None:
        self.id = connection_id
        self.outbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.subscriptions: set[Subscription] = set()
        self.fuzzy_patterns: set[str] = set()  # namespace>>group>>service, with * wildcards
        self.instances: set[tuple[str, str, str, str, int, str]] = set()
        self.streaming = False


class GrpcNaming:
    """Serves the double's naming data over Nacos's gRPC protocol on 127.0.0.1:port."""

    def __init__(self, double: NacosDouble, port: int) -> None:
        self.double = double
        self.port = port
        self.server: Any = None
        self.connections: dict[str, Connection] = {}
        self._ids = itertools.count(1)
        self._push_ids = itertools.count(1)
        self.refuse = False  # answer every call UNAVAILABLE, as a closed port would
        double.on_change.append(self._on_change)
        if double.major >= 3:
            double.on_service.append(self._on_service)

    async def start(self) -> None:
        self.server = grpc.aio.server()
        unary = grpc.unary_unary_rpc_method_handler(
            self._request,
            request_deserializer=proto.identity,
            response_serializer=proto.identity,
        )
        bi = grpc.stream_stream_rpc_method_handler(
            self._bi_stream,
            request_deserializer=proto.identity,
            response_serializer=proto.identity,
        )
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler("Request", {"request": unary}),
                grpc.method_handlers_generic_handler("BiRequestStream", {"requestBiStream": bi}),
            )
        )
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
            self.server = None

    async def restart(self) -> None:
        """Drop every connection (a reset for the clients) and serve again."""
        await self.stop()
        self.connections.clear()
        await self.start()

    def _count(self, kind: str) -> None:
        with self.double._lock:
            self.double.grpc_messages[kind] += 1

    def _connection(self, context: Any) -> Connection:
        peer = context.peer()
        found = self.connections.get(peer)
        if found is None:
            found = self.connections[peer] = Connection(f"{next(self._ids)}_{peer}")
        return found

    def _denied(self, headers: dict[str, str], body: dict[str, Any]) -> bytes | None:
        if not self.double.users:
            return None
        token = headers.get("accessToken") or (body.get("headers") or {}).get("accessToken", "")
        user, why = self.double.check_token(token)
        if user is not None:
            return None
        return self._answer("ErrorResponse", body, resultCode=500, errorCode=403, message=why)

    def _answer(self, kind: str, request: dict[str, Any], **fields: Any) -> bytes:
        self._count(kind)
        body = {
            "resultCode": 200,
            "errorCode": 0,
            "message": "",
            "requestId": request.get("requestId", ""),
        }
        body.update(fields)
        return proto.encode(kind, body)

    # --- Request.request -----------------------------------------------------------------

    async def _request(self, data: bytes, context: Any) -> bytes:
        if self.refuse:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "refused by the double")
        kind, body, headers = proto.decode(data)
        self._count(kind)
        connection = self._connection(context)
        if kind == "ServerCheckRequest":
            return self._answer(
                "ServerCheckResponse",
                body,
                connectionId=connection.id,
                supportAbilityNegotiation=False,
            )
        if kind == "HealthCheckRequest":
            return self._answer("HealthCheckResponse", body)
        denied = self._denied(headers, body)
        if denied is not None:
            return denied
        ns = body.get("namespace") or "public"
        group = body.get("groupName") or "DEFAULT_GROUP"
        service = str(body.get("serviceName") or "")
        if "@@" in service:
            group, service = service.split("@@", 1)
        if kind == "SubscribeServiceRequest":
            clusters = str(body.get("clusters") or "")
            key = (ns, group, service, clusters)
            if body.get("subscribe", True):
                connection.subscriptions.add(key)
            else:
                connection.subscriptions.discard(key)
            return self._answer("SubscribeServiceResponse", body, serviceInfo=self._info(key))
        if kind == "NamingFuzzyWatchRequest" and self.double.major >= 3:
            # naming/remote/rpc/handler/NamingFuzzyWatchRequestHandler: WATCH / CANCEL_WATCH.
            pattern = str(body.get("groupKeyPattern") or "")
            if pattern.count(">>") != 2:
                return self._answer(
                    "ErrorResponse", body, resultCode=500, errorCode=400, message="bad pattern"
                )
            if body.get("watchType") == "CANCEL_WATCH":
                connection.fuzzy_patterns.discard(pattern)
            else:
                connection.fuzzy_patterns.add(pattern)
            return self._answer("NamingFuzzyWatchResponse", body)
        if kind == "ServiceQueryRequest":
            key = (ns, group, service, str(body.get("cluster") or ""))
            return self._answer("QueryServiceResponse", body, serviceInfo=self._info(key))
        if kind == "ServiceListRequest":
            page_no, page_size = int(body.get("pageNo") or 1), int(body.get("pageSize") or 10)
            names = [s for g, s in self.double._services(ns) if g == group]
            chosen = names[(page_no - 1) * page_size : page_no * page_size]
            return self._answer("ServiceListResponse", body, count=len(names), serviceNames=chosen)
        if kind in ("InstanceRequest", "PersistentInstanceRequest"):
            instance = body.get("instance") or {}
            ip, port = str(instance.get("ip")), int(instance.get("port") or 0)
            cluster = instance.get("clusterName") or "DEFAULT"
            if body.get("type") == "deRegisterInstance":
                self.double.deregister(
                    service, ip, port, group=group, namespace=ns, cluster=cluster
                )
                connection.instances.discard((ns, group, service, ip, port, cluster))
            else:
                self.double.register(
                    service,
                    ip,
                    port,
                    group=group,
                    namespace=ns,
                    cluster=cluster,
                    weight=float(instance.get("weight", 1.0)),
                    healthy=bool(instance.get("healthy", True)),
                    enabled=bool(instance.get("enabled", True)),
                    ephemeral=kind == "InstanceRequest",
                    metadata=dict(instance.get("metadata") or {}),
                    instance_id=instance.get("instanceId"),
                )
                if kind == "InstanceRequest":
                    connection.instances.add((ns, group, service, ip, port, cluster))
            return self._answer("InstanceResponse", body, type=body.get("type"))
        return self._answer(
            "ErrorResponse", body, resultCode=500, errorCode=501, message=f"unknown request {kind}"
        )

    def _info(self, key: Subscription) -> dict[str, Any]:
        ns, group, service, clusters = key
        wanted = [c for c in clusters.split(",") if c]
        info = self.double.service_info(ns, group, service, wanted, False)
        # Over gRPC, ServiceInfo.name is the bare name beside groupName (ServiceStorage);
        # the HTTP v1 answer groups it. The official clients key their cache on both.
        info["name"] = service
        return info

    # --- BiRequestStream.requestBiStream -------------------------------------------------

    async def _bi_stream(
        self, requests: AsyncIterator[bytes], context: Any
    ) -> AsyncIterator[bytes]:
        if self.refuse:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "refused by the double")
        connection = self._connection(context)

        async def read() -> None:
            async for data in requests:
                kind, _, _ = proto.decode(data)
                self._count(kind)  # ConnectionSetupRequest, then the client's answers
                if kind == "ConnectionSetupRequest":
                    connection.streaming = True

        reader = asyncio.create_task(read())
        try:
            while not reader.done():
                getter = asyncio.create_task(connection.outbox.get())
                done, _ = await asyncio.wait([getter, reader], return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                else:
                    getter.cancel()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self._closed(connection, context.peer())

    def _closed(self, connection: Connection, peer: str) -> None:
        self.connections.pop(peer, None)
        for ns, group, service, ip, port, cluster in connection.instances:
            self.double.deregister(service, ip, port, group=group, namespace=ns, cluster=cluster)

    def _on_change(self, ns: str, group: str, service: str) -> None:
        self.double.call_soon(lambda: self._push(ns, group, service))

    def _push(self, ns: str, group: str, service: str) -> None:
        for connection in list(self.connections.values()):
            for key in list(connection.subscriptions):
                if key[:3] == (ns, group, service) and connection.streaming:
                    self._count("NotifySubscriberRequest")
                    body = {
                        "requestId": f"push-{next(self._push_ids)}",
                        "module": "naming",
                        "headers": {},
                        "namespace": ns,
                        "serviceName": service,
                        "groupName": group,
                        "serviceInfo": self._info(key),
                    }
                    connection.outbox.put_nowait(proto.encode("NotifySubscriberRequest", body))

    def _on_service(self, ns: str, group: str, service: str, how: str) -> None:
        self.double.call_soon(lambda: self._fuzzy_notify(ns, group, service, how))

    def _fuzzy_notify(self, ns: str, group: str, service: str, how: str) -> None:
        for connection in list(self.connections.values()):
            if connection.streaming and any(
                _pattern_matches(p, ns, group, service) for p in connection.fuzzy_patterns
            ):
                self._count("NamingFuzzyWatchChangeNotifyRequest")
                body = {
                    "requestId": f"fuzzy-{next(self._push_ids)}",
                    "module": "naming",
                    "headers": {},
                    "serviceKey": f"{ns}>>{group}>>{service}",
                    "changedType": how,
                    "syncType": "FUZZY_WATCH_RESOURCE_CHANGED",
                }
                connection.outbox.put_nowait(
                    proto.encode("NamingFuzzyWatchChangeNotifyRequest", body)
                )

    def detect_clients(self) -> None:
        """Send every connection a ClientDetectionRequest, as the server does to idle ones."""
        for connection in self.connections.values():
            self._count("ClientDetectionRequest")
            body = {
                "requestId": f"detect-{next(self._push_ids)}",
                "module": "internal",
                "headers": {},
            }
            connection.outbox.put_nowait(proto.encode("ClientDetectionRequest", body))


def _pattern_matches(pattern: str, ns: str, group: str, service: str) -> bool:
    """FuzzyGroupKeyPattern.matchPattern: namespace exact, group and service with ``*``."""
    want_ns, want_group, want_service = pattern.split(">>")
    return want_ns == ns and _item(want_group, group) and _item(want_service, service)


def _item(pattern: str, value: str) -> bool:
    if "*" not in pattern:
        return pattern == value
    if pattern == "*":
        return True
    core = pattern.replace("*", "")
    if pattern.startswith("*") and pattern.endswith("*"):
        return core in value
    return value.endswith(core) if pattern.startswith("*") else value.startswith(core)
