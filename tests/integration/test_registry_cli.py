"""``sdbridge run`` with no config (the README's first command), ``sdbridge register``,
and registrations surviving a restart with their TTLs still counting.

Each test runs the real ``sdbridge`` console script as a child process in a fresh
temporary directory; processes are killed with their process group afterwards.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.servers.common import ManagedProcess, free_port, http_ok, require_binary, wait_until

REPO = Path(__file__).resolve().parents[2]
SDBRIDGE = str(Path(sys.executable).parent / "sdbridge")
README_FIRST_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/sdbridge run"
)


class DefaultBridge:
    """``sdbridge run`` without a config file, in ``workdir``, on a free loopback port."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.address}"
        self.process = ManagedProcess(
            [SDBRIDGE, "run", f"--web.listen-address={self.address}", *extra],
            log_path=workdir / f"sdbridge-{self.port}.log",
            cwd=workdir,
        )
        wait_until(self.ready, timeout=30, what=f"sdbridge ready ({self.process.log_path})")

    def ready(self) -> bool:
        if not self.process.alive():
            raise AssertionError(f"sdbridge exited:\n{self.process.log_text()[-3000:]}")
        return http_ok(f"{self.url}/-/ready")

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.url}/api/v1/registry{path}", data=data, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status), json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    def file_targets(self) -> list[str]:
        return targets_in(self.workdir / "targets" / "registry.json")

    def stop(self) -> None:
        self.process.stop()


def targets_in(path: Path) -> list[str]:
    """The addresses in a file_sd file (empty while it does not exist)."""
    try:
        groups = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    return sorted(t for g in groups for t in g["targets"])


def test_readme_first_command_is_the_zero_config_start() -> None:
    readme = (REPO / "README.md").read_text()
    commands = [
        line.strip()
        for line in readme.split("```sh", 1)[1].split("```", 1)[0].splitlines()
        if line.strip()
    ]
    assert commands == [README_FIRST_COMMAND]


def copy_repo(destination: Path) -> None:
    """A fresh copy of the repository's tracked files, as a newcomer's clone."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = REPO / name.decode()
        if source.is_file():
            target = destination / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


@pytest.mark.slow
def test_readme_command_in_a_fresh_copy_shows_a_target_within_seconds(tmp_path: Path) -> None:
    """The README's ``.venv/bin/sdbridge run``, exactly, from a fresh copy of the repository.

    The venv steps of the command are what ``scripts/bootstrap`` already did, so the copy
    links to that venv. The command binds its default port 9099; it runs in its own network
    namespace (with only loopback) so that port can never clash with anything else here.
    """
    clone = tmp_path / "sdbridge"
    copy_repo(clone)
    (clone / ".venv").symlink_to(Path(sys.executable).parent.parent)
    run_part = README_FIRST_COMMAND.rsplit("&& ", 1)[1]
    assert run_part == ".venv/bin/sdbridge run"
    unshare = require_binary("unshare")
    ip = require_binary("ip")
    process = ManagedProcess(
        # A user namespace too, so this needs no root where unprivileged namespaces are allowed.
        [
            unshare,
            "--user",
            "--map-root-user",
            "--net",
            "sh",
            "-c",
            f"{ip} link set lo up && exec {run_part}",
        ],
        log_path=tmp_path / "sdbridge.log",
        cwd=clone,
    )
    try:
        wait_until(
            lambda: targets_in(clone / "targets" / "registry.json") == ["127.0.0.1:9099"],
            timeout=30,
            what=f"sdbridge's own target in ./targets/registry.json ({process.log_path})",
        )
        output = process.log_text()
        assert str(clone / "targets" / "registry.json") in output
        assert "file_sd_configs:" in output
        assert "url: 'http://127.0.0.1:9099/sd/registry'" in output
        # Copy-paste correct: the executable as it was run, no --url for the default port.
        assert "\n  .venv/bin/sdbridge register myapp 127.0.0.1:8080 --label env=dev\n" in output
        assert "target_label: service" in output
    finally:
        process.stop()
    assert (clone / "data" / "registry.db").exists()


def test_register_heartbeats_then_deregisters(tmp_path: Path) -> None:
    bridge = DefaultBridge(tmp_path)
    client = None
    try:
        wait_until(lambda: bridge.file_targets() == [bridge.address], what="self-registration")
        client = ManagedProcess(
            [
                SDBRIDGE,
                "register",
                "web",
                "127.0.0.3:9100",
                "--label",
                "env=dev",
                "--ttl",
                "2s",
                f"--url={bridge.url}",
            ],
            log_path=tmp_path / "register.log",
        )
        wait_until(
            lambda: bridge.file_targets() == sorted([bridge.address, "127.0.0.3:9100"]),
            timeout=15,
            what="the registered target in the file",
        )
        status, body = bridge.api("GET", "/web/127.0.0.3:9100")
        assert status == 200
        assert body["data"]["labels"] == {"env": "dev"}
        # Several ttls later it is still there: the client heartbeats.
        registered_at = body["data"]["registered_at"]
        time.sleep(4.5)
        status, body = bridge.api("GET", "/web/127.0.0.3:9100")
        assert status == 200
        assert body["data"]["registered_at"] == registered_at
        assert body["data"]["expires_in"] > 0

        client.signal(signal.SIGINT)
        assert client.proc.wait(15) == 0
        wait_until(
            lambda: bridge.file_targets() == [bridge.address],
            timeout=15,
            what="the deregistered target gone from the file",
        )
        assert "deregistered web/127.0.0.3:9100" in client.log_text()
    finally:
        if client is not None:
            client.stop()
        bridge.stop()


def test_register_refused_exits_2_with_the_reason(tmp_path: Path) -> None:
    bridge = DefaultBridge(tmp_path)

    def register(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SDBRIDGE, "register", "web", "127.0.0.3:9100", *args, f"--url={bridge.url}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    try:
        result = register("--label", "bad-name=x")
        assert result.returncode == 2
        assert "invalid label name 'bad-name'" in result.stderr
        # Durations come back as the user wrote them, not as 0.1 seconds.
        result = register("--ttl", "100ms")
        assert result.returncode == 2
        assert "ttl '100ms' is out of bounds: it must lie between 1s and 1d" in result.stderr
        # The banner's register line carries --url, since the port is not the default.
        banner_line = (
            f"  {SDBRIDGE} register myapp 127.0.0.1:8080 --label env=dev --url {bridge.url}"
        )
        assert banner_line in bridge.process.log_text().splitlines()
    finally:
        bridge.stop()


def test_registrations_survive_a_restart_and_ttls_keep_counting(tmp_path: Path) -> None:
    bridge = DefaultBridge(tmp_path)
    try:
        status, long = bridge.api("PUT", "/web/long", {"address": "127.0.0.2:9100", "ttl": "1h"})
        assert status == 201
        status, _ = bridge.api("PUT", "/web/short", {"address": "127.0.0.3:9100", "ttl": "3s"})
        assert status == 201
        wait_until(
            lambda: "127.0.0.3:9100" in bridge.file_targets(), what="both registrations published"
        )
    finally:
        bridge.stop()
    stopped_at = time.time()

    # The short ttl runs out while sdbridge is down.
    time.sleep(max(0.0, 3.5 - (time.time() - stopped_at)))
    bridge = DefaultBridge(tmp_path)
    try:

        def instances() -> dict[str, Any]:
            status, body = bridge.api("GET", "")
            assert status == 200
            return {i["instance"]: i for i in body["data"]["instances"]}

        # sdbridge registers itself just after it starts serving: wait for that, not a race.
        wait_until(lambda: bridge.address in instances(), what="sdbridge's own registration")
        assert set(instances()) == {"long", bridge.address}
        # The expiry is the one set before the restart, not reset by it.
        assert instances()["long"]["expires_at"] == long["data"]["expires_at"]
        wait_until(
            lambda: bridge.file_targets() == sorted(["127.0.0.2:9100", bridge.address]),
            what="the surviving registration published after the restart",
        )
    finally:
        bridge.stop()


def test_register_with_a_token_file(tmp_path: Path) -> None:
    (tmp_path / "registry.token").write_text("t0ken-for-tests\n")
    (tmp_path / "sdbridge.yml").write_text(
        "registry:\n"
        "  write_token_file: registry.token\n"
        "jobs:\n"
        "  - name: registry\n"
        "    registry_sd_configs: [{}]\n"
        "    guard: {enabled: false}\n"
        "    output: {file: targets/registry.json}\n"
    )
    bridge = DefaultBridge(tmp_path, f"--config.file={tmp_path / 'sdbridge.yml'}")
    client = None
    try:
        base = [SDBRIDGE, "register", "batch", "127.0.0.4:9100", f"--url={bridge.url}"]
        refused = subprocess.run(base, capture_output=True, text=True, timeout=30, check=False)
        assert refused.returncode == 2
        assert "(401)" in refused.stderr

        client = ManagedProcess(
            [*base, "--instance", "nightly", f"--token-file={tmp_path / 'registry.token'}"],
            log_path=tmp_path / "register.log",
        )
        wait_until(
            lambda: bridge.file_targets() == ["127.0.0.4:9100"],
            timeout=15,
            what="the token-authorised registration in the file",
        )
        assert bridge.api("GET", "/batch/nightly")[0] == 200
        client.signal(signal.SIGTERM)
        assert client.proc.wait(15) == 0
        wait_until(lambda: bridge.file_targets() == [], timeout=15, what="deregistration")
    finally:
        if client is not None:
            client.stop()
        bridge.stop()
