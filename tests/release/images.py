"""Container images for the tests, built with nothing pulled from a registry.

The base is a minimal Debian root filesystem made by ``mmdebstrap`` from Debian's packages
(python3 and python3-venv), turned into an image by ``docker import``. It is cached in
the engine between runs as ``sdbridge-test-base:<key>``, the key being a hash of the
Dockerfile, the Debian release and the package list: a second run does not rebuild it,
and a changed Dockerfile does (older keys are removed then). Every other image (sdbridge
from the root Dockerfile with a host-built wheelhouse, the Consul double, Prometheus) is
built on it per session and removed at the end. Builds and containers use the host's
network, and everything listens on 127.0.0.1: nothing connects to a container address.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from ..servers.common import require_binary
from ..servers.dockerd import DockerEngine
from .conftest import ROOT

DEBIAN_RELEASE = "bookworm"  # the release the host's Debian packages come from, too
BASE_PACKAGES = ("python3", "python3-venv", "passwd")
BASE_REPOSITORY = "sdbridge-test-base"
BASE_LOCK = Path(tempfile.gettempdir()) / "sdbridge-test-base.lock"


def docker(engine: DockerEngine, *args: str, timeout: float = 600) -> str:
    """The docker CLI with the classic builder (Debian's docker.io has no buildx)."""
    result = subprocess.run(
        [engine.docker, "-H", engine.host, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    if result.returncode != 0:
        pytest.fail(f"docker {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr}")
    return result.stdout.strip()


def image_exists(engine: DockerEngine, tag: str) -> bool:
    return bool(docker(engine, "images", "-q", tag))


def base_key() -> str:
    digest = hashlib.sha256()
    digest.update((ROOT / "Dockerfile").read_bytes())
    digest.update(f"{DEBIAN_RELEASE}:{','.join(BASE_PACKAGES)}".encode())
    return digest.hexdigest()[:16]


def local_base(engine: DockerEngine) -> str:
    """The cached local Debian base image; built (about 30 s) when its key is new."""
    tag = f"{BASE_REPOSITORY}:{base_key()}"
    with BASE_LOCK.open("ab") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be building it right now
        if image_exists(engine, tag):
            return tag
        mmdebstrap = require_binary("mmdebstrap")
        with tempfile.TemporaryDirectory(prefix="sdbridge-base-") as work:
            tarball = Path(work) / "rootfs.tar"
            result = subprocess.run(
                [mmdebstrap, "--quiet", "--variant=minbase",
                 f"--include={','.join(BASE_PACKAGES)}", DEBIAN_RELEASE, str(tarball)],
                capture_output=True, text=True, timeout=900, check=False,
            )  # fmt: skip
            if result.returncode != 0:
                pytest.fail(f"mmdebstrap failed:\n{result.stderr[-3000:]}")
            docker(engine, "import", "--change", 'CMD ["/bin/sh"]', str(tarball), tag)
        for old in docker(
            engine, "images", "--format", "{{.Repository}}:{{.Tag}}", BASE_REPOSITORY
        ).split():
            if old != tag:
                docker(engine, "rmi", old)
        return tag


@contextlib.contextmanager
def built_image(
    engine: DockerEngine,
    context: Path,
    what: str,
    *,
    dockerfile: Path | None = None,
    build_args: Sequence[str] = (),
) -> Iterator[str]:
    """``docker build`` ``context`` (host network, no pull); yields the tag; removes it."""
    tag = f"sdbridge-test-{what}:{uuid.uuid4().hex[:8]}"
    argv = ["build", "--network", "host", "--force-rm", "-q", "-t", tag]
    if dockerfile is not None:
        argv += ["-f", str(dockerfile)]
    for arg in build_args:
        argv += ["--build-arg", arg]
    docker(engine, *argv, str(context))
    try:
        yield tag
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            subprocess.run([engine.docker, "-H", engine.host, "rmi", "-f", tag],
                           capture_output=True, check=False, timeout=120)  # fmt: skip


@contextlib.contextmanager
def sdbridge_image(engine: DockerEngine, base: str, wheelhouse: Path) -> Iterator[str]:
    """The root Dockerfile built on ``base`` from ``wheelhouse``, with no package index."""
    with tempfile.TemporaryDirectory(prefix="sdbridge-image-") as work:
        context = Path(work)
        shutil.copytree(ROOT / "docker", context / "docker")
        shutil.copytree(wheelhouse, context / "wheelhouse")
        with built_image(
            engine, context, "sdbridge", dockerfile=ROOT / "Dockerfile",
            build_args=[f"BASE_IMAGE={base}", "WHEELHOUSE=wheelhouse"],
        ) as tag:  # fmt: skip
            yield tag


@contextlib.contextmanager
def image_from(
    engine: DockerEngine, what: str, dockerfile: str, files: dict[str, Path]
) -> Iterator[str]:
    """An image from a Dockerfile text and host files copied into its build context."""
    with tempfile.TemporaryDirectory(prefix=f"sdbridge-{what}-") as work:
        context = Path(work)
        (context / "Dockerfile").write_text(dockerfile)
        for name, source in files.items():
            shutil.copy2(source, context / name)
        with built_image(engine, context, what) as tag:
            yield tag
