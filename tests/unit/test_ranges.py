"""Hostile numbers and sizes: every one is a clean error naming the path and the range.

Issue 12 items 4 and 8: a 400-digit ``refresh_interval``, ``default_ttl`` or
``file_mode`` crashed ``check`` with a traceback and a reload with a 500 that left
``sdbridge_config_last_reload_successful`` at 1; a registry PUT with a 400-digit ttl
answered 500; a 50 MB config was parsed for 100 s.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from sdbridge.cli import main
from sdbridge.config import load_config, parse_size
from sdbridge.daemon import Daemon
from sdbridge.errors import ConfigError
from sdbridge.web.app import create_app
from sdbridge.web.registry_api import registry_routes
from sdbridge.web.server import parse_listen_address
from sdbridge.web.webconfig import load_web_config
from tests.unit.test_registry_api import URL, make_daemon

HUGE = "1" + "0" * 400
LONGER_THAN_PYTHON_CONVERTS = "1" + "0" * 5000
EXEC = "exec_sd_configs: [{command: [./list.sh]}]"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sdbridge.yml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)
    return str(info.value)


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            f"jobs: [{{name: a, exec_sd_configs: [{{command: [x], refresh_interval: {HUGE}s}}]}}]",
            "jobs[0].exec_sd_configs[0].refresh_interval: duration '1000",
        ),
        (f"registry: {{default_ttl: {HUGE}s}}", "registry.default_ttl: duration '1000"),
        (
            f"jobs: [{{name: a, {EXEC}, output: {{file_mode: {HUGE}}}}}]",
            "jobs[0].output.file_mode: file_mode 1000",
        ),
        (
            f"jobs: [{{name: a, {EXEC}, output: {{file_mode: '{HUGE}'}}}}]",
            "jobs[0].output.file_mode: file_mode 1000",
        ),
        (f"jobs: [{{name: a, {EXEC}, output: {{file_mode: 17777}}}}]", "0000 to 7777"),
        (f"jobs: [{{name: a, {EXEC}, guard: {{confirmations: {HUGE}}}}}]", "less than or equal"),
        (f"jobs: [{{name: a, {EXEC}, guard: {{hold_for: {HUGE}ms}}}}]", "at most 292y"),
        (f"global: {{publish_delay: {{max: {HUGE}s}}}}", "global.publish_delay.max: duration"),
        (f"web: {{listen_address: '127.0.0.1:{HUGE}'}}", "web.listen_address: "),
        ("web: {listen_address: '127.0.0.1:99999'}", "0 to 65535"),
        (
            "jobs: [{name: z, zookeeper_sd_configs: [{servers: ['127.0.0.1:2181'], paths: [/x], "
            "layout: serverset, timeout: 25d}]}]",
            "zookeeper_sd_configs[0].timeout: timeout must be greater than 0 and at most 24d",
        ),
        (
            f"jobs: [{{name: a, {EXEC}, guard: {{confirmations: {LONGER_THAN_PYTHON_CONVERTS}}}}}]",
            "invalid YAML: line 1, column",
        ),
    ],
)
def test_huge_numbers_are_config_errors(tmp_path: Path, yaml_text: str, expected: str) -> None:
    message = error_of(write(tmp_path, yaml_text))
    assert expected in message
    assert "range" in message or "less than or equal" in message or "at most" in message
    assert len(message) < 600  # the 400 digits are not echoed back in full


@pytest.mark.parametrize("value", [HUGE, "0644" + "0" * 400])
def test_check_prints_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    path = write(
        tmp_path,
        f"""\
        registry: {{default_ttl: {HUGE}s}}
        jobs:
          - name: a
            exec_sd_configs: [{{command: [x], refresh_interval: {HUGE}s}}]
            output: {{file_mode: {value}}}
        """,
    )
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "registry.default_ttl" in err
    assert "jobs[0].exec_sd_configs[0].refresh_interval" in err
    assert "jobs[0].output.file_mode" in err


def test_the_web_config_refuses_huge_numbers(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text(f"http_server_config: {{http2: {LONGER_THAN_PYTHON_CONVERTS}}}\n")
    with pytest.raises(ConfigError, match=r"web\.yml: invalid YAML: an integer is out of range"):
        load_web_config(path)


@pytest.mark.parametrize("address", [f"127.0.0.1:{HUGE}", "127.0.0.1:65536", "127.0.0.1:\u00b2"])
def test_listen_address_port_is_range_checked(address: str) -> None:
    with pytest.raises(ConfigError, match=r"port in 0\.\.65535"):
        parse_listen_address(address)


@pytest.mark.parametrize(
    "ttl", [f"{HUGE}s", f"{HUGE}ms", "293y", 1e308, HUGE, f"{LONGER_THAN_PYTHON_CONVERTS}s"]
)
async def test_registry_refuses_huge_ttls_with_400(tmp_path: Path, ttl: object) -> None:
    daemon = make_daemon(tmp_path)
    app = create_app(daemon, route_hooks=[registry_routes(daemon)])
    body = (
        b'{"address": "127.0.0.1:80", "ttl": ' + ttl.encode() + b"}"
        if isinstance(ttl, str) and ttl.isdigit()
        else orjson.dumps({"address": "127.0.0.1:80", "ttl": ttl})
    )
    async with TestClient(TestServer(app)) as client:
        response = await client.put(f"{URL}/web/a", data=body)
        assert response.status == 400
        error = await response.json()
        assert error["field"] in ("ttl", "body")
        assert (await client.get(URL)).status == 200
        listing = await (await client.get(URL)).json()
        assert listing["data"]["instances"] == []


# --- reload failures of any kind are counted -------------------------------------------------


def _reload_successful() -> float | None:
    return REGISTRY.get_sample_value("sdbridge_config_last_reload_successful")


def _failures() -> float:
    return REGISTRY.get_sample_value("sdbridge_config_reloads_total", {"result": "failure"}) or 0


async def test_reload_with_huge_numbers_fails_cleanly_and_is_counted(tmp_path: Path) -> None:
    path = write(tmp_path, "jobs: [{name: a, exec_sd_configs: [{command: [echo, '[]']}]}]")
    daemon = Daemon(load_config(path), config_path=path)
    daemon.start()
    try:
        before = _failures()
        path.write_text(f"registry: {{default_ttl: {HUGE}s}}\n")
        with pytest.raises(ConfigError, match=r"registry\.default_ttl"):
            await daemon.reload()
        assert _reload_successful() == 0
        assert _failures() == before + 1
        assert set(daemon.jobs) == {"a"}
    finally:
        await daemon.stop()


async def test_an_unexpected_reload_failure_is_counted_too(tmp_path: Path) -> None:
    path = write(tmp_path, "jobs: [{name: a, exec_sd_configs: [{command: [echo, '[]']}]}]")

    def broken_loader() -> Any:
        raise OverflowError("int too large to convert to float")

    daemon = Daemon(load_config(path), config_path=path, config_loader=broken_loader)
    daemon.start()
    try:
        before = _failures()
        with pytest.raises(ConfigError, match="OverflowError: int too large"):
            await daemon.reload()
        assert _reload_successful() == 0
        assert _failures() == before + 1
        assert daemon.last_reload_error == "OverflowError: int too large to convert to float"
        path.write_text("jobs: [{name: b, exec_sd_configs: [{command: [echo, '[]']}]}]\n")
        daemon._loader = lambda: load_config(path)
        await daemon.reload()
        assert _reload_successful() == 1
        assert daemon.last_reload_error is None
    finally:
        await daemon.stop()


# --- config size ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("16MiB", 16 << 20),
        ("16MB", 16 << 20),
        ("512KiB", 512 << 10),
        ("100", 100),
        ("1GiB", 1 << 30),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["0", "2GiB", "16 furlongs", "-1", "1.5MiB", HUGE])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_a_config_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    path = write(tmp_path, "jobs: []\n" + "# padding\n" * 200)
    assert "larger than 1KiB (raise the limit with --config.max-size)" in error_of(
        path, max_size=1024
    )
    assert load_config(path, max_size=4096).jobs == []


def test_the_default_limit_is_16_mib(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "big.yml"
    with path.open("w") as file:
        file.write("jobs: []\n")
        file.write(("#" * 1023 + "\n") * (16 * 1024 + 1))  # just over 16 MiB of comments
    assert main(["check", str(path)]) == 1
    assert "is larger than 16MiB" in capsys.readouterr().err
    # The flag sets it (on a small file: parsing 16 MiB of YAML takes seconds).
    small = write(tmp_path, "jobs: []\n" + "# padding\n" * 200)
    assert main(["check", "--config.max-size=1KiB", str(small)]) == 1
    assert "larger than 1KiB" in capsys.readouterr().err
    assert main(["check", "--config.max-size=4KiB", str(small)]) == 0


def test_the_web_config_has_the_size_limit_too(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("basic_auth_users: {}\n" + "# padding\n" * 200)
    with pytest.raises(ConfigError, match="web config file is larger than 1KiB"):
        load_web_config(path, max_size=1024)


async def test_reload_applies_the_size_limit(tmp_path: Path) -> None:
    path = write(tmp_path, "jobs: [{name: a, exec_sd_configs: [{command: [echo, '[]']}]}]")
    daemon = Daemon(
        load_config(path), config_path=path, config_loader=lambda: load_config(path, max_size=1024)
    )
    daemon.start()
    try:
        path.write_text(path.read_text() + "# padding\n" * 200)
        with pytest.raises(ConfigError, match="larger than 1KiB"):
            await daemon.reload()
        assert _reload_successful() == 0
    finally:
        await daemon.stop()
