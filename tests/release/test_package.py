"""The release package: built, checked by twine, installed from the wheel outside the tree.

One sdist and wheel per session (``release_dist``); the venv installs the wheel with its
dependencies from the wheelhouse only (``--no-index``), in a temporary directory, so
nothing of the source tree can leak in.
"""

from __future__ import annotations

import shutil
import sys
import tarfile
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..servers.common import ManagedProcess, free_port, http_ok, wait_until
from .conftest import ROOT, ReleaseDist, git_head, run

pytestmark = [pytest.mark.release, pytest.mark.slow]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Path:
    """A fresh venv outside the tree with the wheel installed; returns its bin directory."""
    venv = tmp_path_factory.mktemp("venv") / "sdbridge"
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--find-links", str(wheelhouse), "sdbridge"])  # fmt: skip
    return venv / "bin"


def test_twine_accepts_the_wheel_and_the_sdist(release_dist: ReleaseDist) -> None:
    result = run([sys.executable, "-m", "twine", "check", "--strict", str(release_dist.sdist), str(release_dist.wheel)])  # fmt: skip
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_the_revision_is_in_the_sdist_and_the_wheel(release_dist: ReleaseDist) -> None:
    with tarfile.open(release_dist.sdist) as sdist:
        names = sdist.getnames()
        (member,) = [n for n in names if n.endswith("src/sdbridge/REVISION")]
        in_sdist = sdist.extractfile(member).read().decode()  # type: ignore[union-attr]
        assert any(n.endswith("/LICENSE") for n in names)
        assert any(n.endswith("/CHANGELOG.md") for n in names)
    with zipfile.ZipFile(release_dist.wheel) as wheel:
        in_wheel = wheel.read("sdbridge/REVISION").decode()
        names = wheel.namelist()
    assert in_sdist == in_wheel
    assert in_wheel.startswith(git_head())
    assert "sdbridge/web/static/sdbridge.css" in names
    assert "sdbridge/py.typed" in names


def test_version_prints_the_version_and_the_revision(installed: Path, tmp_path: Path) -> None:
    from sdbridge import __version__

    result = run([str(installed / "sdbridge"), "--version"], cwd=tmp_path)
    assert result.stdout.startswith(f"sdbridge {__version__} (revision {git_head()}")
    code = "from sdbridge.version import build_info; i = build_info(); print(i.version, i.revision)"
    info = run([str(installed / "python"), "-c", code], cwd=tmp_path).stdout.split()
    assert info[0] == __version__
    assert info[1].startswith(git_head())


def example_configs() -> list[Path]:
    return sorted((ROOT / "examples").rglob("sdbridge*.yml"))


def test_every_example_config_passes_check(installed: Path, tmp_path: Path) -> None:
    """Each example as shipped; the docker one also needs its deploy-time token file."""
    examples = tmp_path / "examples"
    shutil.copytree(ROOT / "examples", examples)
    (examples / "docker" / "registry.token").write_text("a-token\n")
    configs = sorted(examples.rglob("sdbridge*.yml"))
    assert len(configs) == len(example_configs()) >= 2
    for config in configs:
        result = run([str(installed / "sdbridge"), "check", str(config)], cwd=tmp_path)
        assert "OK" in result.stdout, config


@pytest.fixture
def running(installed: Path, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    config = tmp_path / "sdbridge.yml"
    config.write_text(
        "jobs:\n"
        "  - name: static\n"
        "    exec_sd_configs:\n"
        '      - command: [echo, \'[{"targets": ["127.0.0.1:9100"]}]\']\n'
        "    output: {file: targets/static.json}\n"
    )
    argv = [str(installed / "sdbridge"), "run", f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{port}"]  # fmt: skip
    with ManagedProcess(argv, log_path=tmp_path / "sdbridge.log", cwd=tmp_path) as process:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(f"{url}/-/ready"), what=f"sdbridge ready ({process.log_path})")
        yield url


def test_run_from_the_wheel_serves_targets_and_the_ui(running: str) -> None:
    def get(path: str) -> str:
        with urllib.request.urlopen(running + path, timeout=5) as response:
            return str(response.read().decode())

    assert "127.0.0.1:9100" in get("/sd/static")
    page = get("/")
    assert "/static/sdbridge.css" in page
    assert "{" in get("/static/sdbridge.css")
    assert get("/static/sdbridge.js")
