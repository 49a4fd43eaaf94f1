"""Steady RSS of ``sdbridge run`` with one exec job of N targets x 15 labels.

Run: ``.venv/bin/python bench/run_rss.py [--targets 100000] [--settle 5]``

Memory as a user sees it: a real ``sdbridge run`` process (default config: last-known-good
state on, the web server on a free loopback port) whose one exec job prints N targets
with 15 labels each, one group per target (45 MB of JSON at 100k). Reported: the RSS
after the first publish has landed and ``--settle`` seconds passed (steady), and the
high-water mark (VmHWM). The goal in issue 11 is <= 60 MB + 2 KB per target.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from render_write import build_groups  # the same targets as the render bench


def targets_json(n: int) -> bytes:
    """N groups of one target each: render_write's 15 labels, merged into the target."""
    return orjson.dumps(
        [
            {
                "targets": [labels.pop("__address__")],
                "labels": labels,
            }
            for group in build_groups(n)
            for labels in group.merged_targets()
        ]
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", type=int, default=100_000)
    parser.add_argument("--settle", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sdbridge-rss-") as tmp:
        directory = Path(tmp)
        (directory / "targets.json").write_bytes(targets_json(args.targets))
        out = directory / "out.json"
        (directory / "sdbridge.yml").write_text(
            "jobs:\n"
            "  - name: big\n"
            "    exec_sd_configs:\n"
            "      - command: [cat, targets.json]\n"
            "        refresh_interval: 1h\n"
            "    output:\n"
            f"      file: {out}\n"
        )
        started = time.monotonic()
        process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("sdbridge")),
                "run",
                "--config.file",
                str(directory / "sdbridge.yml"),
                "--web.listen-address",
                f"127.0.0.1:{free_port()}",
                "--log.level",
                "warn",
            ],
            cwd=directory,
            start_new_session=True,
        )
        try:
            while not out.exists():
                if process.poll() is not None:
                    raise SystemExit(f"sdbridge exited with {process.returncode}")
                time.sleep(0.05)
            first = time.monotonic() - started
            time.sleep(args.settle)
            rss = status_kb(process.pid, "VmRSS")
            hwm = status_kb(process.pid, "VmHWM")
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(30)
    goal = 60 + 2 * args.targets / 1000
    print(
        f"targets {args.targets}  first publish {first:.1f}s  steady RSS {rss / 1024:.0f} MB "
        f"(goal <= {goal:.0f} MB)  high-water {hwm / 1024:.0f} MB"
    )


if __name__ == "__main__":
    main()
