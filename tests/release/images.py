"""Container images for the tests, built with nothing pulled from a registry.

The base is a minimal Debian root filesystem made by ``mmdebstrap`` from Debian's packages
(python3 and python3-venv), turned into an image by ``docker import``. Its root filesystem
is cached between runs in ``~/.cache/sdbridge-tests/base-<key>.tar`` (the engine may be a
new one each run: the test fixture starts one with a temporary data root when none
answers), and the image stays in the engine as ``sdbridge-test-base:<key>``; the key is a
hash of the Dockerfile, the Debian release and the package list. A second run does not
run mmdebstrap again; a changed Dockerfile does (older keys are removed then). Every other image (sdbridge
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
    return engine.cli(*args, timeout=timeout, env={"DOCKER_BUILDKIT": "0"})


def image_exists(engine: DockerEngine, tag: str) -> bool:
    return bool(docker(engine, "images", "-q", tag))


def base_key() -> str:
    digest = hashlib.sha256()
    digest.update((ROOT / "Dockerfile").read_bytes())
    digest.update(f"{DEBIAN_RELEASE}:{','.join(BASE_PACKAGES)}".encode())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    """Where the base's root filesystem is kept between runs (the engine may be new)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = root / "sdbridge-tests"
    path.mkdir(parents=True, exist_ok=True)
    return path


def base_rootfs(key: str) -> Path:
    """The cached mmdebstrap tarball for ``key``; made (about 30 s) when missing."""
    tarball = cache_dir() / f"base-{key}.tar"
    if tarball.exists():
        return tarball
    mmdebstrap = require_binary("mmdebstrap")
    partial = tarball.with_suffix(".partial.tar")
    result = subprocess.run(
        [mmdebstrap, "--quiet", "--variant=minbase",
         f"--include={','.join(BASE_PACKAGES)}", DEBIAN_RELEASE, str(partial)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        pytest.fail(f"mmdebstrap failed:\n{result.stderr[-3000:]}")
    partial.rename(tarball)
    for old in cache_dir().glob("base-*.tar"):
        if old != tarball:
            old.unlink(missing_ok=True)
    return tarball


def local_base(engine: DockerEngine) -> str:
    """The local Debian base image, imported from the cached root filesystem if missing.

    It stays in the engine on purpose (the cache); older keys are removed.
    """
    key = base_key()
    tag = f"{BASE_REPOSITORY}:{key}"
    with BASE_LOCK.open("ab") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be building it right now
        if image_exists(engine, tag):
            return tag
        docker(engine, "import", "--change", 'CMD ["/bin/sh"]', str(base_rootfs(key)), tag)
        listed = docker(engine, "images", "--format", "{{.Repository}}:{{.Tag}}", BASE_REPOSITORY)
        for old in listed.split():
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
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, context / name)
        with built_image(engine, context, what) as tag:
            yield tag
