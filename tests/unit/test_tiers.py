"""The test tiers (tests/conftest.py): server markers, the fast tier, skips that fail."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_pytest(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run pytest on one test file with this suite's settings and conftest (a plugin)."""
    test_file = tmp_path / "test_sample.py"
    test_file.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "-p", "no:cacheprovider",
         "-p", "tests.conftest", "--rootdir", str(tmp_path), "-q", str(test_file), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_a_skipped_test_fails(tmp_path: Path) -> None:
    result = run_pytest(
        tmp_path,
        """
        import pytest

        def test_missing_server():
            pytest.skip("no etcd here")
        """,
    )
    assert result.returncode == 1, result.stdout
    assert "1 failed" in result.stdout
    assert "skipped tests fail in this suite" in result.stdout
    assert "no etcd here" in result.stdout


def test_server_fixtures_and_markers_leave_the_fast_tier(tmp_path: Path) -> None:
    source = """
        import pytest

        @pytest.fixture
        def etcd():
            return None

        def test_uses_etcd(etcd):
            pass

        @pytest.mark.root
        def test_needs_root():
            pass

        def test_plain():
            pass
        """
    fast = run_pytest(tmp_path, source, "-m", "not server", "--strict-markers")
    assert fast.returncode == 0, fast.stdout
    assert "1 passed, 2 deselected" in fast.stdout
    full = run_pytest(tmp_path, source, "--strict-markers", "-m", "etcd or root")
    assert "2 passed, 1 deselected" in full.stdout, full.stdout


def test_the_fast_tier_refuses_to_start_a_server(tmp_path: Path) -> None:
    result = run_pytest(
        tmp_path,
        """
        from tests.servers.common import require_binary

        def test_unmarked_prometheus():
            require_binary("prometheus")
        """,
        "-m",
        "not server",
    )
    assert result.returncode == 1, result.stdout
    assert "this test starts prometheus: mark it @pytest.mark.prometheus" in result.stdout
