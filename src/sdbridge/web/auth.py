"""Basic auth with bcrypt hashes, as the exporter-toolkit's ``basic_auth_users``.

bcrypt is slow on purpose (tens of milliseconds at cost 10), so a check runs off the
event loop and a successful (user, password) pair is remembered, as the
exporter-toolkit does; failures are never cached, so guessing stays expensive. An
unknown user is checked against a dummy hash so that the answer takes as long as for
a known one.

A flood of wrong passwords must not starve anything else, so checks run on an executor
of their own (one thread, as the exporter-toolkit serialises bcrypt) with a bounded
number waiting, and each client address may fail only so often:

- a good client costs one bcrypt per cache lifetime (the cache holds successes);
- an address past its failure budget (a burst of ``FAILURE_BURST``, then one per
  ``1 / FAILURE_RATE`` seconds) is answered 429 without a bcrypt check;
- beyond ``MAX_WAITING`` checks in flight, new ones are answered 429 at once.

Every refusal is counted in ``sdbridge_web_auth_failures_total``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import bcrypt
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .. import metrics

_CACHE_SIZE = 1024
MAX_WAITING = 16
"""Credential checks queued or running at once; more are refused at once."""
FAILURE_BURST = 10
"""Failed checks an address may make before it is limited..."""
FAILURE_RATE = 1.0
"""...to this many per second."""
_TRACKED_ADDRESSES = 4096
REFUSAL_DELAY = 1.0
"""Seconds a 429 is held back (its Retry-After), so a flooding client waits, not the server."""


# Predicates a route hook may append to: a request any of them accepts skips basic auth
# (e.g. registry writes that carry their own bearer token).
AUTH_EXEMPT_KEY = web.AppKey("auth_exempt", list[Callable[[web.Request], bool]])


@cache
def _dummy_hash() -> bytes:
    # A valid hash of a random password, so unknown users cost a real bcrypt check.
    return bcrypt.hashpw(b"sdbridge-dummy-password", bcrypt.gensalt(rounds=10))


def parse_basic(header: str) -> tuple[str, str] | None:
    """``Basic base64(user:password)`` → (user, password); None when malformed."""
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return user, password


class FailureBudget:
    """Per-address token buckets for failed credential checks (a bounded table)."""

    def __init__(
        self,
        burst: float = FAILURE_BURST,
        rate: float = FAILURE_RATE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.rate = rate
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _tokens(self, address: str, now: float) -> float:
        tokens, since = self._buckets.get(address, (self.burst, now))
        return min(self.burst, tokens + (now - since) * self.rate)

    def allows(self, address: str) -> bool:
        """Whether ``address`` may try again (it has not used up its failures)."""
        return self._tokens(address, self._clock()) >= 1.0

    def spend(self, address: str) -> None:
        """Record one failed check by ``address``."""
        now = self._clock()
        self._buckets[address] = (max(0.0, self._tokens(address, now) - 1.0), now)
        self._buckets.move_to_end(address)
        if len(self._buckets) > _TRACKED_ADDRESSES:
            self._buckets.popitem(last=False)


class CredentialChecker:
    """Checks credentials against bcrypt hashes, caching successes; see the module docstring."""

    def __init__(self, users: dict[str, bytes]) -> None:
        self.users = users
        self._ok: OrderedDict[bytes, None] = OrderedDict()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdbridge-auth")
        self._waiting = 0
        self.failures = FailureBudget()
        self.refusal_delay = REFUSAL_DELAY

    def close(self) -> None:
        """Stop the checking thread (running checks finish)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def replace_users(self, users: dict[str, bytes]) -> None:
        """Check against ``users`` from now on; remembered successes are forgotten."""
        self.users = users
        self._ok.clear()

    def _key(self, user: str, password: str, hashed: bytes) -> bytes:
        return hashlib.sha256(b"\0".join((user.encode(), password.encode(), hashed))).digest()

    def cached(self, user: str, password: str) -> bool:
        """Whether this pair succeeded recently (no bcrypt needed)."""
        hashed = self.users.get(user)
        key = self._key(user, password, hashed or b"")
        if hashed is not None and key in self._ok:
            self._ok.move_to_end(key)
            return True
        return False

    @property
    def busy(self) -> bool:
        """Whether the checking thread has ``MAX_WAITING`` checks queued or running."""
        return self._waiting >= MAX_WAITING

    async def check(self, user: str, password: str) -> bool:
        """Whether ``password`` is ``user``'s; unknown users take as long as known ones."""
        if self.cached(user, password):
            return True
        hashed = self.users.get(user)
        key = self._key(user, password, hashed or b"")
        candidate = hashed if hashed is not None else _dummy_hash()
        loop = asyncio.get_running_loop()
        self._waiting += 1
        try:
            ok = await loop.run_in_executor(
                self._executor, bcrypt.checkpw, password.encode("utf-8"), candidate
            )
        except ValueError:  # a hash bcrypt cannot parse; refused at load time normally
            ok = False
        finally:
            self._waiting -= 1
        ok = ok and hashed is not None
        if ok:
            self._ok[key] = None
            if len(self._ok) > _CACHE_SIZE:
                self._ok.popitem(last=False)
        return ok

    def middleware(self) -> Middleware:
        """An aiohttp middleware that answers 401 without valid credentials."""

        @web.middleware
        async def basic_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
            if not self.users or any(
                exempt(request) for exempt in request.app.get(AUTH_EXEMPT_KEY, ())
            ):
                return await handler(request)
            credentials = parse_basic(request.headers.get("Authorization", ""))
            if credentials is not None and self.cached(*credentials):
                return await handler(request)
            address = request.remote or ""
            if credentials is not None and (self.busy or not self.failures.allows(address)):
                metrics.WEB_AUTH_FAILURES.inc()
                # A sleeping request costs nothing; answering at once would let each
                # flooding client send another at once (connections stay capped).
                await asyncio.sleep(self.refusal_delay)
                return web.Response(
                    status=429, text="Too Many Requests\n", headers={"Retry-After": "1"}
                )
            if credentials is None or not await self.check(*credentials):
                metrics.WEB_AUTH_FAILURES.inc()
                if credentials is not None:
                    self.failures.spend(address)
                return web.Response(
                    status=401,
                    text="Unauthorized\n",
                    headers={"WWW-Authenticate": 'Basic realm="sdbridge", charset="UTF-8"'},
                )
            return await handler(request)

        return basic_auth
