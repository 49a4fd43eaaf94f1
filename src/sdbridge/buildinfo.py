"""Which sdbridge this is: version, source revision, Python version.

Exported as ``sdbridge_build_info``, the way Prometheus exports ``prometheus_build_info``,
so a dashboard can tell which build each instance runs. Until packaging records the
revision in the installed package, it is read from git when sdbridge runs from a
checkout, and is ``unknown`` otherwise.
"""

from __future__ import annotations

import platform
import subprocess
from functools import cache
from pathlib import Path

from . import __version__

UNKNOWN = "unknown"


@cache
def revision() -> str:
    """The git commit sdbridge runs from, or ``unknown`` outside a checkout."""
    package = Path(__file__).resolve().parent
    checkout = next((p for p in package.parents if (p / ".git").exists()), None)
    if checkout is None:
        return UNKNOWN
    try:
        result = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return UNKNOWN
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else UNKNOWN


def build_labels() -> dict[str, str]:
    """The labels of ``sdbridge_build_info``."""
    return {
        "version": __version__,
        "revision": revision(),
        "python_version": platform.python_version(),
    }
