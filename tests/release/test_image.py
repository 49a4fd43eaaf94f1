"""The container image (root Dockerfile), built on the local Debian base with no index.

Containers run with the host's network on a free 127.0.0.1 port
(``SDBRIDGE_LISTEN_ADDRESS``); the state directory is a host directory. The image must
refuse to start, with ``sdbridge check``'s own error, when its config is missing or
invalid, and when /var/lib/sdbridge is not writable by its user.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..servers.common import free_port, http_ok, wait_until
from ..servers.dockerd import DockerEngine
from .conftest import ROOT
from .images import docker

pytestmark = pytest.mark.slow

UID = 10001  # the image's sdbridge user
TOKEN = "s3cret-write-token"


def state_dir(tmp_path: Path, *, writable: bool = True) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    if writable:
        os.chown(path, UID, UID)
    else:
        path.chmod(0o755)  # root's: the image's user cannot write
    return path


def docker_run(engine: DockerEngine, *args: str) -> subprocess.CompletedProcess[str]:
    """``docker run --rm`` in the foreground; returns the finished process."""
    return subprocess.run(
        [engine.docker, "-H", engine.host, "run", "--rm", "--network", "host", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def host_check(config: Path) -> str:
    """What ``sdbridge check`` prints on the host for ``config`` (its stderr)."""
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from sdbridge.cli import main; sys.exit(main())", "check", str(config)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    return result.stderr


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "registry.token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o644)
    return path


@pytest.fixture
def container(
    docker_engine: DockerEngine, sdbridge_image: str, tmp_path: Path, token: Path
) -> Iterator[tuple[str, str, Path]]:
    """The image running examples/docker/sdbridge.yml; yields (id, url, state dir)."""
    state = state_dir(tmp_path)
    port = free_port()
    cid = docker(
        docker_engine, "run", "-d", "--rm", "--network", "host",
        "--health-interval=1s", "--health-start-period=1s",
        "-e", f"SDBRIDGE_LISTEN_ADDRESS=127.0.0.1:{port}",
        "-v", f"{ROOT / 'examples/docker/sdbridge.yml'}:/etc/sdbridge/sdbridge.yml:ro",
        "-v", f"{token}:/etc/sdbridge/registry.token:ro",
        "-v", f"{state}:/var/lib/sdbridge",
        sdbridge_image,
    )  # fmt: skip
    try:
        yield cid, f"http://127.0.0.1:{port}", state
    finally:
        subprocess.run([docker_engine.docker, "-H", docker_engine.host, "rm", "-f", cid],
                       capture_output=True, check=False, timeout=60)  # fmt: skip


def health(engine: DockerEngine, cid: str) -> str:
    return docker(engine, "inspect", "--format", "{{.State.Health.Status}}", cid)


def test_the_image_serves_its_registry_as_a_non_root_user(
    docker_engine: DockerEngine, container: tuple[str, str, Path]
) -> None:
    cid, url, state = container
    wait_until(
        lambda: http_ok(f"{url}/-/ready"), timeout=60, what="sdbridge ready in the container"
    )
    wait_until(
        lambda: health(docker_engine, cid) == "healthy", timeout=60, what="HEALTHCHECK healthy"
    )
    assert docker(docker_engine, "exec", cid, "id", "-u") == str(UID)

    body = json.dumps({"address": "127.0.0.1:9100"}).encode()

    def put(headers: dict[str, str]) -> int:
        request = urllib.request.Request(
            f"{url}/api/v1/registry/web/web-1", data=body, method="PUT",
            headers={"Content-Type": "application/json", **headers},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    assert put({}) == 401  # the token is required
    assert put({"Authorization": f"Bearer {TOKEN}"}) in (200, 201)
    targets = state / "targets" / "registry.json"
    wait_until(lambda: "127.0.0.1:9100" in targets.read_text(), what="the target in the file")
    assert (state / "registry.db").exists()


def test_a_missing_config_is_refused_with_checks_error(
    docker_engine: DockerEngine, sdbridge_image: str, tmp_path: Path
) -> None:
    result = docker_run(
        docker_engine, "-v", f"{state_dir(tmp_path)}:/var/lib/sdbridge", sdbridge_image
    )
    assert result.returncode == 1
    expected = host_check(Path("/etc/sdbridge/sdbridge.yml"))
    assert expected.strip() in result.stderr
    assert "refusing to start: mount a valid config" in result.stderr


def test_an_invalid_config_is_refused_with_checks_error(
    docker_engine: DockerEngine, sdbridge_image: str, tmp_path: Path
) -> None:
    config = tmp_path / "sdbridge.yml"
    config.write_text("jobs:\n  - name: x\n    exec_sd_configs: [{command: []}]\n    bogus: 1\n")
    config.chmod(0o644)
    result = docker_run(
        docker_engine,
        "-v", f"{config}:/etc/sdbridge/sdbridge.yml:ro",
        "-v", f"{state_dir(tmp_path)}:/var/lib/sdbridge",
        sdbridge_image,
    )  # fmt: skip
    assert result.returncode == 1
    expected = host_check(config).replace(str(config), "/etc/sdbridge/sdbridge.yml")
    assert expected.strip() in result.stderr, result.stderr


def test_a_read_only_state_directory_is_refused(
    docker_engine: DockerEngine, sdbridge_image: str, tmp_path: Path, token: Path
) -> None:
    result = docker_run(
        docker_engine,
        "-v", f"{ROOT / 'examples/docker/sdbridge.yml'}:/etc/sdbridge/sdbridge.yml:ro",
        "-v", f"{token}:/etc/sdbridge/registry.token:ro",
        "-v", f"{state_dir(tmp_path, writable=False)}:/var/lib/sdbridge",
        sdbridge_image,
    )  # fmt: skip
    assert result.returncode == 1
    # `sdbridge check` names it itself (data_dir is /var/lib/sdbridge); the entrypoint's
    # own probe says the same for a config whose data_dir lies elsewhere.
    assert (
        "global.data_dir: cannot write to /var/lib/sdbridge" in result.stderr
        or f"/var/lib/sdbridge is not writable by user sdbridge (uid {UID})" in result.stderr
    ), result.stderr


def test_version_in_the_image(docker_engine: DockerEngine, sdbridge_image: str) -> None:
    result = docker_run(docker_engine, sdbridge_image, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sdbridge ")
    assert "(revision unknown)" not in result.stdout
