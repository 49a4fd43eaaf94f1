"""``sdbridge_build_info`` tells which build runs, as Prometheus's own ``*_build_info``."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import sdbridge
import sdbridge.metrics
from sdbridge.buildinfo import revision

REPO = Path(__file__).resolve().parents[2]


def test_build_info_carries_version_revision_and_python() -> None:
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert revision() == head  # running from a checkout: read from git
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(REGISTRY).decode())
    }
    [sample] = families["sdbridge_build_info"].samples
    assert sample.value == 1
    assert sample.labels == {
        "version": sdbridge.__version__,
        "revision": head,
        "python_version": platform.python_version(),
    }
