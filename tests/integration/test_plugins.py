"""Third-party mechanisms through the ``sdbridge.discoverers`` entry-point group.

The plugins under tests/plugins are installed with pip into a temporary directory and
put on PYTHONPATH of an ``sdbridge`` subprocess: a working one (the inventory example of
docs/writing-a-mechanism.md) and one that fails to import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

PLUGINS = Path(__file__).parent.parent / "plugins"
SDBRIDGE = str(Path(sys.executable).with_name("sdbridge"))

HOSTS = [
    {
        "hostname": "web-1",
        "address": "127.0.0.1",
        "port": 9100,
        "datacenter": "dc1",
        "tags": ["web", "prod"],
        "metadata": {"rack": "r1", "owner-team": "sre"},
    },
    {"hostname": "db-1", "address": "127.0.0.2", "port": 9187, "tags": []},
    {"hostname": "v6", "address": "::1", "port": 9100},  # bracketed by join_host_port
    {"hostname": "bad", "address": "127.0.0.3"},  # no port: skipped, reported
    {"hostname": "bad-port", "address": "127.0.0.3", "port": "http"},  # ValueError: skipped too
]


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site-packages")
    build = tmp_path_factory.mktemp("build")
    # Copies, so setuptools' build files never land in the source tree.
    sources = []
    for name in ("sdbridge-inventory", "sdbridge-broken"):
        copy = build / name
        copy.mkdir()
        for item in (PLUGINS / name).iterdir():
            if item.is_file():
                (copy / item.name).write_bytes(item.read_bytes())
        sources.append(str(copy))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            *sources,
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


@pytest.fixture(scope="module")
def inventory_url() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(HOSTS).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hosts"
    finally:
        server.shutdown()
        server.server_close()


def run(plugin_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(plugin_path)}
    return subprocess.run(
        [SDBRIDGE, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_a_plugin_mechanism_is_configured_like_a_builtin(
    plugin_path: Path, inventory_url: str, tmp_path: Path
) -> None:
    (tmp_path / "list.sh").write_text('#!/bin/sh\necho \'[{"targets": ["127.0.0.9:1"]}]\'\n')
    (tmp_path / "list.sh").chmod(0o755)
    config = tmp_path / "sdbridge.yml"
    config.write_text(
        f"""\
global: {{publish_delay: {{min: 0s, max: 0s}}}}
jobs:
  - name: inventory
    inventory_sd_configs:
      - url: {inventory_url}
        refresh_interval: 1m
    output: {{file: inventory.json}}
  - name: script
    exec_sd_configs: [{{command: [./list.sh]}}]
    output: {{file: script.json}}
"""
    )
    check = run(plugin_path, "check", str(config))
    assert check.returncode == 0, check.stderr
    result = run(plugin_path, "once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "inventory.json").read_text()) == [
        {
            "labels": {
                "__meta_inventory_datacenter": "dc1",
                "__meta_inventory_hostname": "web-1",
                "__meta_inventory_metadata_owner_team": "sre",
                "__meta_inventory_metadata_rack": "r1",
                "__meta_inventory_tags": ",web,prod,",
            },
            "targets": ["127.0.0.1:9100"],
        },
        {
            "labels": {"__meta_inventory_hostname": "db-1", "__meta_inventory_tags": ",,"},
            "targets": ["127.0.0.2:9187"],
        },
        {
            "labels": {"__meta_inventory_hostname": "v6", "__meta_inventory_tags": ",,"},
            "targets": ["[::1]:9100"],
        },
    ]
    assert json.loads((tmp_path / "script.json").read_text()) == [
        {"labels": {}, "targets": ["127.0.0.9:1"]}
    ]
    # The bad record was reported, not fatal.
    assert "skipping invalid backend object host {'hostname': 'bad'," in result.stderr
    assert "skipping invalid backend object host {'hostname': 'bad-port'," in result.stderr
    # The broken plugin was logged and skipped; the other jobs ran.
    assert "skipping discovery plugin 'sdbridge_broken' that failed to load" in result.stderr
    assert "sdbridge_broken is broken on purpose" in result.stderr


def test_without_the_plugin_its_key_is_an_unknown_mechanism(tmp_path: Path) -> None:
    config = tmp_path / "sdbridge.yml"
    config.write_text(
        "jobs:\n  - name: i\n    inventory_sd_configs: [{url: 'http://127.0.0.1:1/'}]\n"
    )
    result = subprocess.run(
        [SDBRIDGE, "check", str(config)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert "jobs[0].inventory_sd_configs: unknown mechanism" in result.stderr
    assert "is its plugin installed?" in result.stderr


def test_a_failing_plugin_backend_fails_only_its_job(plugin_path: Path, tmp_path: Path) -> None:
    (tmp_path / "list.sh").write_text("#!/bin/sh\necho '[]'\n")
    (tmp_path / "list.sh").chmod(0o755)
    config = tmp_path / "sdbridge.yml"
    config.write_text(
        """\
jobs:
  - name: inventory
    inventory_sd_configs: [{url: "http://127.0.0.1:1/hosts"}]
  - name: script
    exec_sd_configs: [{command: [./list.sh]}]
    output: {file: script.json}
"""
    )
    result = run(plugin_path, "once", "--config", str(config))
    assert result.returncode == 1
    assert (
        "job 'inventory': inventory_sd_configs[0]: inventory http://127.0.0.1:1/hosts"
        in result.stderr
    )
    assert (tmp_path / "script.json").read_text() == "[]"
