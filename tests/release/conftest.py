"""The release artefacts, built once per session from this checkout.

``release_dist`` runs ``python -m build`` (an sdist, then the wheel built from it, as a
release does) into a temporary directory; ``wheelhouse`` adds the wheels of every
dependency (``pip wheel``), so a venv or an image build can install with ``--no-index``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..servers.dockerd import DockerEngine, docker_engine  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ReleaseDist:
    """The sdist and wheel of one build."""

    directory: Path
    sdist: Path
    wheel: Path


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command; fail the test with its output when it fails."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, argv))} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result  # type: ignore[no-any-return]


def git_head() -> str:
    """The commit this checkout is at."""
    return run(["git", "rev-parse", "HEAD"], cwd=ROOT).stdout.strip()


@pytest.fixture(scope="session")
def release_dist(tmp_path_factory: pytest.TempPathFactory) -> ReleaseDist:
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], cwd=ROOT)
    (sdist,) = out.glob("sdbridge-*.tar.gz")
    (wheel,) = out.glob("sdbridge-*.whl")
    return ReleaseDist(out, sdist, wheel)


@pytest.fixture(scope="session")
def wheelhouse(release_dist: ReleaseDist) -> Path:
    house = release_dist.directory / "wheelhouse"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--wheel-dir",
            str(house),
            str(release_dist.wheel),
        ]
    )
    return house


@pytest.fixture(scope="session")
def base_image(docker_engine: DockerEngine) -> str:  # noqa: F811
    """The local Debian base image (cached between runs, see images.py)."""
    from .images import local_base

    return local_base(docker_engine)


@pytest.fixture(scope="session")
def sdbridge_image(docker_engine: DockerEngine, base_image: str, wheelhouse: Path) -> Iterator[str]:  # noqa: F811
    """The root Dockerfile built on the local base from the wheelhouse; removed at the end."""
    from .images import sdbridge_image

    with sdbridge_image(docker_engine, base_image, wheelhouse) as tag:
        yield tag
