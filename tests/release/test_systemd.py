"""examples/systemd/sdbridge.service: ``systemd-analyze verify`` in a temporary root.

verify needs the unit's ``ExecStart`` binary to exist, so the test makes a root holding
the unit, an executable at the ExecStart path, ``/bin/kill`` (ExecReload) and systemd's
own units (the default dependencies), and verifies there. Any message fails the test:
verify reports unknown keys and bad values on stderr without failing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ..servers.common import require_binary
from .conftest import ROOT, run

UNIT = ROOT / "examples" / "systemd" / "sdbridge.service"


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_unit_verifies_in_a_root_where_its_binary_exists(tmp_path: Path) -> None:
    analyze = require_binary("systemd-analyze")
    unit = directives(UNIT.read_text())
    exec_start = Path(unit["ExecStart"][0].split()[0])
    root = tmp_path / "root"
    binary = root / exec_start.relative_to("/")
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    (root / "bin").mkdir()
    shutil.copy2("/bin/kill", root / "bin" / "kill")
    shutil.copytree("/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy2(UNIT, root / "etc/systemd/system/sdbridge.service")

    result = run(
        [analyze, "verify", "--man=no", f"--root={root}", "/etc/systemd/system/sdbridge.service"]
    )
    assert result.stderr == "", result.stderr
    assert result.stdout == ""

    binary.unlink()  # and verify does look: without the binary it fails
    failed = subprocess.run(
        [analyze, "verify", "--man=no", f"--root={root}", "/etc/systemd/system/sdbridge.service"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert failed.returncode != 0
    assert "is not executable" in failed.stderr


def test_the_unit_runs_sandboxed_as_its_own_user() -> None:
    unit = directives(UNIT.read_text())
    assert unit["User"] == ["sdbridge"]
    assert unit["StateDirectory"] == ["sdbridge"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["ReadWritePaths"]
    assert "--config.file=/etc/sdbridge/sdbridge.yml" in unit["ExecStart"][0]
