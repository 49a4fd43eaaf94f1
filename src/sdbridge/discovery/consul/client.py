"""Consul's HTTP API as blocking queries, on the shared HTTP client layer.

One GET, with or without ``index``/``wait`` (Consul's blocking queries,
api-docs/features/blocking): the answer's body is kept undecoded with its
``X-Consul-Index``, so that a caller can skip decoding an answer whose index did not
move. Every failure is a :class:`~sdbridge.errors.BackendError` naming the URL; HTTP 429
is a :class:`ThrottledError`, which the watcher backs off from for longer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from ... import __version__
from ...durations import format_duration
from ...errors import BackendError, redact_url
from .._http import HTTPClient, HTTPStatusError, body_message, status_error
from .config import ConsulSDConfig


class ThrottledError(HTTPStatusError):
    """Consul answered 429: too many requests or connections from this client."""


@dataclass(frozen=True)
class Answer:
    """A 200 answer: its body, decoded on demand, and its X-Consul-Index."""

    body: bytes
    index: int
    where: str

    @property
    def data(self) -> Any:
        """The decoded JSON; BackendError if it is not JSON."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise BackendError(f"{self.where}: invalid JSON ({exc}): {self.body[:100]!r}") from exc


class ConsulClient:
    """Consul's HTTP API; every failure becomes a BackendError. Close with :meth:`close`."""

    def __init__(self, config: ConsulSDConfig, count: Callable[[], None]) -> None:
        self.config = config
        server = config.server
        self.base = (server if "://" in server else f"{config.scheme}://{server}").rstrip("/")
        self.base += config.path_prefix
        headers = {"Accept": "application/json", "User-Agent": f"sdbridge/{__version__}"}
        if config.token is not None:
            headers["X-Consul-Token"] = config.token.get_secret_value()
        self.http = HTTPClient(
            config.http_options(),
            name=f"Consul at {redact_url(self.base)}",
            timeout=config.request_timeout,
            headers=headers,
            # Sweep reads, targeted reads and the three long-polls.
            limit=2 * config.max_concurrency + 3,
            count_request=count,
        )

    async def close(self) -> None:
        """Close the connections."""
        await self.http.close()

    def scope(self, datacenter: str) -> list[tuple[str, str]]:
        """Query parameters every read shares: dc, stale, namespace, partition, node meta."""
        params = [("dc", datacenter)] if datacenter else []
        if self.config.allow_stale:
            params.append(("stale", ""))
        if self.config.namespace:
            params.append(("ns", self.config.namespace))
        if self.config.partition:
            params.append(("partition", self.config.partition))
        params.extend(("node-meta", f"{k}:{v}") for k, v in sorted(self.config.node_meta.items()))
        return params

    async def get(
        self, path: str, params: list[tuple[str, str]], *, index: int = 0, wait: float = 0.0
    ) -> Answer:
        """GET ``path``; with ``index`` > 0, a blocking query that waits up to ``wait``."""
        query = list(params)
        timeout = self.config.request_timeout
        if index > 0:
            query += [("index", str(index)), ("wait", format_duration(wait))]
            # Consul adds up to wait/16 of jitter; give the answer room to arrive.
            timeout = wait + wait / 16 + self.config.request_timeout
        shown = redact_url(self.base + path)
        answer = await self.http.fetch(
            "GET", self.base + path, params=query, time_limit=timeout, where=shown, check=False
        )
        if answer.status != 200:
            raise _status_error(shown, answer.status, answer.body)
        raw_index = answer.headers.get("X-Consul-Index", "0")
        try:
            new_index = int(raw_index)
        except ValueError:
            raise BackendError(f"{shown}: invalid X-Consul-Index {raw_index!r}") from None
        return Answer(answer.body, new_index, shown)


def _status_error(url: str, status: int, body: bytes) -> BackendError:
    if status == 429:
        return ThrottledError(
            f"{url}: HTTP 429 (Consul's rate or connection limit): {body_message(body)}",
            status=status,
        )
    hint = ""
    if status == 403:
        hint = " (check the token and its ACL policy)"
    elif status == 401:
        hint = " (check basic_auth / authorization / oauth2)"
    elif "datacenter" in body.decode("utf-8", "replace").lower():
        hint = " (check the datacenter option)"
    return status_error(url, status, body, hint)
