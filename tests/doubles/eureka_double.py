"""A Eureka REST API double, built from Netflix Eureka's server, for tests and benchmarks.

Endpoints (Netflix/eureka ``eureka-core`` ``resources/ApplicationsResource``,
``ApplicationResource``, ``InstanceResource``), under a prefix (``/eureka``, as Spring
Cloud serves them):

- ``GET /apps``: the whole registry; ``GET /apps/delta``: the instances changed in the
  last ``retention`` seconds (``retentionTimeInMSInDeltaQueue``, 3 minutes), each with its
  ``actionType`` (ADDED, MODIFIED, DELETED), plus the whole registry's ``apps__hashcode``;
  ``GET /apps/<app>`` and ``GET /apps/<app>/<id>``;
- ``POST /apps/<app>`` registers (an ``<instance>`` XML or ``{"instance": ...}`` JSON body,
  204), ``PUT /apps/<app>/<id>`` is a heartbeat (404 for an unknown lease),
  ``DELETE /apps/<app>/<id>`` cancels, ``PUT|DELETE /apps/<app>/<id>/status?value=`` sets or
  removes a status override, ``PUT /apps/<app>/<id>/metadata?k=v`` updates metadata.

Answers are XML unless the ``Accept`` header names JSON (as ``ApplicationsResource``
decides), gzip-encoded when the client accepts it (eureka-server's Jersey GZIP filter).
JSON has Eureka's Jackson shape: ``"port": {"$": 8080, "@enabled": "true"}``,
``"@class"`` on ``dataCenterInfo``. ``apps__hashcode`` is
``AbstractInstanceRegistry.getReconcileHashCode``: each status (sorted, as a TreeMap)
followed by ``_<count>_``, e.g. ``DOWN_1_UP_3_``. Empty applications are left out, as
``getApplicationsFromMultipleRegions`` does. A delta lists each changed instance once, in
its latest state (``Application.addInstance`` keeps the last one per id).

Not modelled: the server's 30 s read-only response cache (answers here are always
current), peer replication, regions, self-preservation. Leases expire only when a test
calls :meth:`EurekaDouble.evict` (its clock is injectable).

Faults can be injected per path (a regex searched in the path without the prefix): an HTTP status, a delay, malformed bodies (not XML/JSON),
truncated bodies, a connection reset. The double counts requests and body bytes sent per
endpoint (``/apps``, ``/apps/delta``, ``register``, ``heartbeat``, ``cancel`` ...), before
and after gzip.
Run it in a thread (``with running() as eureka:``).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import orjson
from aiohttp import web

from .base import FaultInjector, ThreadedServer

RETENTION = 180.0  # eureka.retentionTimeInMSInDeltaQueue
LEASE_DURATION = 90.0  # LeaseInfo.DEFAULT_LEASE_DURATION
DEFAULT_DC_CLASS = "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo"
AMAZON_DC_CLASS = "com.netflix.appinfo.AmazonInfo"
_STRING_FIELDS = (
    "instanceId",
    "hostName",
    "app",
    "ipAddr",
    "status",
    "overriddenStatus",
    "homePageUrl",
    "statusPageUrl",
    "healthCheckUrl",
    "vipAddress",
    "secureVipAddress",
)


def instance(
    app: str,
    host: str,
    port: int | None = 8080,
    *,
    instance_id: str | None = None,
    status: str = "UP",
    metadata: dict[str, str] | None = None,
    secure_port: int | None = 443,
    secure_port_enabled: bool = False,
    port_enabled: bool = True,
    ip: str | None = None,
    datacenter: str = "MyOwn",
    datacenter_metadata: dict[str, str] | None = None,
    country_id: int = 1,
    vip: str | None = None,
) -> dict[str, Any]:
    """An instance as a Spring Cloud client registers it (the double's own shape)."""
    app = app.upper()
    record: dict[str, Any] = {
        "instanceId": f"{host}:{app.lower()}:{80 if port is None else port}"
        if instance_id is None
        else instance_id,
        "hostName": host,
        "app": app,
        "ipAddr": ip if ip is not None else host,
        "status": status,
        "overriddenStatus": "UNKNOWN",
        "port": port,
        "portEnabled": port_enabled,
        "securePort": secure_port,
        "securePortEnabled": secure_port_enabled,
        "countryId": country_id,
        "dataCenterInfo": {
            "class": AMAZON_DC_CLASS if datacenter == "Amazon" else DEFAULT_DC_CLASS,
            "name": datacenter,
            "metadata": dict(datacenter_metadata) if datacenter_metadata is not None else None,
        },
        "metadata": dict(metadata or {}),
        "homePageUrl": f"http://{host}:{80 if port is None else port}/",
        "statusPageUrl": f"http://{host}:{80 if port is None else port}/actuator/info",
        "healthCheckUrl": f"http://{host}:{80 if port is None else port}/actuator/health",
        "vipAddress": vip if vip is not None else app.lower(),
        "secureVipAddress": vip if vip is not None else app.lower(),
    }
    return record


def instance_key(record: dict[str, Any]) -> str:
    """``InstanceInfo.getId()``: the instanceId, an Amazon instance-id, else the host name."""
    if record.get("instanceId"):
        return str(record["instanceId"])
    dc = record.get("dataCenterInfo") or {}
    if dc.get("name") == "Amazon" and (dc.get("metadata") or {}).get("instance-id"):
        return str(dc["metadata"]["instance-id"])
    return str(record.get("hostName", ""))


def reconcile_hash_code(statuses: Iterator[str] | list[str]) -> str:
    """Eureka's ``apps__hashcode``: ``<STATUS>_<count>_`` for each status, sorted."""
    counts = Counter(statuses)
    return "".join(f"{status}_{counts[status]}_" for status in sorted(counts))


class EurekaDouble(ThreadedServer, FaultInjector):
    """An in-memory Eureka registry served over HTTP on 127.0.0.1."""

    thread_name = "eureka-double"

    def __init__(
        self,
        *,
        port: int = 0,
        prefix: str = "/eureka",
        retention: float = RETENTION,
        clock: Callable[[], float] = time.monotonic,
        disable_delta: bool = False,
        json_only: bool = False,
        basic_auth: tuple[str, str] | None = None,
    ) -> None:
        self.port = port
        self.prefix = prefix.rstrip("/")
        self.retention = retention
        self.clock = clock
        self.disable_delta = disable_delta  # eureka.disableDelta: /apps/delta answers 403
        self.json_only = json_only  # answers JSON whatever the Accept header says
        self.basic_auth = basic_auth  # as behind Spring Security's HTTP basic
        self._lock = threading.RLock()
        self._apps: dict[str, dict[str, dict[str, Any]]] = {}  # APP -> id -> instance
        self._renewed: dict[tuple[str, str], float] = {}
        # recentlyChangedQueue: (when, app, id, the instance as it was, with actionType).
        self._recent: deque[tuple[float, str, str, dict[str, Any]]] = deque()
        self._version = 0
        self._bodies: dict[tuple[str, int, bool], bytes] = {}
        FaultInjector.__init__(self)
        self.requests: Counter[str] = Counter()
        self.bytes_sent: Counter[str] = Counter()  # on the wire (gzip when asked for)
        self.body_bytes: Counter[str] = Counter()  # before compression
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The ``server`` of an eureka_sd_config, e.g. ``http://127.0.0.1:8761/eureka``."""
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    def make_app(self) -> web.Application:
        """The aiohttp application serving the API."""
        app = web.Application(middlewares=[self._middleware])
        p = self.prefix
        app.router.add_get(p + "/apps", self._get_apps)
        app.router.add_get(p + "/apps/delta", self._get_delta)
        app.router.add_get(p + "/apps/{app}", self._get_app)
        app.router.add_post(p + "/apps/{app}", self._register)
        app.router.add_get(p + "/apps/{app}/{id}", self._get_instance)
        app.router.add_put(p + "/apps/{app}/{id}", self._heartbeat)
        app.router.add_delete(p + "/apps/{app}/{id}", self._cancel)
        app.router.add_put(p + "/apps/{app}/{id}/status", self._set_status)
        app.router.add_delete(p + "/apps/{app}/{id}/status", self._remove_status)
        app.router.add_put(p + "/apps/{app}/{id}/metadata", self._update_metadata)
        return app

    async def start_async(self) -> None:
        """Start serving in the running event loop."""
        self._loop = asyncio.get_running_loop()
        await self.serve_app(self.make_app())

    async def stop_async(self) -> None:
        """Stop serving."""
        await self.close_app()

    # --- registry (thread-safe) ----------------------------------------------------------

    def _changed(self, app: str, key: str, record: dict[str, Any], action: str) -> None:
        now = self.clock()
        record["actionType"] = action
        record["lastUpdatedTimestamp"] = record["lastDirtyTimestamp"] = int(time.time() * 1000)
        self._recent.append((now, app, key, dict(record)))
        self._version += 1
        self._bodies.clear()

    def register(self, record: dict[str, Any]) -> str:
        """Register (or replace) an instance, as ``POST /apps/<app>``; returns its id."""
        with self._lock:
            record = dict(record)
            app = str(record.get("app", "")).upper()
            record["app"] = app
            key = instance_key(record)
            self._apps.setdefault(app, {})[key] = record
            self._renewed[(app, key)] = self.clock()
            # AbstractInstanceRegistry.register: a new lease is ADDED, even when it replaces one.
            self._changed(app, key, record, "ADDED")
            return key

    def cancel(self, app: str, key: str) -> bool:
        """Remove an instance, as ``DELETE /apps/<app>/<id>``; False if unknown."""
        with self._lock:
            app = app.upper()
            record = self._apps.get(app, {}).pop(key, None)
            if record is None:
                return False
            self._renewed.pop((app, key), None)
            self._changed(app, key, record, "DELETED")
            return True

    def renew(self, app: str, key: str) -> bool:
        """A heartbeat; False for an unknown lease (the client then registers again)."""
        with self._lock:
            app = app.upper()
            if key not in self._apps.get(app, {}):
                return False
            self._renewed[(app, key)] = self.clock()
            return True

    def set_status(self, app: str, key: str, status: str | None) -> bool:
        """Set a status override (None removes it, the instance is then UP again)."""
        with self._lock:
            app = app.upper()
            record = self._apps.get(app, {}).get(key)
            if record is None:
                return False
            record["overriddenStatus"] = status or "UNKNOWN"
            record["status"] = status or "UP"
            self._changed(app, key, record, "MODIFIED")
            return True

    def update_metadata(self, app: str, key: str, changes: dict[str, str]) -> bool:
        """Merge ``changes`` into an instance's metadata (``PUT .../metadata``)."""
        with self._lock:
            app = app.upper()
            record = self._apps.get(app, {}).get(key)
            if record is None:
                return False
            record["metadata"] = {**(record.get("metadata") or {}), **changes}
            self._changed(app, key, record, "MODIFIED")
            return True

    def modify(self, app: str, key: str, **fields: Any) -> bool:
        """Change fields of an instance in place (a re-registration with new data)."""
        with self._lock:
            app = app.upper()
            record = self._apps.get(app, {}).get(key)
            if record is None:
                return False
            record.update(fields)
            self._changed(app, key, record, "MODIFIED")
            return True

    def load(self, records: list[dict[str, Any]]) -> None:
        """Replace the whole registry: cancel what is not in ``records``, register the rest."""
        with self._lock:
            wanted = {(str(r["app"]).upper(), instance_key(r)) for r in records}
            for app, instances in list(self._apps.items()):
                for key in list(instances):
                    if (app, key) not in wanted:
                        self.cancel(app, key)
            for record in records:
                self.register(record)

    def evict(self, now: float | None = None) -> int:
        """Cancel every lease not renewed for LEASE_DURATION (EvictionTask); returns how many."""
        with self._lock:
            now = self.clock() if now is None else now
            expired = [k for k, t in self._renewed.items() if now - t > LEASE_DURATION]
            for app, key in expired:
                self.cancel(app, key)
            return len(expired)

    def instances(self) -> list[dict[str, Any]]:
        """Every registered instance (copies)."""
        with self._lock:
            return [dict(r) for apps in self._apps.values() for r in apps.values()]

    def hash_code(self) -> str:
        """The registry's ``apps__hashcode``."""
        with self._lock:
            return reconcile_hash_code(
                [str(r["status"]) for apps in self._apps.values() for r in apps.values()]
            )

    def _expire_recent(self) -> None:
        horizon = self.clock() - self.retention
        while self._recent and self._recent[0][0] < horizon:
            self._recent.popleft()

    def _delta_apps(self) -> dict[str, dict[str, dict[str, Any]]]:
        self._expire_recent()
        apps: dict[str, dict[str, dict[str, Any]]] = {}
        for _, app, key, record in self._recent:
            apps.setdefault(app, {})[key] = record
        return apps

    # --- answers -------------------------------------------------------------------------

    def render(self, what: str = "apps", *, json: bool = False) -> bytes:
        """The body of ``/apps`` or ``/apps/delta`` in XML or JSON (cached per version)."""
        with self._lock:
            key = (what, self._version, json)
            if what == "apps" and key in self._bodies:
                return self._bodies[key]
            apps = self._apps if what == "apps" else self._delta_apps()
            hash_code = self.hash_code()
            body = (
                _applications_json(apps, hash_code, self._version)
                if json
                else _applications_xml(apps, hash_code, self._version)
            )
            if what == "apps":
                self._bodies[key] = body
            return body

    def reset_counters(self) -> None:
        """Zero the request and byte counters."""
        with self._lock:
            self.requests.clear()
            self.bytes_sent.clear()
            self.body_bytes.clear()

    # --- HTTP ----------------------------------------------------------------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        path = request.path.removeprefix(self.prefix)
        endpoint = _endpoint(request.method, path)
        with self._lock:
            self.requests[endpoint] += 1
        if self.basic_auth is not None:
            expected = "Basic " + base64.b64encode(":".join(self.basic_auth).encode()).decode()
            if request.headers.get("Authorization") != expected:
                return web.Response(status=401, text="Unauthorized")
        refused = await self.arrival_fault(request, path)
        if refused is not None:
            return refused
        response: web.StreamResponse = await handler(request)
        fault = self._fault_for(path, ("malformed", "truncated"))
        if fault is not None and isinstance(response, web.Response) and response.status == 200:
            body = bytes(response.body) if isinstance(response.body, bytes) else b""
            if fault.kind == "malformed":
                response.body = b"<html><body>Service Unavailable" + body[:10]
            elif fault.kind == "truncated":
                response.body = body[: len(body) // 2]
        if isinstance(response, web.Response) and isinstance(response.body, bytes):
            body = response.body
            with self._lock:
                self.body_bytes[endpoint] += len(body)
            if "gzip" in request.headers.get("Accept-Encoding", "") and body:
                body = gzip.compress(body, compresslevel=6)
                response.body = body
                response.headers["Content-Encoding"] = "gzip"
            with self._lock:
                self.bytes_sent[endpoint] += len(body)
        return response

    def _answer(self, request: web.Request, what: str) -> web.Response:
        json = self.json_only or "json" in request.headers.get("Accept", "")
        return web.Response(
            body=self.render(what, json=json),
            content_type="application/json" if json else "application/xml",
        )

    async def _get_apps(self, request: web.Request) -> web.Response:
        return self._answer(request, "apps")

    async def _get_delta(self, request: web.Request) -> web.Response:
        if self.disable_delta:
            return web.Response(status=403)
        return self._answer(request, "delta")

    async def _get_app(self, request: web.Request) -> web.Response:
        app = request.match_info["app"].upper()
        json = "json" in request.headers.get("Accept", "")
        with self._lock:
            records = self._apps.get(app)
            if not records:
                return web.Response(status=404)
            if json:
                body = orjson.dumps({"application": _app_json(app, records)})
            else:
                body = _app_xml(app, records).encode()
        return web.Response(
            body=body, content_type="application/json" if json else "application/xml"
        )

    async def _get_instance(self, request: web.Request) -> web.Response:
        app, key = request.match_info["app"].upper(), request.match_info["id"]
        json = "json" in request.headers.get("Accept", "")
        with self._lock:
            record = self._apps.get(app, {}).get(key)
            if record is None:
                return web.Response(status=404)
            body = (
                orjson.dumps({"instance": _instance_json(record)})
                if json
                else _instance_xml(record).encode()
            )
        return web.Response(
            body=body, content_type="application/json" if json else "application/xml"
        )

    async def _register(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            if "json" in request.headers.get("Content-Type", ""):
                record = _record_from_json(orjson.loads(raw)["instance"])
            else:
                record = _record_from_xml(ElementTree.fromstring(raw))
        except (ValueError, KeyError, TypeError, ElementTree.ParseError) as exc:
            return web.Response(status=400, text=f"bad instance: {exc}")
        record["app"] = request.match_info["app"].upper()
        self.register(record)
        return web.Response(status=204)

    async def _heartbeat(self, request: web.Request) -> web.Response:
        ok = self.renew(request.match_info["app"], request.match_info["id"])
        return web.Response(status=200 if ok else 404)

    async def _cancel(self, request: web.Request) -> web.Response:
        ok = self.cancel(request.match_info["app"], request.match_info["id"])
        return web.Response(status=200 if ok else 404)

    async def _set_status(self, request: web.Request) -> web.Response:
        value = request.query.get("value", "")
        ok = self.set_status(request.match_info["app"], request.match_info["id"], value)
        return web.Response(status=200 if ok else 404)

    async def _remove_status(self, request: web.Request) -> web.Response:
        ok = self.set_status(request.match_info["app"], request.match_info["id"], None)
        return web.Response(status=200 if ok else 404)

    async def _update_metadata(self, request: web.Request) -> web.Response:
        changes = dict(request.query)
        ok = self.update_metadata(request.match_info["app"], request.match_info["id"], changes)
        return web.Response(status=200 if ok else 404)


# --- serialization ---------------------------------------------------------------------


def _endpoint(method: str, path: str) -> str:
    if path in ("/apps", "/apps/delta"):
        return path
    parts = path.strip("/").split("/")
    if method == "POST":
        return "register"
    if len(parts) == 4:
        return f"{parts[3]} {method}"
    if len(parts) == 3:
        return {"PUT": "heartbeat", "DELETE": "cancel"}.get(method, "/apps/<app>/<id>")
    return "/apps/<app>"


def _text(value: Any) -> str:
    return escape(str(value), {'"': "&quot;", "'": "&apos;"})


def _instance_xml(record: dict[str, Any]) -> str:
    out = ["<instance>"]
    for name in _STRING_FIELDS:
        if record.get(name) is not None:
            # XStream writes overriddenStatus as <overriddenstatus>.
            tag = "overriddenstatus" if name == "overriddenStatus" else name
            out.append(f"<{tag}>{_text(record[name])}</{tag}>")
    for name in ("port", "securePort"):
        if record.get(name) is not None:
            enabled = "true" if record.get(name + "Enabled") else "false"
            out.append(f'<{name} enabled="{enabled}">{record[name]}</{name}>')
    out.append(f"<countryId>{record.get('countryId', 0)}</countryId>")
    dc = record.get("dataCenterInfo")
    if dc is not None:
        out.append(
            f"<dataCenterInfo class={quoteattr(dc['class'])}><name>{_text(dc['name'])}</name>"
        )
        if dc.get("metadata") is not None:
            out.append(_metadata_xml(dc["metadata"]))
        out.append("</dataCenterInfo>")
    out.append(
        "<leaseInfo><renewalIntervalInSecs>30</renewalIntervalInSecs>"
        "<durationInSecs>90</durationInSecs></leaseInfo>"
    )
    if record.get("metadata") is not None:
        out.append(_metadata_xml(record["metadata"]))
    out.append("<isCoordinatingDiscoveryServer>false</isCoordinatingDiscoveryServer>")
    for name in ("lastUpdatedTimestamp", "lastDirtyTimestamp", "actionType"):
        if record.get(name) is not None:
            out.append(f"<{name}>{record[name]}</{name}>")
    out.append("</instance>")
    return "".join(out)


def _metadata_xml(metadata: dict[str, str]) -> str:
    if not metadata:
        return '<metadata class="java.util.Collections$EmptyMap"/>'
    items = "".join(f"<{k}>{_text(v)}</{k}>" for k, v in metadata.items())
    return f"<metadata>{items}</metadata>"


def _app_xml(name: str, records: dict[str, dict[str, Any]]) -> str:
    body = "".join(_instance_xml(r) for r in records.values())
    return f"<application><name>{_text(name)}</name>{body}</application>"


def _applications_xml(
    apps: dict[str, dict[str, dict[str, Any]]], hash_code: str, version: int
) -> bytes:
    parts = [
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<applications>',
        f"<versions__delta>{version}</versions__delta><apps__hashcode>{hash_code}</apps__hashcode>",
    ]
    parts.extend(_app_xml(name, records) for name, records in apps.items() if records)
    parts.append("</applications>")
    return "".join(parts).encode()


def _instance_json(record: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        name: record[name] for name in _STRING_FIELDS if record.get(name) is not None
    }
    for name in ("port", "securePort"):
        if record.get(name) is not None:
            enabled = "true" if record.get(name + "Enabled") else "false"
            out[name] = {"$": record[name], "@enabled": enabled}
    out["countryId"] = record.get("countryId", 0)
    dc = record.get("dataCenterInfo")
    if dc is not None:
        out["dataCenterInfo"] = {"@class": dc["class"], "name": dc["name"]}
        if dc.get("metadata") is not None:
            out["dataCenterInfo"]["metadata"] = dict(dc["metadata"])
    out["leaseInfo"] = {"renewalIntervalInSecs": 30, "durationInSecs": 90}
    metadata = record.get("metadata")
    if metadata is not None:
        out["metadata"] = dict(metadata) or {"@class": "java.util.Collections$EmptyMap"}
    out["isCoordinatingDiscoveryServer"] = "false"
    for name in ("lastUpdatedTimestamp", "lastDirtyTimestamp", "actionType"):
        if record.get(name) is not None:
            out[name] = str(record[name]) if name != "actionType" else record[name]
    return out


def _app_json(name: str, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "instance": [_instance_json(r) for r in records.values()]}


def _applications_json(
    apps: dict[str, dict[str, dict[str, Any]]], hash_code: str, version: int
) -> bytes:
    return orjson.dumps(
        {
            "applications": {
                "versions__delta": str(version),
                "apps__hashcode": hash_code,
                "application": [_app_json(n, r) for n, r in apps.items() if r],
            }
        }
    )


def _record_from_json(data: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {name: data[name] for name in _STRING_FIELDS if name in data}
    for name in ("port", "securePort"):
        if isinstance(data.get(name), dict):
            record[name] = int(data[name]["$"])
            record[name + "Enabled"] = str(data[name].get("@enabled")).lower() == "true"
    record["countryId"] = int(data.get("countryId", 1))
    dc = data.get("dataCenterInfo") or {}
    record["dataCenterInfo"] = {
        "class": dc.get("@class", DEFAULT_DC_CLASS),
        "name": dc.get("name", "MyOwn"),
        "metadata": dc.get("metadata"),
    }
    metadata = data.get("metadata") or {}
    record["metadata"] = {k: str(v) for k, v in metadata.items() if not k.startswith("@")}
    return record


def _record_from_xml(root: ElementTree.Element) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for child in root:
        tag = "overriddenStatus" if child.tag == "overriddenstatus" else child.tag
        if tag in _STRING_FIELDS:
            record[tag] = child.text or ""
        elif tag in ("port", "securePort"):
            record[tag] = int((child.text or "0").strip())
            record[tag + "Enabled"] = child.get("enabled", "false").lower() == "true"
        elif tag == "countryId":
            record[tag] = int((child.text or "0").strip())
        elif tag == "metadata":
            record["metadata"] = {m.tag: m.text or "" for m in child}
        elif tag == "dataCenterInfo":
            meta = child.find("metadata")
            record["dataCenterInfo"] = {
                "class": child.get("class", DEFAULT_DC_CLASS),
                "name": child.findtext("name", "MyOwn"),
                "metadata": {m.tag: m.text or "" for m in meta} if meta is not None else None,
            }
    return record


def running(**options: Any) -> EurekaDouble:
    """A double for a with-block: it serves from a thread until the block ends."""
    return EurekaDouble(**options)
