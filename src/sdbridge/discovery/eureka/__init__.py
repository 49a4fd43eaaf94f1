"""``eureka_sd_configs``: Netflix Eureka / Spring Cloud registries, with little load.

Options and labels are those of Prometheus's eureka_sd (prometheus/prometheus
``discovery/eureka/eureka.go`` and ``client.go``), value for value: one target per
instance of ``GET {server}/apps``, decoded from XML as Go's ``encoding/xml`` decodes it
(metadata values are the elements' raw inner XML, ``__address__`` is ``hostName:port``
with port 80 when the instance has none, ``instance`` is the instanceId).

Prometheus fetches the whole registry on every refresh. This mechanism does what
Eureka's own client does (``DiscoveryClient.getAndUpdateDelta``): one full fetch, then
``GET {server}/apps/delta`` each refresh (the instances changed in the last three
minutes, each with its actionType), applied to a local copy and checked against the
server's ``apps__hashcode``; a mismatch, a refused delta or a gap longer than the delta
window (:data:`MAX_DELTA_GAP`) means a full fetch. Either way a refresh is one request
in the common case, and a refresh applies completely or not at all: the local copy
changes only when the whole answer (and, if needed, the full fetch) has been decoded.

Bad input: an answer that is not well-formed XML (or JSON) fails the refresh, keeping
the last good targets; an instance whose port, enabled flag or countryId is not what Go
would decode, or whose address is not a valid ``host:port`` (port 0), is skipped and
counted, once, where Prometheus would fail the whole refresh or keep a bad target.

The package: :mod:`.config` (options), :mod:`.decode` (XML and JSON as Go decodes them),
:mod:`.labels` (label names, one instance's target), :mod:`.registry` (the local copy and
the delta merge), and here the discoverer that fetches and decides full or delta.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

from ... import __version__
from ...errors import redact_url
from ...model import TargetGroup
from .. import register
from .._http import HTTPClient, HTTPStatusError, status_error
from ..base import DiscoveryContext, RefreshDiscoverer, Send
from .config import EurekaSDConfig
from .decode import Applications, RawInstance, parse_answer, parse_json, parse_xml
from .labels import instance_labels
from .registry import Apps, Entry, app_group, apply_delta, full_copy, hash_code

__all__ = [
    "DELTA_PATH",
    "INLINE_DECODE_MAX",
    "MAX_DELTA_GAP",
    "Applications",
    "Apps",
    "Entry",
    "EurekaDiscoverer",
    "EurekaSDConfig",
    "RawInstance",
    "app_group",
    "apply_delta",
    "full_copy",
    "hash_code",
    "instance_labels",
    "parse_answer",
    "parse_json",
    "parse_xml",
]

APPS_PATH = "/apps"
DELTA_PATH = "/apps/delta"
# Eureka keeps changes 3 minutes in its delta queue (retentionTimeInMSInDeltaQueue) and
# serves answers from a cache refreshed every 30 s: a delta can be trusted only if the
# last successful fetch is younger than that, with a margin.
MAX_DELTA_GAP = 120.0
INLINE_DECODE_MAX = 256 * 1024  # larger answers are decoded in a worker thread
DELTA_REFUSED_PAUSE = 600.0  # after a 403 (eureka.disableDelta), full fetches this long
_HINTS = {
    401: " (check basic_auth, authorization or oauth2)",
    # ApplicationsResource answers 403 while the server may not serve reads: for up to
    # eureka.waitTimeInMsWhenSyncEmpty (5 minutes) after it starts without peers' data.
    403: " (a Eureka server refuses reads for a while after it starts; or forbidden)",
}


@register("eureka", EurekaSDConfig)
class EurekaDiscoverer(RefreshDiscoverer[EurekaSDConfig]):
    """Polls a Eureka server: a full fetch, then deltas reconciled with apps__hashcode."""

    clock: Callable[[], float] = staticmethod(time.monotonic)

    def __init__(self, config: EurekaSDConfig, context: DiscoveryContext) -> None:
        super().__init__(config, context)
        self.where = f"eureka {redact_url(config.server)}"
        self.http = HTTPClient(
            config,
            name=f"eureka at {redact_url(config.server)}",
            timeout=config.request_timeout,
            headers={"Accept": "application/xml", "User-Agent": f"sdbridge/{__version__}"},
            count_request=context.count_request,
        )
        self.apps: Apps | None = None  # the local copy; None until the first full fetch
        self.groups: dict[str, TargetGroup] = {}
        self.fetched_at = 0.0  # when the request behind the local copy was sent
        self.delta_refused_until = 0.0
        self.reported: dict[tuple[str, str], str] = {}  # skipped instances already reported
        self.fetches: Counter[str] = Counter()  # full, delta, reconcile (for tests, benches)
        self.decode_cpu = 0.0  # CPU seconds spent decoding answers (for benches)

    async def run(self, send: Send) -> None:
        async with self.http:
            await super().run(send)

    async def _get(self, path: str) -> Applications:
        url = self.config.server + path
        where = f"{self.where}{path}"
        answer = await self.http.fetch("GET", url, where=where, check=False)
        if not 200 <= answer.status < 300:
            raise status_error(where, answer.status, answer.body, _HINTS.get(answer.status, ""))
        content_type = answer.headers.get("Content-Type", "")
        if len(answer.body) <= INLINE_DECODE_MAX:
            return self._decode(answer.body, content_type, where)
        # A whole registry takes a good part of a second to decode: not on the event loop.
        return await asyncio.to_thread(self._decode, answer.body, content_type, where)

    def _decode(self, body: bytes, content_type: str, where: str) -> Applications:
        started = time.thread_time()
        try:
            return parse_answer(body, content_type, where)
        finally:
            self.decode_cpu += time.thread_time() - started

    async def _full(self) -> Apps:
        self.fetches["full"] += 1
        return full_copy(await self._get(APPS_PATH))

    async def refresh(self) -> list[TargetGroup]:
        """The full set of targets, from a delta when it can be trusted, else a full fetch."""
        started = self.clock()
        use_delta = (
            self.config.delta
            and self.apps is not None
            and started - self.fetched_at < MAX_DELTA_GAP
            and started >= self.delta_refused_until
        )
        touched: set[str] | None = None  # None: everything may have changed
        apps: Apps | None = None
        if use_delta and self.apps is not None:
            apps, touched = await self._delta(self.apps, started)
        if apps is None:
            apps = await self._full()
            touched = None
        # Nothing above changed the local copy or the targets.
        self._commit(apps, touched, started)
        return list(self.groups.values())

    async def _delta(self, current: Apps, started: float) -> tuple[Apps | None, set[str]]:
        try:
            delta = await self._get(DELTA_PATH)
        except HTTPStatusError as exc:
            # Eureka's client takes any non-200 delta as "fetch the full registry".
            if exc.status == 403:
                self.log.info(
                    "%s%s refused (403: eureka.disableDelta or the server is not ready);"
                    " fetching the full registry for %gs",
                    self.where,
                    DELTA_PATH,
                    DELTA_REFUSED_PAUSE,
                )
                self.delta_refused_until = started + DELTA_REFUSED_PAUSE
            return None, set()
        self.fetches["delta"] += 1
        apps, touched = apply_delta(current, delta)
        if hash_code(apps) != delta.hash_code:
            self.fetches["reconcile"] += 1
            self.log.debug(
                "delta hash code %r, server's %r: fetching the full registry",
                hash_code(apps),
                delta.hash_code,
            )
            return None, set()
        return apps, touched

    def _commit(self, apps: Apps, touched: set[str] | None, started: float) -> None:
        # Built aside and swapped in at the end: a failure leaves the last good set whole.
        groups = {} if touched is None else dict(self.groups)
        for name in apps.keys() if touched is None else touched:
            instances = apps.get(name, {})
            self._report_skipped(name, instances)
            group = app_group(name, instances)
            if group.targets:
                groups[name] = group
            else:
                groups.pop(name, None)
        if touched is None:
            # A full fetch: forget reports of instances that are gone.
            self.reported = {k: v for k, v in self.reported.items() if k[1] in apps.get(k[0], {})}
        self.groups = groups
        self.apps = apps
        self.fetched_at = started

    def _report_skipped(self, name: str, instances: dict[str, Entry]) -> None:
        for key, item in instances.items():
            if item.problem is None:
                self.reported.pop((name, key), None)
            elif self.reported.get((name, key)) != item.problem:
                self.reported[(name, key)] = item.problem
                self.context.record_invalid(
                    f"{self.where}: application {name!r} instance {key!r}", item.problem
                )
