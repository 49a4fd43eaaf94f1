"""The version and the git revision this copy of sdbridge was built from.

A wheel or sdist carries the revision in the file ``sdbridge/REVISION`` (written at build
time by setup.py, since the wheel is built from an sdist that has no ``.git``). A source
checkout (an editable install) has no such file and asks git instead. ``--version`` and
the ``sdbridge_build_info`` metric both use :func:`build_info`.
"""

from __future__ import annotations

import functools
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from . import __version__

UNKNOWN = "unknown"


@dataclass(frozen=True)
class BuildInfo:
    """What a running sdbridge is: its version and the commit it was built from."""

    version: str
    revision: str  # a 40-hex commit (``-dirty`` with local changes), or "unknown"


def _packaged_revision() -> str | None:
    try:
        text = resources.files("sdbridge").joinpath("REVISION").read_text()
    except (FileNotFoundError, OSError):
        return None
    return text.strip() or None


def _checkout_revision() -> str | None:
    source = Path(__file__).resolve().parent
    if not (source.parent.parent / ".git").exists():
        return None  # not src/sdbridge in a checkout: no other repository's commit
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=source,
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", "."], cwd=source, check=False, timeout=5
        ).returncode
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "") if head else None


@functools.cache
def build_info() -> BuildInfo:
    """The version and revision; asked once per process (git is not asked again)."""
    revision = _packaged_revision() or _checkout_revision() or UNKNOWN
    return BuildInfo(version=__version__, revision=revision)


def version_text() -> str:
    """What ``sdbridge --version`` prints."""
    info = build_info()
    return f"sdbridge {info.version} (revision {info.revision})"
