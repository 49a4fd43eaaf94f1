"""The Nacos 2.x/3.x gRPC subscription: a changed service reaches the file at once.

One channel to the server's gRPC port (HTTP port + 1000 unless ``grpc_port``), as
Nacos's own clients open it: ``ServerCheckRequest`` on ``Request.request``, then
``BiRequestStream.requestBiStream`` opened with a ``ConnectionSetupRequest``; every
listed service gets a ``SubscribeServiceRequest``, whose answer and every later
``NotifySubscriberRequest`` carry the service's whole ``ServiceInfo``. Server requests
on the stream (``NotifySubscriberRequest``, ``ClientDetectionRequest``,
``SetupAckRequest``, ``ConnectResetRequest``) are answered on it. On 3.x a
``NamingFuzzyWatchRequest`` per namespace (and group) makes the server tell of services
created or deleted (``NamingFuzzyWatchChangeNotifyRequest``), which are then looked for
at once instead of at the next listing.

A refused or reset channel is logged once; the listing goes back to polling every
``refresh_interval`` until the channel is back. Needs grpcio (``sdbridge[nacos]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from ... import __version__
from ...errors import BackendError, describe
from ..base import Backoff
from . import proto
from .labels import Reader, ServiceKey, Skips, parse_hosts, split_grouped
from .listing import first_error

if TYPE_CHECKING:
    from .discoverer import NacosDiscoverer

SUBSCRIBE_CONCURRENCY = 32
_STREAM_ANSWERS = {
    "NotifySubscriberRequest": "NotifySubscriberResponse",
    "ClientDetectionRequest": "ClientDetectionResponse",
    "SetupAckRequest": "SetupAckResponse",
    "ConnectResetRequest": "ConnectResetResponse",
    "NamingFuzzyWatchChangeNotifyRequest": "NamingFuzzyWatchChangeNotifyResponse",
    "NamingFuzzyWatchSyncRequest": "NamingFuzzyWatchSyncResponse",
}


class ChannelReset(Exception):
    """The server asked for a new connection (ConnectResetRequest)."""


class GrpcSubscription:
    """Keeps one gRPC channel subscribed to the services of the last listing."""

    def __init__(self, discoverer: NacosDiscoverer) -> None:
        self.discoverer = discoverer
        self.config = discoverer.config
        self.log = discoverer.log
        self.wanted: list[ServiceKey] = []
        self._followed = False  # follow() called (by a listing)
        self.subscribed: set[ServiceKey] = set()
        self.connected = False
        self.messages = 0  # gRPC messages sent and received, for the bench
        self._changed = asyncio.Event()
        self._failing = False
        self.ready = asyncio.Event()  # set while a session can ask (ServerCheck passed)
        self._ask: Any = None  # the unary call of the live session

    def live(self) -> bool:
        # Not before a listing has said what to follow: an empty wish is not a live one.
        return self.connected and self._followed and self.subscribed.issuperset(self.wanted)

    def follow(self, keys: Sequence[ServiceKey]) -> None:
        self.wanted = list(keys)
        self._followed = True
        self._changed.set()

    async def run(self) -> None:
        backoff = Backoff(1.0, max(self.config.refresh_interval, 1.0))
        while True:
            target = ""
            try:
                server = await self.discoverer.client.connect()
                target = server.grpc_target(self.config.grpc_port)
                await self._session(target)
            except asyncio.CancelledError:
                raise
            except (grpc.aio.AioRpcError, BackendError, ChannelReset, OSError, ValueError) as exc:
                self._lost(target, exc)
            delay = backoff.next_delay() if self._failing else 0.0
            if not self._failing:
                backoff.reset()
            await asyncio.sleep(delay)

    async def service_names(self, namespace: str, group: str) -> list[str] | None:
        """The service names of a group over the channel (``ServiceListRequest``), paged;
        None while there is no channel."""
        if not self._failing and not self.ready.is_set():
            # Still connecting (the first listing races the channel): give it a moment.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.request_timeout):
                    await self.ready.wait()
        ask = self._ask
        if ask is None:
            return None
        names: list[str] = []
        size = self.config.page_size
        for page in range(1, 100_000):
            body = {
                "namespace": namespace,
                "groupName": group,
                "serviceName": "",
                "pageNo": page,
                "pageSize": size,
                "selector": "",
                "module": "naming",
            }
            data = await ask("ServiceListRequest", body)
            found = data.get("serviceNames")
            if not isinstance(found, list) or not all(isinstance(n, str) for n in found):
                raise BackendError(
                    f"Nacos gRPC ServiceListResponse: bad serviceNames {found!r:.100}"
                )
            names.extend(found)
            count = data.get("count")
            if len(found) < size or (isinstance(count, int) and page * size >= count):
                return names
        raise BackendError("Nacos gRPC ServiceListRequest: too many pages")

    def _lost(self, target: str, exc: BaseException) -> None:
        self._ask = None
        self.ready.clear()
        was_live = self.connected
        self.connected = False
        self.subscribed.clear()
        if not self._failing:  # said once, until the channel is back
            self._failing = True
            what = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else describe(exc)
            self.log.warning(
                "Nacos gRPC channel %s %s (%s): polling every %ss until it is back",
                target,
                "reset" if was_live else "refused",
                what,
                self.config.refresh_interval,
            )
        self.discoverer.request_refresh()  # the pushed state may be stale: list again

    async def _headers(self) -> dict[str, str]:
        token = await self.discoverer.client.token()
        return {"accessToken": token} if token else {}

    async def _session(self, target: str) -> None:
        options = [("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000)]
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            request = channel.unary_unary(
                proto.REQUEST_METHOD,
                request_serializer=proto.identity,
                response_deserializer=proto.identity,
            )
            timeout = self.config.request_timeout

            async def ask(kind: str, body: dict[str, Any]) -> dict[str, Any]:
                headers = await self._headers()
                body = {"headers": headers, "requestId": proto.next_request_id(), **body}
                self.messages += 2
                answer = await request(proto.encode(kind, body, headers), timeout=timeout)
                answer_kind, data, _ = proto.decode(answer)
                if answer_kind == "ErrorResponse" or data.get("resultCode", 200) != 200:
                    raise BackendError(
                        f"Nacos gRPC {target} {kind}: error {data.get('errorCode')}:"
                        f" {data.get('message')}"
                    )
                return data

            await ask("ServerCheckRequest", {"module": "internal"})
            self._ask = ask
            self.ready.set()
            outbox: asyncio.Queue[bytes] = asyncio.Queue()
            setup = {
                "clientVersion": f"sdbridge:{__version__}",
                "tenant": "",
                "labels": {"source": "sdk", "module": "naming"},
                "abilityTable": {},
                "module": "internal",
                "headers": await self._headers(),
                "requestId": proto.next_request_id(),
            }
            outbox.put_nowait(proto.encode("ConnectionSetupRequest", setup))

            async def outgoing() -> AsyncIterator[bytes]:
                while True:
                    message = await outbox.get()
                    self.messages += 1
                    yield message

            stream = channel.stream_stream(
                proto.BI_STREAM_METHOD,
                request_serializer=proto.identity,
                response_deserializer=proto.identity,
            )
            call = stream(outgoing())
            try:
                await self._stream(target, call, outbox, ask)
            except ExceptionGroup as failed:
                raise first_error(failed) from None

    async def _stream(self, target: str, call: Any, outbox: asyncio.Queue[bytes], ask: Any) -> None:
        async with asyncio.TaskGroup() as tasks:
            reader = tasks.create_task(self._read(call, outbox))
            self.connected = True
            if self._failing:
                self._failing = False
                self.log.info("Nacos gRPC channel %s is back: pushes resume", target)
            self.subscribed.clear()
            subscriber = tasks.create_task(self._subscribe(ask))
            # The subscriber runs until cancelled; the reader ends when the stream does.
            await asyncio.wait([reader, subscriber], return_when=asyncio.FIRST_COMPLETED)
            if reader.done() and not reader.cancelled() and reader.exception() is None:
                subscriber.cancel()
                raise ChannelReset("the server closed the stream")

    async def _read(self, call: Any, outbox: asyncio.Queue[bytes]) -> None:
        async for message in call:
            self.messages += 1
            kind, body, _ = proto.decode(message)
            answer = _STREAM_ANSWERS.get(kind)
            if answer is not None:
                reply = {"requestId": body.get("requestId", ""), "resultCode": 200}
                outbox.put_nowait(proto.encode(answer, reply))
            if kind == "NotifySubscriberRequest":
                self._apply(body, body.get("namespace"))
            elif kind == "NamingFuzzyWatchChangeNotifyRequest":
                self.discoverer.services_moved()  # a page of names or a listing finds it
            elif kind == "ConnectResetRequest":
                raise ChannelReset("the server asked for a new connection")

    async def _fuzzy_watch(self, ask: Any) -> None:
        """On 3.x, watch for services created or deleted in the scope's namespaces
        (``NamingFuzzyWatchRequest``, pattern ``namespace>>group>>service``)."""
        server = self.discoverer.client.server
        if server is None or server.major < 3:
            return
        namespaces = {k.namespace for k in self.wanted} | {
            ns or "public" for ns in self.config.namespace if ns != "*"
        }
        groups = self.config.group or ["*"]
        for namespace in sorted(namespaces):
            for group in groups:
                body = {
                    "namespace": namespace,
                    "groupKeyPattern": f"{namespace}>>{group}>>*",
                    "receivedGroupKeys": [],
                    "watchType": "WATCH",
                    "isInitializing": True,
                    "module": "naming",
                }
                try:
                    await ask("NamingFuzzyWatchRequest", body)
                except BackendError as exc:
                    # Off, or over its pattern limits: new services wait for a listing.
                    self.log.info("no Nacos fuzzy watch (%s): new services found by listing", exc)
                    return

    async def _subscribe(self, ask: Any) -> None:
        await self._fuzzy_watch(ask)
        limit = asyncio.Semaphore(SUBSCRIBE_CONCURRENCY)
        clusters = ",".join(self.config.clusters)

        async def one(key: ServiceKey, subscribe: bool) -> None:
            async with limit:
                body = {
                    "namespace": key.namespace,
                    "serviceName": key.service,
                    "groupName": key.group,
                    "clusters": clusters,
                    "subscribe": subscribe,
                    "module": "naming",
                }
                data = await ask("SubscribeServiceRequest", body)
            if subscribe:
                self.subscribed.add(key)
                self._apply(data, key.namespace)
            else:
                self.subscribed.discard(key)

        while True:
            self._changed.clear()
            wanted = set(self.wanted)
            todo = [one(k, True) for k in sorted(wanted - self.subscribed, key=_order)]
            todo += [one(k, False) for k in sorted(self.subscribed - wanted, key=_order)]
            if todo:
                await asyncio.gather(*todo)
                if self.live():
                    self.log.debug("subscribed to %d Nacos services over gRPC", len(wanted))
            await self._changed.wait()

    def _apply(self, body: dict[str, Any], namespace: Any) -> None:
        info = body.get("serviceInfo")
        if not isinstance(info, dict):
            return
        shape = Reader(f"Nacos gRPC ServiceInfo {info.get('name')!r}")
        group, service = split_grouped(
            str(info.get("name") or ""), str(info.get("groupName") or "")
        )
        key = ServiceKey(str(namespace or "public"), group or body.get("groupName", ""), service)
        skips = Skips([])
        try:
            targets = parse_hosts(
                shape,
                info.get("hosts"),
                key,
                at=shape.where,
                keep=self.discoverer.lister.keep(),
                skips=skips,
            )
        except BackendError as exc:
            self.log.warning("ignoring a malformed push: %s", describe(exc))
            return
        for what in skips.items:
            self.discoverer.context.record_invalid(what, "port 0 or malformed address")
        if key in self.subscribed or key in set(self.wanted):
            self.discoverer.apply_push(key, targets)


def _order(key: ServiceKey) -> str:
    return key.source


logging.getLogger("grpc").setLevel(logging.WARNING)
