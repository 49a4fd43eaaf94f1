"""Connection limits, the header deadline and rate-limited logging (web/limits.py)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest

from sdbridge.config import parse_config
from sdbridge.daemon import Daemon
from sdbridge.web.flags import WebFlags
from sdbridge.web.limits import AcceptErrorLog, ConnectionLimits, RateLimitedLog
from sdbridge.web.server import start_server


def test_rate_limited_log_says_how_many_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("t"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="t"):
        results = []
        for step in range(25):
            now[0] = step  # one event per second
            results.append(limited.log(logging.ERROR, "boom %s", "x"))
    assert results.count(True) == 3  # at 0, 10 and 20 seconds
    assert [r.getMessage() for r in caplog.records] == [
        "boom x",
        "boom x (10 time(s) in the last 10s)",
        "boom x (10 time(s) in the last 10s)",
    ]


async def test_accept_errors_are_one_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    seen: list[str] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context["message"]))
    handler = AcceptErrorLog(loop)
    handler.install()
    try:
        with caplog.at_level(logging.INFO, logger="sdbridge.web"):
            error = OSError(24, "Too many open files")
            for _ in range(1000):
                loop.call_exception_handler(
                    {"message": "socket.accept() out of system resource", "exception": error}
                )
            loop.call_exception_handler({"message": "something else"})
    finally:
        loop.set_exception_handler(previous)
    assert len(caplog.records) == 1
    assert "Too many open files" in caplog.records[0].getMessage()
    assert caplog.records[0].exc_info is None  # no traceback
    assert seen == ["something else"]  # everything else reaches the handler it replaced


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await reader.read(1) == b""
    except ConnectionResetError:
        return True


def _daemon(tmp_path: Path) -> Daemon:
    return Daemon(parse_config({"global": {"data_dir": str(tmp_path)}, "jobs": []}))


async def test_silent_and_surplus_connections_are_closed(tmp_path: Path) -> None:
    limits = ConnectionLimits(read_header_timeout=0.3, max_connections=2)
    server = await start_server(_daemon(tmp_path), "127.0.0.1:0", flags=WebFlags(limits=limits))
    writers = []
    try:
        silent = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
        surplus_reader, surplus = await asyncio.open_connection("127.0.0.1", server.port)
        writers = [w for _, w in silent] + [surplus]
        async with asyncio.timeout(10):  # a hang guard, not a timing assert
            assert await _closed_by_server(surplus_reader)  # over the limit: at once
            for reader, _ in silent:  # once the header deadline passed
                assert await _closed_by_server(reader)
        assert server.guard is not None
        assert server.guard.open == 0
        # A client that sends its request in time is served.
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{server.url}/-/healthy") as response,
        ):
            assert response.status == 200
    finally:
        for writer in writers:
            writer.close()
        await server.close()


# --- log lines clients cause (issue 12, finding 7) -----------------------------------------


async def _raw(port: int, data: bytes, *, read: bool) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await reader.read(200) if read else b""
    writer.close()
    return answer


async def test_client_mistakes_log_one_line_without_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from sdbridge.web.registry_api import registry_routes
    from tests.unit.test_registry_api import make_daemon

    daemon = make_daemon(tmp_path)
    server = await start_server(daemon, "127.0.0.1:0", route_hooks=[registry_routes(daemon)])
    partial = (
        b"PUT /api/v1/registry/web/a HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b'Content-Length: 1000\r\n\r\n{"address'
    )
    long_line = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    try:
        with caplog.at_level(logging.DEBUG):
            for _ in range(30):
                await _raw(server.port, partial, read=False)  # hangs up mid-body
                answer = await _raw(server.port, long_line, read=True)
                assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400"))
            await asyncio.sleep(0.2)  # let the server notice the last hang-up
        noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(noisy) <= 2, [r.getMessage()[:200] for r in noisy]
        assert all(r.exc_info is None for r in caplog.records)
        assert all(len(r.getMessage()) < 1024 for r in caplog.records)
    finally:
        await server.close()
        await daemon.stop()


async def test_a_missing_token_file_is_one_error_not_one_per_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from sdbridge.web.app import create_app
    from sdbridge.web.registry_api import registry_routes
    from tests.unit.test_registry_api import TOKEN, make_daemon

    (tmp_path / "token").write_text(TOKEN)
    daemon = make_daemon(tmp_path, {"write_token_file": "token"})
    app = create_app(daemon, route_hooks=[registry_routes(daemon)])
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    body = b'{"address": "127.0.0.1:80"}'
    async with TestClient(TestServer(app)) as client:
        (tmp_path / "token").unlink()
        with caplog.at_level(logging.INFO, logger="sdbridge.registry"):
            for n in range(20):
                response = await client.put(f"/api/v1/registry/web/i{n}", data=body, headers=bearer)
                assert response.status == 503
            (tmp_path / "token").write_text(TOKEN)
            response = await client.put("/api/v1/registry/web/ok", data=body, headers=bearer)
            assert response.status == 201
    await daemon.stop()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "token" in errors[0].getMessage()
    assert any("readable again" in r.getMessage() for r in caplog.records)


def test_web_flags_parse_as_prometheus_spells_them() -> None:
    import argparse

    from sdbridge.web import flags

    parser = argparse.ArgumentParser(exit_on_error=False)
    flags.add_flags(parser)
    default = flags.from_args(parser.parse_args([]))
    assert default.limits == ConnectionLimits(300.0, 10.0, 512)
    assert not default.enable_lifecycle
    given = flags.from_args(
        parser.parse_args(
            [
                "--web.read-timeout=0",
                "--web.read-header-timeout=2s",
                "--web.max-connections=10",
                "--web.enable-lifecycle",
                "--web.external-url=https://SD.example.org:8443/sdbridge",
            ]
        )
    )
    assert given.limits == ConnectionLimits(0.0, 2.0, 10)
    assert given.limits.header_deadline == 2.0
    assert given.enable_lifecycle
    assert given.external_hosts == frozenset({"sd.example.org"})
    for bad in ("--web.max-connections=-1", "--web.read-timeout=soon", "--web.external-url=x"):
        with pytest.raises((argparse.ArgumentError, SystemExit)):
            parser.parse_args([bad])


async def test_read_timeout_closes_idle_keepalive_and_slow_bodies(tmp_path: Path) -> None:
    from sdbridge.web.registry_api import registry_routes
    from tests.unit.test_registry_api import make_daemon

    daemon = make_daemon(tmp_path)
    limits = ConnectionLimits(read_timeout=0.3, read_header_timeout=5.0)
    server = await start_server(
        daemon, "127.0.0.1:0", route_hooks=[registry_routes(daemon)], flags=WebFlags(limits=limits)
    )
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        async with asyncio.timeout(10):  # a hang guard, not a timing assert
            answer = await reader.readuntil(b"Healthy.\n")
            assert answer.startswith(b"HTTP/1.1 200")
            assert await _closed_by_server(reader)  # idle keep-alive, closed
        writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"PUT /api/v1/registry/web/a HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b'Content-Length: 100\r\n\r\n{"address"'
        )
        async with asyncio.timeout(10):
            assert (await reader.readline()).startswith(b"HTTP/1.1 408")
        writer.close()
    finally:
        await server.close()
        await daemon.stop()
