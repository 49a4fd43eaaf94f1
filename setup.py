"""Writes the git revision a build comes from into the package (everything else: pyproject).

``python -m build`` makes the sdist from the git checkout, then the wheel from the unpacked
sdist, where there is no ``.git``. So the revision is written into the sdist's tree (and,
for a build straight from a checkout, into the build directory); a build from an sdist
copies the file that is already there. sdbridge reads it with
:func:`sdbridge.version.build_info`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

REVISION_FILE = Path("sdbridge") / "REVISION"
HERE = Path(__file__).resolve().parent


def git_revision() -> str | None:
    """HEAD's commit, with ``-dirty`` when tracked files differ from it; None outside git."""
    if not (HERE / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", "src", "pyproject.toml"], cwd=HERE
        ).returncode
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def write_revision(package_root: Path) -> None:
    revision = git_revision()
    if revision is not None:
        target = package_root / REVISION_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(revision + "\n")


class SdistWithRevision(sdist):
    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        write_revision(Path(base_dir) / "src")


class BuildPyWithRevision(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            write_revision(Path(self.build_lib))


os.chdir(HERE)
setup(cmdclass={"sdist": SdistWithRevision, "build_py": BuildPyWithRevision})
