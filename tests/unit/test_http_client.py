"""The shared HTTP client layer against real loopback servers: a backend, a forward proxy
(tests/doubles/http_proxy.py) and an OAuth 2.0 token endpoint."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from sdbridge.discovery._http import (
    BasicAuth,
    BasicAuthConfig,
    HTTPClient,
    HTTPClientConfig,
    HTTPStatusError,
    read_lines,
)
from sdbridge.errors import BackendError, describe, redact_url
from tests.doubles.http_proxy import running_proxy
from tests.doubles.oauth2 import TokenEndpoint, serving
from tests.servers.tls import self_signed


def backend() -> tuple[web.Application, list[web.Request]]:
    """An app answering /hello with the Authorization header it got, and a few failures."""
    requests: list[web.Request] = []

    async def hello(request: web.Request) -> web.Response:
        requests.append(request)
        return web.json_response({"authorization": request.headers.get("Authorization")})

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/hello")

    async def broken(request: web.Request) -> web.Response:
        return web.json_response({"message": "no leader"}, status=500)

    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_get("/moved", moved)
    app.router.add_get("/broken", broken)
    return app, requests


def config(**options: Any) -> HTTPClientConfig:
    return HTTPClientConfig.model_validate(options)


# --- proxies ---------------------------------------------------------------------------------


async def test_plain_http_goes_through_proxy_url_with_its_credentials() -> None:
    app, requests = backend()
    async with running_proxy() as proxy, serving(app) as url:
        proxy_url = proxy.url.replace("://", "://proxyuser:proxy-pw@")
        async with HTTPClient(config(proxy_url=proxy_url), name="test") as client:
            answer = await client.fetch("GET", f"{url}/hello")
    assert answer.json() == {"authorization": None}
    assert [(s.method, s.target) for s in proxy.seen] == [("GET", url.split("//")[1])]
    expected = "Basic " + base64.b64encode(b"proxyuser:proxy-pw").decode()
    assert proxy.seen[0].proxy_authorization == expected
    assert len(requests) == 1


async def test_https_is_tunnelled_with_connect(tmp_path: Path) -> None:
    cert = self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert.cert, cert.key)
    app, requests = backend()
    options = config(proxy_url="http://127.0.0.1:1", tls_config={"ca_file": str(cert.cert)})
    async with running_proxy() as proxy, serving(app, server_context) as url:
        options = options.model_copy(update={"proxy_url": proxy.url})
        async with HTTPClient(options, name="test") as client:
            await client.fetch("GET", f"{url}/hello")
    assert [s.method for s in proxy.seen] == ["CONNECT"]
    assert len(requests) == 1


@pytest.mark.parametrize("no_proxy", ["127.0.0.0/8", "10.0.0.1,127.0.0.1", "*"])
async def test_no_proxy_hosts_are_reached_directly(no_proxy: str) -> None:
    app, requests = backend()
    async with running_proxy() as proxy, serving(app) as url:
        options = config(proxy_url=proxy.url, no_proxy=no_proxy)
        async with HTTPClient(options, name="test") as client:
            await client.fetch("GET", f"{url}/hello")
    assert proxy.seen == []
    assert len(requests) == 1


def test_no_proxy_matches_domains_and_subdomains() -> None:
    spec = "example.com,.corp,::1/128,10.1.2.3,[fe80::1]:8500,internal:2379"
    client = HTTPClient(config(proxy_url="http://proxy:3128", no_proxy=spec), name="t")
    proxy = "http://proxy:3128"
    for url, expected in [
        ("http://example.com/", None),
        ("http://a.example.com:8500/", None),
        ("http://notexample.com/", proxy),
        ("http://x.corp/", None),
        ("http://corp/", proxy),  # .corp: subdomains only, as Go's httpproxy
        ("http://[::1]:80/", None),
        ("http://10.1.2.3:9/", None),
        ("http://127.0.0.1/", proxy),
        ("http://[fe80::1]:8500/", None),
        ("http://[fe80::1]:8501/", proxy),
        ("http://internal:2379/", None),
        ("https://internal/", proxy),
    ]:
        assert client.proxy_for(url) == expected, url


async def test_proxy_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    app, requests = backend()
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with running_proxy() as proxy, serving(app) as url:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        async with HTTPClient(config(), name="test") as client:
            await client.fetch("GET", f"{url}/hello")
        assert proxy.seen == []  # not asked to: the environment is ignored
        async with HTTPClient(config(proxy_from_environment=True), name="test") as client:
            await client.fetch("GET", f"{url}/hello")
        assert len(proxy.seen) == 1
    assert len(requests) == 2


# --- redirects -------------------------------------------------------------------------------


async def test_redirects_are_followed_unless_disabled() -> None:
    app, requests = backend()
    async with serving(app) as url:
        async with HTTPClient(config(), name="test") as client:
            assert (await client.fetch("GET", f"{url}/moved")).status == 200
        async with HTTPClient(config(follow_redirects=False), name="test") as client:
            with pytest.raises(HTTPStatusError) as caught:
                await client.fetch("GET", f"{url}/moved")
    assert caught.value.status == 302
    assert len(requests) == 1


# --- oauth2 ----------------------------------------------------------------------------------


def oauth2(url: str, **extra: Any) -> HTTPClientConfig:
    return config(
        oauth2={
            "client_id": "sdbridge",
            "client_secret": "s:cret",
            "token_url": f"{url}/token",
            "scopes": ["read", "list"],
            "endpoint_params": {"audience": "consul"},
            **extra,
        }
    )


async def test_oauth2_token_is_fetched_once_and_sent_as_bearer() -> None:
    endpoint = TokenEndpoint()
    async with serving(endpoint.app()) as url, HTTPClient(oauth2(url), name="test") as client:
        first = await client.fetch("GET", f"{url}/resource")
        second = await client.fetch("GET", f"{url}/resource")
    assert first.json() == second.json() == {"authorization": "Bearer t1"}
    assert endpoint.forms == [
        {"grant_type": "client_credentials", "audience": "consul", "scope": "read list"}
    ]


async def test_oauth2_token_is_renewed_near_expiry_and_after_a_401() -> None:
    endpoint = TokenEndpoint(expires_in=5)  # within the 10 s margin: renewed every time
    async with serving(endpoint.app()) as url:
        async with HTTPClient(oauth2(url), name="test") as client:
            await client.fetch("GET", f"{url}/resource")
            await client.fetch("GET", f"{url}/resource")
        assert endpoint.issued == 2
        endpoint.expires_in = 3600
        async with HTTPClient(oauth2(url), name="test") as client:
            await client.fetch("GET", f"{url}/resource")
            endpoint.revoked.add("Bearer t3")
            with pytest.raises(HTTPStatusError):
                await client.fetch("GET", f"{url}/resource")
            answer = await client.fetch("GET", f"{url}/resource")
    assert answer.json() == {"authorization": "Bearer t4"}


async def test_oauth2_falls_back_to_credentials_in_the_form(tmp_path: Path) -> None:
    endpoint = TokenEndpoint(header_auth=False)
    secret = tmp_path / "secret"
    secret.write_text("s:cret\n")
    async with serving(endpoint.app()) as url:
        options = oauth2(url, client_secret=None, client_secret_file=str(secret))
        async with HTTPClient(options, name="test") as client:
            await client.fetch("GET", f"{url}/resource")
            await client.fetch("GET", f"{url}/resource")
    assert [f.get("client_id") for f in endpoint.forms] == [None, "sdbridge"]


async def test_oauth2_refusal_names_the_endpoint_without_the_secret() -> None:
    endpoint = TokenEndpoint()
    async with serving(endpoint.app()) as url:
        options = oauth2(url, client_secret="wrong-secret")
        async with HTTPClient(options, name="consul at x") as client:
            with pytest.raises(HTTPStatusError) as caught:
                await client.fetch("GET", f"{url}/resource")
    message = str(caught.value)
    assert message.startswith(f"consul at x: oauth2 token endpoint {url}/token: HTTP 401")
    assert "invalid_client" in message
    assert "wrong-secret" not in message


# --- error mapping ---------------------------------------------------------------------------


async def test_statuses_and_transport_failures_become_backend_errors() -> None:
    app, _ = backend()
    async with serving(app) as url, HTTPClient(config(), name="test") as client:
        with pytest.raises(HTTPStatusError) as caught:
            await client.fetch("GET", f"{url}/broken", where="etcd x")
        assert caught.value.status == 500
        assert str(caught.value) == "etcd x: HTTP 500: no leader"
        answer = await client.fetch("GET", f"{url}/broken", check=False)
        assert answer.status == 500
    secret_url = url.replace("://", "://user:hunter2@")
    async with HTTPClient(config(), name="test") as client:
        with pytest.raises(BackendError) as refused:
            await client.fetch("GET", f"{secret_url}/hello")
    assert "hunter2" not in str(refused.value)
    assert str(refused.value).startswith(f"{url}/hello: ")


async def test_bad_tls_files_are_a_backend_error(tmp_path: Path) -> None:
    options = config(tls_config={"ca_file": str(tmp_path / "absent.pem")})
    async with HTTPClient(options, name="Consul at h") as client:
        with pytest.raises(BackendError, match="Consul at h: cannot load tls_config"):
            await client.fetch("GET", "https://127.0.0.1:1/")


def test_config_exclusions_follow_prometheus() -> None:
    for options, message in [
        ({"basic_auth": {"username": "u"}, "authorization": {}}, "at most one"),
        (
            {
                "basic_auth": {"username": "u"},
                "oauth2": {"client_id": "c", "token_url": "http://h"},
            },
            "oauth2",
        ),
        ({"no_proxy": "h"}, "proxy_url must also"),
        ({"proxy_url": "http://p", "proxy_from_environment": True}, "must not be"),
        ({"proxy_url": "socks://user:pw@p"}, "proxy_url must be an http"),
    ]:
        with pytest.raises(ValidationError, match=message) as caught:
            config(**options)
        # The config loader shows the messages (never the input): no password in them.
        assert all("pw@" not in error["msg"] for error in caught.value.errors())
    assert BasicAuth is BasicAuthConfig


def test_describe_and_redact() -> None:
    assert describe(RuntimeError("backend connection lost")) == "backend connection lost"
    assert describe(TimeoutError()) == "TimeoutError"
    assert describe(ConnectionRefusedError(111, "Connection refused")) == "Connection refused"
    assert describe(BackendError("etcd x: down")) == "etcd x: down"
    assert describe(ssl.SSLError(1, "bad")) == "SSLError: bad"
    assert (
        redact_url("GET http://u:p@h:1/x and https://tok@h2/") == "GET http://h:1/x and https://h2/"
    )


# --- streams ---------------------------------------------------------------------------------


async def test_read_lines_has_no_line_length_limit_but_a_bound() -> None:
    big = b'{"v": "' + b"x" * 1_000_000 + b'"}'

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for part in (b"\n", big[:70_000], big[70_000:] + b"\n\n", b'{"last": 1}'):
            await response.write(part)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/stream", stream)
    async with serving(app) as url, HTTPClient(config(), name="test") as client:
        async with client.stream("GET", f"{url}/stream") as response:
            lines = [line async for line in read_lines(response, where="w")]
        assert lines == [big, b'{"last": 1}']
        async with client.stream("GET", f"{url}/stream") as response:
            with pytest.raises(BackendError, match="w: a line exceeds 100000 bytes"):
                async for _ in read_lines(response, where="w", max_line=100_000):
                    pass
