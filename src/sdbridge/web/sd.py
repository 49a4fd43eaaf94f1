"""``GET /sd/<job>``: Prometheus's http_sd endpoint, served from prepared bytes.

The body is the job's snapshot bytes, the same bytes as the file output. Everything
derived from a snapshot (its gzip encoding, the bodies of ``?shard=i&shards=n``) is
computed at most once per snapshot and cached on the snapshot's identity; a request
only picks bytes and compares ETags. Prometheus's contract (``discovery/http/http.go``):
status 200, ``Content-Type: application/json``, the full list every time, ``[]`` when
empty; on any other status it keeps its current targets, which is why a job that has
not synced yet answers 503 rather than an empty list.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import re
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache, partial

from aiohttp import web
from prometheus_client import Counter

from .. import metrics
from ..config import JOB_NAME_RE
from ..render import render_json
from ..snapshot import Snapshot, content_hash

JSON_CONTENT_TYPE = "application/json"
MAX_JOB_NAME = 200
MAX_SHARDS = 1024
# Level 6 is zlib's default: most of level 9's ratio at a fraction of its time.
GZIP_LEVEL = 6
_SHARD_CACHE_LIMIT = 8  # distinct ``shards=n`` values kept per snapshot


@dataclass(eq=False)
class Representation:
    """One body (the whole job, or one shard) with its ETag and lazily made gzip."""

    body: bytes
    etag: str  # hex, unquoted
    targets: int
    _gzip: asyncio.Future[bytes] | None = field(default=None, repr=False)

    def prepare_gzip(self, executor: Executor | None) -> None:
        """Start compressing ``body`` off the event loop, once."""
        if self._gzip is None:
            # A plain executor future (no coroutine), so one nobody awaits leaves no warning.
            compress = partial(gzip.compress, self.body, GZIP_LEVEL, mtime=0)
            self._gzip = asyncio.get_running_loop().run_in_executor(executor, compress)

    async def gzipped(self, executor: Executor | None) -> bytes:
        """The gzip encoding of ``body``, compressed once."""
        self.prepare_gzip(executor)
        assert self._gzip is not None
        return await asyncio.shield(self._gzip)


@dataclass(eq=False)
class SnapshotCache:
    """Everything derived from one snapshot, kept while that snapshot is served."""

    snapshot: Snapshot
    whole: Representation
    executor: Executor | None = None
    _shards: dict[int, asyncio.Future[list[Representation]]] = field(default_factory=dict)

    @classmethod
    def of(cls, snapshot: Snapshot, executor: Executor | None = None) -> SnapshotCache:
        """A cache for ``snapshot`` (the whole body is the snapshot's own bytes)."""
        whole = Representation(snapshot.body, snapshot.etag, snapshot.target_count)
        return cls(snapshot, whole, executor)

    async def gzipped(self, rep: Representation) -> bytes:
        """The gzip encoding of ``rep`` (this snapshot's whole body or a shard)."""
        return await rep.gzipped(self.executor)

    async def shard(self, index: int, shards: int) -> Representation:
        """Shard ``index`` of ``shards``; all ``shards`` bodies are built in one pass."""
        task = self._shards.get(shards)
        if task is None:
            if len(self._shards) >= _SHARD_CACHE_LIMIT:
                del self._shards[next(iter(self._shards))]
            task = asyncio.get_running_loop().run_in_executor(
                self.executor, split_shards, self.snapshot, shards
            )
            self._shards[shards] = task
        return (await asyncio.shield(task))[index]


def shard_of(address: str, shards: int) -> int:
    """The shard of a target: Prometheus's ``hashmod`` (md5, low 8 bytes, mod n)."""
    digest = hashlib.md5(address.encode("utf-8"), usedforsecurity=False).digest()
    return int.from_bytes(digest[8:], "big") % shards


def split_shards(snapshot: Snapshot, shards: int) -> list[Representation]:
    """The ``shards`` bodies of a snapshot; every target lands in exactly one."""
    buckets: list[list[int]] = [[] for _ in range(shards)]
    for position, entry in enumerate(snapshot.entries):
        buckets[shard_of(entry.address, shards)].append(position)
    result = []
    for bucket in buckets:
        entries = [snapshot.entries[i] for i in bucket]
        body = render_json(entries)
        etag = content_hash(entries)  # the whole body's hash function: same bytes, same tag
        result.append(Representation(body, etag, len(bucket)))
    return result


class SDCache:
    """Per-job :class:`SnapshotCache`, replaced when the job publishes a new snapshot.

    Compression and sharding run on threads of its own, not asyncio's default pool, so
    they neither wait behind nor hold up other work there (renders, file writes).
    """

    def __init__(self) -> None:
        self._caches: dict[str, SnapshotCache] = {}
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sdbridge-sd")

    def close(self) -> None:
        """Stop the threads (running work finishes)."""
        self.executor.shutdown(wait=False, cancel_futures=True)

    def get(self, job: str, snapshot: Snapshot) -> SnapshotCache:
        """The cache of ``snapshot``; a new snapshot (by identity) starts a new one."""
        cache = self._caches.get(job)
        if cache is None or cache.snapshot is not snapshot:
            cache = SnapshotCache.of(snapshot, self.executor)
            self._caches[job] = cache
            # Prometheus always asks for gzip: start compressing with the first request.
            cache.whole.prepare_gzip(self.executor)
        return cache

    def retain(self, jobs: set[str]) -> None:
        """Forget jobs that no longer exist."""
        for name in self._caches.keys() - jobs:
            del self._caches[name]


class ClientTracker:
    """Who polls each job: remote address, User-Agent, refresh interval, last poll.

    Prometheus sends ``X-Prometheus-Refresh-Interval-Seconds``; the UI and API show
    these so an operator can see which Prometheus servers read a job, and how often.
    Bounded per job: the oldest client is forgotten first.
    """

    LIMIT = 64

    def __init__(self) -> None:
        self._jobs: dict[str, dict[tuple[str, str], dict[str, object]]] = {}

    def seen(self, job: str, request: web.Request, status: int) -> None:
        """Record one request to ``/sd/<job>``."""
        agent = request.headers.get("User-Agent", "")[:120]
        address = request.remote or ""
        clients = self._jobs.setdefault(job, {})
        key = (address, agent)
        clients.pop(key, None)  # re-insert: dicts keep insertion order, newest last
        interval = request.headers.get("X-Prometheus-Refresh-Interval-Seconds", "")[:12]
        clients[key] = {
            "address": address,
            "user_agent": agent,
            "refresh_interval_seconds": float(interval) if _is_number(interval) else None,
            "last_seen": time.time(),
            "last_status": status,
        }
        if len(clients) > self.LIMIT:
            del clients[next(iter(clients))]

    def clients(self, job: str) -> list[dict[str, object]]:
        """The job's clients, most recent first."""
        return list(reversed(self._jobs.get(job, {}).values()))

    def retain(self, jobs: set[str]) -> None:
        """Forget jobs that no longer exist."""
        for name in self._jobs.keys() - jobs:
            del self._jobs[name]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_TOKEN_RE = re.compile(r'\s*(W/)?("[^"]*"|\*)\s*(?:,|$)')


def etag_matches(header: str, etags: tuple[str, ...]) -> bool:
    """If-None-Match's weak comparison: does any listed tag (or ``*``) match?"""
    for match in _TOKEN_RE.finditer(header):
        tag = match.group(2)
        if tag == "*" or tag.strip('"') in etags:
            return True
    return False


@lru_cache(maxsize=64)  # clients repeat the same header on every poll
def accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding header allows gzip (``gzip;q=0`` refuses it)."""
    allowed = False
    for part in header.split(","):
        coding, _, params = part.strip().partition(";")
        coding = coding.strip().lower()
        if coding not in ("gzip", "x-gzip", "*"):
            continue
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if coding == "*" and allowed:
            continue
        allowed = quality > 0
        if coding != "*":
            return allowed
    return allowed


@lru_cache(maxsize=1024)  # job names are checked against the config first: bounded
def _counter(job: str, code: int) -> Counter:
    return metrics.HTTP_SD_REQUESTS.labels(job=job, code=str(code))


def _plain(status: int, text: str, job: str, headers: dict[str, str] | None = None) -> web.Response:
    _counter(job, status).inc()
    return web.Response(status=status, text=text + "\n", headers=headers)


def _shard_params(query: dict[str, str]) -> tuple[int, int] | str | None:
    shard, shards = query.get("shard"), query.get("shards")
    if shard is None and shards is None:
        return None
    if shard is None or shards is None:
        return "shard and shards must be given together"
    if not all(v.isascii() and v.isdigit() and len(v) <= 5 for v in (shard, shards)):
        return "shard and shards must be small non-negative integers"
    index, count = int(shard), int(shards)
    if not 1 <= count <= MAX_SHARDS:
        return f"shards must be between 1 and {MAX_SHARDS}"
    if index >= count:
        return "shard must be lower than shards"
    return index, count


def make_handler(
    get_snapshot: Callable[[str], tuple[bool, Snapshot | None]],
    cache: SDCache,
    tracker: ClientTracker | None = None,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The ``/sd/{job}`` handler; ``get_snapshot(name)`` says (job exists, its snapshot)."""

    async def http_sd(request: web.Request) -> web.Response:
        response = await answer(request)
        name = request.match_info.get("job", "")
        if tracker is not None and response.status != 404:
            tracker.seen(name, request, response.status)
        return response

    async def answer(request: web.Request) -> web.Response:
        name = request.match_info.get("job", "")
        if len(name) > MAX_JOB_NAME or not JOB_NAME_RE.fullmatch(name):
            return _plain(404, "no such job", "")
        exists, snapshot = get_snapshot(name)
        if not exists:
            return _plain(404, f"no job named {name!r}", "")
        params = _shard_params(dict(request.query)) if request.query_string else None
        if isinstance(params, str):
            return _plain(400, params, name)
        if snapshot is None:
            reason = f"job {name!r} has not completed its first sync"
            return _plain(503, reason, name, {"Retry-After": "5"})
        entry = cache.get(name, snapshot)
        rep = entry.whole if params is None else await entry.shard(*params)
        use_gzip = accepts_gzip(request.headers.get("Accept-Encoding", ""))
        etag = f"{rep.etag}-gzip" if use_gzip else rep.etag
        headers = {
            "ETag": f'"{etag}"',
            "Vary": "Accept-Encoding",
            "Cache-Control": "no-cache",
            "X-Sdbridge-Targets": str(rep.targets),
        }
        if_none_match = request.headers.get("If-None-Match")
        if if_none_match and etag_matches(if_none_match, (rep.etag, f"{rep.etag}-gzip")):
            _counter(name, 304).inc()
            return web.Response(status=304, headers=headers)
        headers["Content-Type"] = JSON_CONTENT_TYPE
        body = rep.body
        if use_gzip:
            body = await entry.gzipped(rep)
            headers["Content-Encoding"] = "gzip"
        _counter(name, 200).inc()
        return web.Response(body=body, headers=headers)

    return http_sd
