"""nacos-sdk-python, Nacos's official Python client, in a venv of its own.

Its dependencies (alibabacloud-*, a2a, pydantic pins ...) are not sdbridge's business,
so it lives in ``.venv-nacos-sdk`` at the top of the worktree, created and filled from
PyPI on first use (about a minute), then reused while its stamp is there.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-nacos-sdk"
REQUIREMENT = "nacos-sdk-python>=3.0,<4"
_STAMP = VENV / ".sdbridge-installed"


def sdk_python() -> Path:
    """The venv's python with nacos-sdk-python importable; fails the test if it cannot be."""
    python = VENV / "bin" / "python"
    if not _STAMP.exists() or _STAMP.read_text() != REQUIREMENT:
        try:
            if not python.exists():
                subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", REQUIREMENT],
                check=True,
                capture_output=True,
                timeout=600,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            pytest.fail(f"cannot install {REQUIREMENT} into {VENV}: {exc}")
        _STAMP.write_text(REQUIREMENT)
    return python
