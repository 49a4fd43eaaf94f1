"""A minimal client of etcd's v3 JSON gateway, on the shared HTTP client layer.

``/v3/kv/range`` (paginated, every page at the first page's revision) and ``/v3/watch``
(a stream of JSON lines); keys and values travel in base64. etcd's own authentication
(``/v3/auth/authenticate``) gives a token that is sent until etcd refuses it. No Python
asyncio etcd client is both well kept and free of a gRPC/protobuf stack, and aiohttp is
already a dependency (see docs/mechanisms/etcd.md).
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from ...errors import BackendError, redact_url
from .._http import (
    HTTPClient,
    HTTPClientConfig,
    HTTPStatusError,
    enable_tcp_keepalive,
    read_lines,
)
from .config import EtcdClientConfig


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd returns it; ``value`` is None for a deletion."""

    key: bytes
    value: bytes | None
    lease: int = 0
    mod_revision: int = 0


class WatchCompacted(Exception):
    """The watch's start revision was compacted away: relist."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (compact_revision {compact_revision})")
        self.compact_revision = compact_revision


def prefix_range_end(prefix: bytes) -> bytes:
    """The range end that makes a range cover every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def kv_from_json(raw: dict[str, Any], deleted: bool = False) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(raw.get("key", "")),
        value=None if deleted else base64.b64decode(raw.get("value", "")),
        lease=int(raw.get("lease", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
    )


def json_object(payload: bytes, what: str) -> dict[str, Any]:
    """``payload`` decoded as a JSON object; a BackendError saying ``what`` is not one."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise BackendError(f"{what} is not JSON: {payload[:200]!r}") from None
    if not isinstance(data, dict):
        raise BackendError(f"{what} is not a JSON object")
    return data


class Gateway:
    """A minimal client of etcd's v3 JSON gateway: paginated range and a streamed watch.

    It speaks to one endpoint at a time and moves to the next after a connection error,
    a 5xx or a broken watch. Close it with :meth:`close`.
    """

    def __init__(
        self, config: EtcdClientConfig, count_request: Callable[[], None] | None = None
    ) -> None:
        self.config = config
        self.urls = config.urls()
        self._current = 0
        self._token: str | None = None
        # etcd has no Prometheus twin: of the shared HTTP options it takes tls_config
        # (server_name included); its auth is etcd's own token, below.
        self.http = HTTPClient(
            HTTPClientConfig(tls_config=config.tls_config),
            name=f"etcd {', '.join(redact_url(u) for u in self.urls)}",
            timeout=config.request_timeout,
            connect_timeout=config.dial_timeout,
            limit=4,
            count_request=count_request,
        )

    async def close(self) -> None:
        """Close the connections."""
        await self.http.close()

    @property
    def url(self) -> str:
        """The endpoint in use."""
        return self.urls[self._current]

    def _failover(self) -> None:
        self._current = (self._current + 1) % len(self.urls)

    async def _headers(self) -> dict[str, str]:
        if self.config.username is None or self.config.password is None:
            return {}
        if self._token is None:
            body = {
                "name": self.config.username,
                "password": self.config.password.get_secret_value(),
            }
            answer = await self._post("/v3/auth/authenticate", body, auth=False)
            self._token = str(answer.get("token", ""))
        return {"Authorization": self._token}

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to a gateway path (``/v3/kv/txn``, ``/v3/lease/grant`` ...)."""
        return await self._post(path, body)

    async def _post(self, path: str, body: dict[str, Any], *, auth: bool = True) -> dict[str, Any]:
        headers = await self._headers() if auth else {}
        url = self.url + path
        where = f"etcd {redact_url(url)}"
        try:
            response = await self.http.fetch(
                "POST", url, data=orjson.dumps(body), headers=headers, where=where, check=False
            )
        except BackendError:
            self._failover()
            raise
        if response.status >= 500:
            self._failover()  # e.g. a member without a leader: another may answer
        answer = json_object(response.body, f"{where}: answer")
        if response.status != 200 or "error" in answer:
            raise self._error(answer, where, response.status)
        return answer

    def _error(self, answer: dict[str, Any], where: str, status: int) -> Exception:
        message = str(answer.get("message") or answer.get("error") or f"HTTP {status}")
        if "auth token" in message or answer.get("code") == 16:
            self._token = None  # expired or revoked: authenticate again next time
        return BackendError(f"{where}: {message}")

    async def range_prefix(self, prefix: bytes) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` at one revision, and that revision."""
        range_end = _b64(prefix_range_end(prefix))
        start = prefix
        revision = 0
        kvs: list[KeyValue] = []
        while True:
            body: dict[str, Any] = {
                "key": _b64(start),
                "range_end": range_end,
                "limit": self.config.page_size,
            }
            if revision:
                body["revision"] = revision  # later pages read the first page's revision
            answer = await self._post("/v3/kv/range", body)
            if not revision:
                revision = int(answer.get("header", {}).get("revision", 0))
            page = [kv_from_json(raw) for raw in answer.get("kvs", ())]
            kvs.extend(page)
            if not answer.get("more") or not page:
                return kvs, revision
            start = page[-1].key + b"\0"

    @contextlib.asynccontextmanager
    async def watch(self, prefix: bytes, start_revision: int) -> AsyncIterator[WatchStream]:
        """Open a watch stream on ``prefix`` from ``start_revision``."""
        headers = await self._headers()
        url = self.url + "/v3/watch"
        where = f"etcd {redact_url(url)}"
        body = {
            "create_request": {
                "key": _b64(prefix),
                "range_end": _b64(prefix_range_end(prefix)),
                "start_revision": start_revision,
                "progress_notify": True,
            }
        }
        try:
            async with self.http.stream(
                "POST", url, data=orjson.dumps(body), headers=headers, where=where
            ) as response:
                enable_tcp_keepalive(response)
                yield WatchStream(response, where)
        except HTTPStatusError as exc:
            if exc.status == 401 or "auth token" in str(exc):
                self._token = None  # expired or revoked: authenticate again next time
            self._failover()
            raise
        except BackendError:
            self._failover()  # the stream ended or failed: try the next endpoint
            raise


class WatchStream:
    """The messages of a watch response, one JSON object per line."""

    def __init__(self, response: aiohttp.ClientResponse, where: str) -> None:
        self.response = response
        self.where = where

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        lines = read_lines(self.response, where=f"{self.where}: watch stream broken")
        async for line in lines:
            yield self._message(line)
        raise BackendError(f"{self.where}: watch stream ended")

    def _message(self, line: bytes) -> dict[str, Any]:
        message = json_object(line, f"{self.where}: watch message")
        if "error" in message:
            error = message["error"]
            text = error.get("message", error) if isinstance(error, dict) else error
            raise BackendError(f"{self.where}: watch failed: {text}")
        result = message.get("result", {})
        return result if isinstance(result, dict) else {}
