"""The kazoo client, bridged to asyncio.

kazoo runs its own threads; its callbacks only hop back into the event loop with
``loop.call_soon_threadsafe``, and every request is awaited as an asyncio future, so the
loop never blocks. Connection state changes are logged once each and tell the mechanism
when a full resync is due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import NoNodeError, UnimplementedError

from ...errors import BackendError, SdbridgeError, describe
from ..base import DiscoveryContext
from . import _kazoo_ext
from .config import ZookeeperSDConfig

# kazoo logs every reconnection attempt; sdbridge logs each state change once instead.
# Its messages go to this logger, which shows only errors unless configured otherwise.
KAZOO_LOG = logging.getLogger("sdbridge.discovery.zookeeper.kazoo")
KAZOO_LOG.setLevel(logging.ERROR)

Request = tuple[Callable[..., Any], tuple[Any, ...], str]  # method, arguments, description
# Batches above this many requests are handed to kazoo from a worker thread.
_SUBMIT_INLINE_MAX = 32


class Gone(Exception):
    """The znode does not exist (any more)."""


class Session:
    """A kazoo client whose state changes and results arrive in the event loop."""

    def __init__(self, config: ZookeeperSDConfig, context: DiscoveryContext) -> None:
        self.loop = asyncio.get_running_loop()
        self.context = context
        self.hosts = ",".join(config.servers)
        self.connected = asyncio.Event()
        self.changed = asyncio.Event()  # a state change or a watch event happened
        self._resync_needed = True
        self.state: str | None = None
        self.closing = False
        self.client = KazooClient(hosts=self.hosts, **client_options(config))
        self.client.add_listener(self._listener)
        # Where persistent-watch events go (kazoo thread), once a tree subscribes.
        self.event_sink: Callable[[int, str], None] | None = None
        private_api = _kazoo_ext.has_private_api(self.client)
        self.persistent = config.persistent_watches and private_api
        self.multi_read = private_api
        if self.persistent:
            _kazoo_ext.tap_watch_events(self.client, self._watch_event)

    def _watch_event(self, event_type: int, path: str) -> None:
        sink = self.event_sink
        if sink is not None:
            sink(event_type, path)

    def read_many(self, ops: list[tuple[int, str]]) -> Any:
        """Send one ``multiRead`` of ``ops``; return kazoo's async result."""
        return _kazoo_ext.multi_read(self.client, ops)

    def add_watch(self, path: str) -> Any:
        """Send ``addWatch(path, PERSISTENT_RECURSIVE)``; return kazoo's async result."""
        return _kazoo_ext.add_recursive_watch(self.client, path)

    def must_resync(self) -> bool:
        """Whether the connection dropped since :meth:`resyncing` was called."""
        return self._resync_needed

    def resyncing(self) -> None:
        """Note that a full resync starts now."""
        self._resync_needed = False

    def start(self) -> None:
        """Start connecting in kazoo's threads; returns at once."""
        self.client.start_async()

    async def close(self) -> None:
        """Close the session (off the loop: kazoo joins its threads)."""
        self.closing = True
        await asyncio.to_thread(_stop_client, self.client)

    def _listener(self, state: str) -> None:
        # kazoo's connection thread: hop into the loop, never block here.
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self.loop.call_soon_threadsafe(self._on_state, state)

    def _on_state(self, state: str) -> None:
        if self.closing:
            return
        previous, self.state = self.state, state
        log = self.context.logger
        if state == KazooState.CONNECTED:
            session = self.client.client_id[0] if self.client.client_id else 0
            log.info("connected to ZooKeeper %s (session 0x%x)", self.hosts, session)
            self.connected.set()
        else:
            self.connected.clear()
            self._resync_needed = True
            if state == KazooState.LOST:
                log.warning("ZooKeeper session expired; a new session will resync everything")
            elif previous != state:
                log.warning(
                    "lost the connection to ZooKeeper %s; keeping the last targets", self.hosts
                )
        self.changed.set()

    async def call(self, method: Callable[..., Any], *args: Any, what: str) -> Any:
        """Run one kazoo ``*_async`` method; raise :class:`Gone` or :class:`BackendError`."""
        (result,) = await self.batch([(method, args, what)])
        if isinstance(result, BaseException):
            raise result
        return result

    async def batch(self, requests: list[Request]) -> list[Any]:
        """Run kazoo ``*_async`` requests, pipelined; return each result or its error.

        Errors are :class:`Gone` (no such znode) or :class:`BackendError`. Submitting a
        request costs kazoo a wake-up write and a GIL hand-off to its thread, so large
        batches are submitted from a worker thread: the event loop never waits on kazoo.
        """
        loop = self.loop
        futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in requests]
        for future in futures:
            # If the caller is cancelled mid-batch, late errors must not be reported as
            # "never retrieved": mark them seen.
            future.add_done_callback(_consume)

        def resolve(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
            if not future.done():
                if error is None:
                    future.set_result(value)
                else:
                    future.set_exception(error)

        def completer(future: asyncio.Future[Any]) -> Callable[[Any], None]:
            def completed(result: Any) -> None:  # kazoo's callback thread
                error = result.exception
                value = None if error is not None else result.value
                with contextlib.suppress(RuntimeError):  # the loop is closing
                    loop.call_soon_threadsafe(resolve, future, value, error)

            return completed

        def submit() -> None:
            for (method, args, _), future in zip(requests, futures, strict=True):
                try:
                    method(*args).rawlink(completer(future))
                except Exception as exc:
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(resolve, future, None, exc)

        self.context.count_request(len(requests))
        if len(requests) > _SUBMIT_INLINE_MAX:
            await asyncio.to_thread(submit)
        else:
            submit()
        results = await asyncio.gather(*futures, return_exceptions=True)
        return [self.wrap(r, what) for r, (_, _, what) in zip(results, requests, strict=True)]

    def wrap(self, result: Any, what: str) -> Any:
        """A kazoo result as sdbridge sees it: a value, :class:`Gone` or BackendError."""
        if isinstance(result, NoNodeError):
            return Gone(what)
        if isinstance(result, Exception) and not isinstance(result, SdbridgeError | Gone):
            # Kazoo's errors, and any other (an answer that does not parse) alike.
            error = BackendError(f"ZooKeeper {self.hosts}: {what}: {describe(result)}")
            error.__cause__ = result
            return error
        return result


def unimplemented(reply: Any) -> bool:
    """Whether a wrapped reply says the server lacks the request (it predates 3.6)."""
    return isinstance(reply, BackendError) and isinstance(reply.__cause__, UnimplementedError)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _stop_client(client: KazooClient) -> None:
    with contextlib.suppress(Exception):
        client.stop()
    with contextlib.suppress(Exception):
        client.close()


def client_options(config: ZookeeperSDConfig) -> dict[str, Any]:
    """The KazooClient arguments for ``config``: timeouts, retries, auth and TLS."""
    options: dict[str, Any] = {
        "timeout": config.timeout,
        "logger": KAZOO_LOG,
        # Reconnect forever; sdbridge reports the outage and keeps the last targets.
        "connection_retry": {"max_tries": -1, "delay": 0.2, "backoff": 2, "max_delay": 5.0},
    }
    if config.digest_auth is not None:
        secret = config.digest_auth.password.get_secret_value()
        options["auth_data"] = [("digest", f"{config.digest_auth.username}:{secret}")]
    tls = config.tls_config
    if tls is not None:
        options["use_ssl"] = True
        options["verify_certs"] = not tls.insecure_skip_verify
        if tls.ca_file is not None:
            options["ca"] = str(tls.ca_file)
        if tls.cert_file is not None:
            options["certfile"] = str(tls.cert_file)
        if tls.key_file is not None:
            options["keyfile"] = str(tls.key_file)
        if tls.key_password is not None:
            options["keyfile_password"] = tls.key_password.get_secret_value()
    return options
