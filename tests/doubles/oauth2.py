"""An OAuth 2.0 token endpoint on loopback, for tests of the ``oauth2`` option."""

from __future__ import annotations

import base64
import contextlib
import ssl
from collections.abc import AsyncIterator

from aiohttp import web


@contextlib.asynccontextmanager
async def serving(
    app: web.Application, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port; yield its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class TokenEndpoint:
    """An OAuth 2.0 token endpoint (client credentials) and a resource that wants its token.

    The client is ``sdbridge`` with secret ``s:cret``; tokens are ``t1``, ``t2`` ...
    """

    def __init__(self, *, header_auth: bool = True, expires_in: int = 3600) -> None:
        self.header_auth = header_auth
        self.expires_in = expires_in
        self.forms: list[dict[str, str]] = []
        self.issued = 0
        self.revoked: set[str] = set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/token", self.token)
        app.router.add_get("/resource", self.resource)
        return app

    async def token(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.forms.append(form)
        header = request.headers.get("Authorization", "")
        if self.header_auth:
            good = header == "Basic " + base64.b64encode(b"sdbridge:s%3Acret").decode()
        else:
            good = form.get("client_id") == "sdbridge" and form.get("client_secret") == "s:cret"
        if not good or form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "invalid_client"}, status=401)
        self.issued += 1
        return web.json_response(
            {
                "access_token": f"t{self.issued}",
                "token_type": "bearer",
                "expires_in": self.expires_in,
            }
        )

    async def resource(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer t") or header in self.revoked:
            return web.Response(status=401, text="bad token")
        return web.json_response({"authorization": header})
