"""Which sdbridge this is: version, source revision, Python version.

Exported as ``sdbridge_build_info``, the way Prometheus exports ``prometheus_build_info``,
so a dashboard can tell which build each instance runs. The revision is the one a
wheel or sdist recorded at build time, or git's when sdbridge runs from a checkout
(:mod:`sdbridge.version`).
"""

from __future__ import annotations

import platform

from . import __version__
from .version import build_info

UNKNOWN = "unknown"


def revision() -> str:
    """The git commit this sdbridge was built from (see :func:`sdbridge.version.build_info`)."""
    return build_info().revision


def build_labels() -> dict[str, str]:
    """The labels of ``sdbridge_build_info``."""
    return {
        "version": __version__,
        "revision": revision(),
        "python_version": platform.python_version(),
    }
