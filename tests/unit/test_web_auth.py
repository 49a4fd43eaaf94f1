"""The web config file: TLS and basic auth, and malformed files refused with clear errors."""

from __future__ import annotations

import asyncio
import base64
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import bcrypt
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from sdbridge.daemon import Daemon
from sdbridge.errors import ConfigError
from sdbridge.web import auth
from sdbridge.web.app import AUTH_EXEMPT_KEY
from sdbridge.web.auth import parse_basic
from sdbridge.web.keys import AUTH_KEY
from sdbridge.web.server import Server, start_server
from sdbridge.web.webconfig import load_web_config
from tests.servers.tls import SelfSigned, bcrypt_hash, self_signed, write_web_config
from tests.unit.test_registry_store import eventually
from tests.unit.test_web_sd import make_daemon, targets


@pytest.fixture(scope="module")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> SelfSigned:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def daemon() -> Daemon:
    return make_daemon({"web": targets(3)})


@pytest.fixture
async def tls_server(
    daemon: Daemon, tls_material: SelfSigned, tmp_path: Path
) -> AsyncIterator[Server]:
    config = write_web_config(
        tmp_path / "web.yml", tls=tls_material, users={"alice": "s3cret", "bob": "hunter2"}
    )
    server = await start_server(daemon, "127.0.0.1:0", config)
    yield server
    await server.close()


def client_ssl(tls: SelfSigned) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls.cert))


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_tls_and_basic_auth(tls_server: Server, tls_material: SelfSigned) -> None:
    assert tls_server.url.startswith("https://127.0.0.1:")
    context = client_ssl(tls_material)
    async with aiohttp.ClientSession() as session:
        anonymous = await session.get(f"{tls_server.url}/sd/web", ssl=context)
        assert anonymous.status == 401
        assert anonymous.headers["WWW-Authenticate"].startswith("Basic ")
        wrong = await session.get(
            f"{tls_server.url}/sd/web", ssl=context, headers=basic("alice", "wrong")
        )
        assert wrong.status == 401
        unknown = await session.get(
            f"{tls_server.url}/sd/web", ssl=context, headers=basic("mallory", "s3cret")
        )
        assert unknown.status == 401
        crossed = await session.get(
            f"{tls_server.url}/sd/web", ssl=context, headers=basic("bob", "s3cret")
        )
        assert crossed.status == 401
        for path in ("/sd/web", "/metrics", "/", "/api/v1/jobs", "/-/healthy"):
            ok = await session.get(
                f"{tls_server.url}{path}", ssl=context, headers=basic("alice", "s3cret")
            )
            assert ok.status == 200, path
        reload = await session.post(
            f"{tls_server.url}/-/reload", ssl=context, headers=basic("alice", "nope")
        )
        assert reload.status == 401


@pytest.mark.parametrize(
    "header",
    [
        "Basic",
        "Basic !!!notbase64",
        "Bearer abc",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
        "",
    ],
)
async def test_malformed_authorization_is_401(
    tls_server: Server, tls_material: SelfSigned, header: str
) -> None:
    async with aiohttp.ClientSession() as session:
        response = await session.get(
            f"{tls_server.url}/sd/web",
            ssl=client_ssl(tls_material),
            headers={"Authorization": header},
        )
        assert response.status == 401


async def test_plain_http_to_the_tls_port_fails(tls_server: Server) -> None:
    url = tls_server.url.replace("https://", "http://")
    async with aiohttp.ClientSession() as session:
        try:
            response = await session.get(f"{url}/sd/web")
        except aiohttp.ClientError:
            return  # the TLS server hung up on plain HTTP
        assert response.status == 400


@pytest.fixture
def bcrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The passwords bcrypt has checked (the real check still runs)."""
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(password)
        return real(password, hashed)

    monkeypatch.setattr(auth.bcrypt, "checkpw", counting)
    return calls


async def test_successful_checks_are_cached_failures_are_not(bcrypt_calls: list[bytes]) -> None:
    calls = bcrypt_calls
    checker = auth.CredentialChecker({"alice": bcrypt_hash("pw").encode()})
    assert await checker.check("alice", "pw")
    assert await checker.check("alice", "pw")
    assert len(calls) == 1
    assert not await checker.check("alice", "bad")
    assert not await checker.check("alice", "bad")
    assert len(calls) == 3
    assert not await checker.check("nobody", "pw")  # still costs a bcrypt check
    assert len(calls) == 4


def test_parse_basic_keeps_colons_in_passwords() -> None:
    assert parse_basic(basic("u", "a:b:c")["Authorization"]) == ("u", "a:b:c")
    assert parse_basic("basic " + base64.b64encode(b":").decode()) == ("", "")


async def test_route_hooks_can_exempt_their_own_routes_from_basic_auth(
    tmp_path: Path, daemon: Daemon
) -> None:
    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="self-authenticated\n")

    def hook(app: web.Application) -> None:
        app.router.add_post("/api/v1/hooked", hello, name="hooked")
        app[AUTH_EXEMPT_KEY].append(lambda request: request.match_info.route.name == "hooked")

    config = write_web_config(tmp_path / "web.yml", users={"alice": "pw"})
    server = await start_server(daemon, "127.0.0.1:0", config, route_hooks=[hook])
    try:
        async with aiohttp.ClientSession() as session:
            assert (await session.post(f"{server.url}/api/v1/hooked")).status == 200
            assert (
                await session.get(f"{server.url}/api/v1/hooked")
            ).status == 401  # 405 needs auth
            assert (await session.get(f"{server.url}/sd/web")).status == 401
    finally:
        await server.close()


async def test_extra_headers_from_http_server_config(tmp_path: Path, daemon: Daemon) -> None:
    config = tmp_path / "web.yml"
    config.write_text("http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    server = await start_server(daemon, "127.0.0.1:0", config)
    try:
        async with aiohttp.ClientSession() as session:
            response = await session.get(f"{server.url}/")
            assert response.status == 200
            assert response.headers["X-Frame-Options"] == "deny"
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("basic_auth_users: [\n", "invalid YAML: line"),
        ("- a\n- b\n", "must be a mapping"),
        ("basic_auth_user:\n  alice: x\n", "basic_auth_user: unknown key"),
        ("basic_auth_users:\n  alice: plaintext\n", "user 'alice' is not a bcrypt hash"),
        ("tls_server_config:\n  cert_file: a.crt\n", "cert_file and key_file are both required"),
        (
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n",
            "not found",
        ),
        (
            "tls_server_config:\n  cert_file: {cert}\n  key_file: {cert}\n",
            "cannot load cert_file",
        ),
        (
            "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
            "  client_auth_type: RequireAndVerifyClientCert\n",
            "needs client_ca_file",
        ),
        (
            "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n  min_version: TLS9\n",
            "tls_server_config.min_version",
        ),
        ("tls_server_config:\n  certfile: x\n", "tls_server_config.certfile: unknown key"),
    ],
)
def test_malformed_web_config_is_refused_with_the_key_named(
    tmp_path: Path, tls_material: SelfSigned, content: str, expected: str
) -> None:
    path = tmp_path / "web.yml"
    path.write_text(content.format(cert=tls_material.cert, key=tls_material.key))
    with pytest.raises(ConfigError) as info:
        load_web_config(path)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_missing_web_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="web config file not found"):
        load_web_config(tmp_path / "absent.yml")


def test_relative_paths_resolve_against_the_web_config(
    tmp_path: Path, tls_material: SelfSigned
) -> None:
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "s.crt").write_bytes(tls_material.cert.read_bytes())
    (tmp_path / "tls" / "s.key").write_bytes(tls_material.key.read_bytes())
    path = tmp_path / "web.yml"
    path.write_text("tls_server_config:\n  cert_file: tls/s.crt\n  key_file: tls/s.key\n")
    assert load_web_config(path).ssl_context is not None


def test_sdbridge_run_refuses_a_malformed_web_config_at_start(tmp_path: Path) -> None:
    config = tmp_path / "sdbridge.yml"
    config.write_text("jobs:\n  - name: a\n    exec_sd_configs:\n      - command: [echo, '[]']\n")
    web_config = tmp_path / "web.yml"
    web_config.write_text("basic_auth_users:\n  alice: not-a-hash\n")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from sdbridge.cli import main; sys.exit(main())",
            "run",
            f"--config.file={config}",
            f"--web.config.file={web_config}",
            "--web.listen-address=127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert f"{web_config}: basic_auth_users" in result.stderr
    assert "not a bcrypt hash" in result.stderr


async def test_web_config_is_reread_on_config_reload(
    tmp_path: Path, daemon: Daemon, tls_material: SelfSigned
) -> None:
    rotated = self_signed(tmp_path, "rotated")
    path = write_web_config(tmp_path / "web.yml", tls=tls_material, users={"alice": "old"})
    daemon._loader = lambda: daemon.config  # the jobs' config stays the same
    server = await start_server(daemon, "127.0.0.1:0", path)
    try:
        async with aiohttp.ClientSession() as session:

            async def status(ca: SelfSigned, password: str) -> int:
                response = await session.get(
                    f"{server.url}/sd/web",
                    ssl=client_ssl(ca),
                    headers={**basic("alice", password), "Connection": "close"},
                )
                return response.status

            assert await status(tls_material, "old") == 200

            # New certificate and password: applied by the next config reload.
            write_web_config(path, tls=rotated, users={"alice": "new"})
            await daemon.reload()
            assert await status(rotated, "new") == 200
            assert await status(rotated, "old") == 401
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await status(tls_material, "new")

            # An invalid web config fails the reload (counted); the running one stays.
            path.write_text("basic_auth_users:\n  alice: plaintext\n")
            with pytest.raises(ConfigError, match="not a bcrypt hash"):
                server.reload_web_config()
            with pytest.raises(ConfigError, match="web config reload failed"):
                await daemon.reload()
            assert REGISTRY.get_sample_value("sdbridge_config_last_reload_successful") == 0
            assert "not a bcrypt hash" in (daemon.last_reload_error or "")
            assert await status(rotated, "new") == 200

            # TLS cannot be switched off without a restart.
            write_web_config(path, users={"alice": "new"})
            with pytest.raises(ConfigError, match="needs a restart"):
                server.reload_web_config()
            assert await status(rotated, "new") == 200
    finally:
        await server.close()


def test_failure_budget_refills_per_address() -> None:
    now = [0.0]
    budget = auth.FailureBudget(burst=3, rate=0.5, clock=lambda: now[0])
    for _ in range(3):
        assert budget.allows("127.0.0.2")
        budget.spend("127.0.0.2")
    assert not budget.allows("127.0.0.2")
    assert budget.allows("127.0.0.3")  # another address has its own budget
    now[0] = 2.0  # one failure regained every 2 s
    assert budget.allows("127.0.0.2")
    budget.spend("127.0.0.2")
    assert not budget.allows("127.0.0.2")


async def test_a_wrong_password_flood_is_limited_per_address_and_counted(
    tmp_path: Path, daemon: Daemon, bcrypt_calls: list[bytes]
) -> None:
    calls = bcrypt_calls
    config = write_web_config(tmp_path / "web.yml", users={"alice": "pw"})
    server = await start_server(daemon, "127.0.0.1:0", config)
    server.runner.app[AUTH_KEY].refusal_delay = 0  # held back 1 s in production
    failures = auth.metrics.WEB_AUTH_FAILURES._value.get()
    try:
        async with aiohttp.ClientSession() as session:
            statuses = []
            for _ in range(auth.FAILURE_BURST + 5):
                async with session.get(f"{server.url}/-/ready", headers=basic("alice", "no")) as r:
                    statuses.append(r.status)
            assert statuses == [401] * auth.FAILURE_BURST + [429] * 5
            assert len(calls) == auth.FAILURE_BURST  # refused ones cost no bcrypt
            async with session.get(f"{server.url}/-/healthy", headers=basic("alice", "pw")) as r:
                # The limit is on checks; a good password is still checked (here, the
                # first time) only while the address has budget, so this one is refused.
                assert r.status == 429
        assert auth.metrics.WEB_AUTH_FAILURES._value.get() - failures == len(statuses) + 1
    finally:
        await server.close()


async def test_checks_beyond_the_waiting_limit_are_refused_at_once(
    tmp_path: Path, daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    release = threading.Event()

    def stuck(password: bytes, hashed: bytes) -> bool:
        release.wait(10)
        return False

    monkeypatch.setattr(auth.bcrypt, "checkpw", stuck)
    config = write_web_config(tmp_path / "web.yml", users={"alice": "pw"})
    server = await start_server(daemon, "127.0.0.1:0", config)
    try:
        async with aiohttp.ClientSession() as session:

            async def attempt() -> int:
                async with session.get(f"{server.url}/-/ready", headers=basic("a", "b")) as r:
                    return r.status

            waiting = [asyncio.create_task(attempt()) for _ in range(auth.MAX_WAITING)]
            checker = server.runner.app[AUTH_KEY]
            checker.refusal_delay = 0
            await eventually(lambda: checker.busy, "every check queued")
            assert [await attempt() for _ in range(3)] == [429] * 3  # no queueing
            release.set()
            assert await asyncio.gather(*waiting) == [401] * auth.MAX_WAITING
    finally:
        release.set()
        await server.close()


async def test_gzip_and_shards_run_off_the_default_pool(daemon: Daemon) -> None:
    import threading

    from sdbridge.web import sd
    from tests.unit.test_web_sd import snapshot_of

    seen: list[str] = []
    real = sd.split_shards

    def recording(*args: object) -> object:
        seen.append(threading.current_thread().name)
        return real(*args)  # type: ignore[arg-type]

    cache = sd.SDCache()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sd, "split_shards", recording)
            entry = cache.get("j", snapshot_of("j", targets(20)))
            await entry.shard(0, 2)
            await entry.gzipped(entry.whole)
        assert seen
        assert all(name.startswith("sdbridge-sd") for name in seen)
    finally:
        cache.close()
