"""start_server: listen addresses, a busy port, oversized requests."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import aiohttp
import pytest

from sdbridge.errors import ConfigError
from sdbridge.web.server import parse_listen_address, start_server
from tests.unit.test_web_sd import make_daemon, targets


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:9099", ("127.0.0.1", 9099)),
        ("[::1]:9099", ("::1", 9099)),
        (":9099", ("0.0.0.0", 9099)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_listen_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(address) == expected


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.1:http", "127.0.0.1:99999", "", ":"])
def test_bad_listen_address(address: str) -> None:
    with pytest.raises(ConfigError, match="must be host:port"):
        parse_listen_address(address)


async def test_busy_port_is_a_clear_error() -> None:
    daemon = make_daemon({"a": targets(1)})
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            await start_server(daemon, f"127.0.0.1:{port}")


async def test_serves_on_a_free_port_and_closes() -> None:
    server = await start_server(make_daemon({"a": targets(1)}), "127.0.0.1:0")
    try:
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as session:
            assert (await session.get(f"{server.url}/sd/a")).status == 200
            assert (await session.post(f"{server.url}/sd/a")).status == 405
    finally:
        await server.close()


async def test_oversized_headers_are_refused_and_the_server_keeps_serving() -> None:
    server = await start_server(make_daemon({"a": targets(1)}), "127.0.0.1:0")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"GET /sd/a HTTP/1.1\r\nHost: x\r\nX-Big: "
            + b"a" * 100_000
            + b"\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        status_line = await reader.readline()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        assert status_line.split(b" ")[1] in (b"400", b"431")
        async with aiohttp.ClientSession() as session:
            assert (await session.get(f"{server.url}/sd/a")).status == 200
    finally:
        await server.close()
