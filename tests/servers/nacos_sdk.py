"""nacos-sdk-python, Nacos's official Python client, in a venv of its own.

Its dependencies (alibabacloud-*, a2a, pydantic pins ...) are not sdbridge's business,
so it lives in ``.venv-nacos-sdk`` at the top of the worktree. ``scripts/bootstrap``
creates and fills it (tests send no traffic beyond loopback, so they never install).
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-nacos-sdk"
REQUIREMENT = "nacos-sdk-python>=3.0,<4"
_STAMP = VENV / ".sdbridge-installed"


def sdk_python() -> Path:
    """The venv's python with nacos-sdk-python importable; fails the test if it is not."""
    python = VENV / "bin" / "python"
    if not python.exists() or not _STAMP.exists() or _STAMP.read_text() != REQUIREMENT:
        pytest.fail(f"{REQUIREMENT} is not installed in {VENV}; run scripts/bootstrap")
    return python
