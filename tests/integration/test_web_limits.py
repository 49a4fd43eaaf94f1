"""Idle connections cannot take ``sdbridge run`` down (issue 12, finding 1).

The daemon runs as a child process with the common open-file limit (1024, set with
``resource.setrlimit`` before it starts) and short timeouts from its flags. 1,100
connections that send nothing must all be closed by the server, after which
``/-/healthy`` answers, and the log must not fill with accept() tracebacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
from pathlib import Path

from tests.servers.common import ManagedProcess, free_port, http_ok, wait_until

SDBRIDGE = str(Path(sys.executable).parent / "sdbridge")
IDLE_CONNECTIONS = 1100
FD_LIMIT = 1024


def _limited(argv: list[str]) -> list[str]:
    # exec sdbridge under RLIMIT_NOFILE=1024, as `ulimit -n 1024` would.
    script = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({FD_LIMIT}, {FD_LIMIT})); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", script, *argv]


async def _open_idle(
    port: int, count: int
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    return [await asyncio.open_connection("127.0.0.1", port) for _ in range(count)]


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await reader.read(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def test_idle_connections_are_closed_and_health_answers(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # This test process itself holds the 1,100 client sockets.
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    bridge = ManagedProcess(
        _limited(
            [
                SDBRIDGE,
                "run",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.read-header-timeout=2s",
                "--web.max-connections=512",
            ]
        ),
        log_path=tmp_path / "sdbridge.log",
        cwd=tmp_path,
    )
    try:
        wait_until(lambda: http_ok(f"{url}/-/healthy"), timeout=30, what="sdbridge healthy")
        log_before = bridge.log_path.stat().st_size

        async def flood() -> list[bool]:
            connections = await _open_idle(port, IDLE_CONNECTIONS)
            try:
                # Bounded only so that a regression fails instead of hanging the suite.
                async with asyncio.timeout(120):
                    return await asyncio.gather(*(_closed_by_server(r) for r, _ in connections))
            finally:
                for _, writer in connections:
                    writer.close()

        closed = asyncio.run(flood())
        assert closed.count(True) == IDLE_CONNECTIONS
        assert bridge.alive()
        assert http_ok(f"{url}/-/healthy")
        grown = bridge.log_path.stat().st_size - log_before
        assert grown < 100 * 1024, bridge.log_text()[-3000:]
        metrics = _metrics(url)
        refused = metrics.get("sdbridge_web_connections_refused_total", 0.0)
        timed_out = metrics.get("sdbridge_web_connections_timed_out_total", 0.0)
        # Every idle connection was either refused over the limit or timed out.
        assert refused + timed_out >= IDLE_CONNECTIONS
        assert timed_out >= 1
    finally:
        bridge.stop()
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _metrics(url: str) -> dict[str, float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
