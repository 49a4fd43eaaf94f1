"""Basic auth with bcrypt hashes, as the exporter-toolkit's ``basic_auth_users``.

bcrypt is slow on purpose (tens of milliseconds at cost 10), so a check runs off the
event loop and a successful (user, password) pair is remembered, as the
exporter-toolkit does; failures are never cached, so guessing stays expensive. An
unknown user is checked against a dummy hash so that the answer takes as long as for
a known one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from collections import OrderedDict
from collections.abc import Callable
from functools import cache

import bcrypt
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .. import metrics

_CACHE_SIZE = 1024


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


class CredentialChecker:
    """Checks credentials against bcrypt hashes, caching successes."""

    def __init__(self, users: dict[str, bytes]) -> None:
        self.users = users
        self._ok: OrderedDict[bytes, None] = OrderedDict()

    def replace_users(self, users: dict[str, bytes]) -> None:
        """Check against ``users`` from now on; remembered successes are forgotten."""
        self.users = users
        self._ok.clear()

    def _key(self, user: str, password: str, hashed: bytes) -> bytes:
        return hashlib.sha256(b"\0".join((user.encode(), password.encode(), hashed))).digest()

    async def check(self, user: str, password: str) -> bool:
        """Whether ``password`` is ``user``'s; unknown users take as long as known ones."""
        hashed = self.users.get(user)
        key = self._key(user, password, hashed or b"")
        if hashed is not None and key in self._ok:
            self._ok.move_to_end(key)
            return True
        candidate = hashed if hashed is not None else _dummy_hash()
        try:
            ok = await asyncio.to_thread(bcrypt.checkpw, password.encode("utf-8"), candidate)
        except ValueError:  # a hash bcrypt cannot parse; refused at load time normally
            ok = False
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
            if credentials is None or not await self.check(*credentials):
                metrics.WEB_AUTH_FAILURES.inc()
                return web.Response(
                    status=401,
                    text="Unauthorized\n",
                    headers={"WWW-Authenticate": 'Basic realm="sdbridge", charset="UTF-8"'},
                )
            return await handler(request)

        return basic_auth
