"""The ``sdbridge`` command, run as a subprocess: version, check, once, run, signals, logs."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest

from sdbridge import __version__
from tests.servers.common import ManagedProcess, free_port, http_ok, wait_until

SDBRIDGE = str(Path(sys.executable).with_name("sdbridge"))
LOGFMT_LINE = re.compile(
    r'^ts=\S+ level=(debug|info|warning|error|critical) logger=\S+ msg=("[^"]*"|\S+)'
)


def sdbridge(
    *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SDBRIDGE, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False
    )


def write_config(tmp_path: Path, jobs: str, name: str = "sdbridge.yml") -> Path:
    path = tmp_path / name
    path.write_text("global: {publish_delay: {min: 0s, max: 0s}}\njobs:\n" + textwrap.dedent(jobs))
    return path


def script(tmp_path: Path, name: str, body: str) -> None:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    script(
        tmp_path, "good.sh", """echo '[{"targets":["127.0.0.1:9100"],"labels":{"env":"dev"}}]'"""
    )
    script(tmp_path, "other.sh", """echo '[{"targets":["127.0.0.2:9100"]}]'""")
    script(tmp_path, "bad.sh", "echo 'registry unreachable' >&2; exit 2")
    return tmp_path


GOOD_JOBS = """\
  - name: good
    exec_sd_configs: [{command: [./good.sh]}]
    output: {file: out/good.json}
  - name: other
    exec_sd_configs: [{command: [./other.sh]}]
    output: {file: out/other.yml}
"""


def test_version() -> None:
    result = sdbridge("--version")
    assert result.returncode == 0
    # The revision it was built from: here a checkout, so git's HEAD (tests/release checks
    # the one written into the wheel).
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"],
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert result.stdout.startswith(f"sdbridge {__version__} (revision {head}")


def test_check_ok(workdir: Path) -> None:
    config = write_config(workdir, GOOD_JOBS)
    result = sdbridge("check", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{config}: OK (2 job(s), 2 mechanism(s))"
    assert not (workdir / "out").exists()  # check runs nothing


def test_check_reports_every_error_and_exits_1(workdir: Path) -> None:
    config = write_config(
        workdir,
        """\
  - name: a
    exec_sd_configs: [{command: [x], refresh_interval: soon}]
    ouput: {}
""",
    )
    result = sdbridge("check", str(config))
    assert result.returncode == 1
    assert (
        f"{config}: jobs[0].exec_sd_configs[0].refresh_interval: not a valid duration"
        in result.stderr
    )
    assert f"{config}: jobs[0].ouput: unknown key" in result.stderr
    assert result.stdout == ""


def test_check_missing_file(tmp_path: Path) -> None:
    result = sdbridge("check", str(tmp_path / "missing.yml"))
    assert result.returncode == 1
    assert f"{tmp_path / 'missing.yml'}: config file not found" in result.stderr


def test_once_writes_every_output_and_exits_0(workdir: Path) -> None:
    config = write_config(workdir, GOOD_JOBS)
    result = sdbridge("once", "--config.file", str(config), cwd=Path("/"))
    assert result.returncode == 0, result.stderr
    assert json.loads((workdir / "out/good.json").read_text()) == [
        {"labels": {"env": "dev"}, "targets": ["127.0.0.1:9100"]}
    ]
    assert (
        workdir / "out/other.yml"
    ).read_text() == "- labels: {}\n  targets:\n  - 127.0.0.2:9100\n"
    assert "good: 1 target(s) -> " in result.stdout


def test_once_fails_clearly_when_a_mechanism_fails(workdir: Path) -> None:
    config = write_config(
        workdir,
        GOOD_JOBS
        + """\
  - name: broken
    exec_sd_configs: [{command: [./bad.sh]}]
    output: {file: out/broken.json}
""",
    )
    result = sdbridge("once", "--config", str(config))
    assert result.returncode == 1
    assert (
        "job 'broken': exec_sd_configs[0]: ./bad.sh exited with status 2; stderr: registry unreachable"
        in result.stderr
    )
    assert not (workdir / "out/broken.json").exists()
    assert (workdir / "out/good.json").exists()  # the other jobs still ran


def test_once_fails_when_the_output_cannot_be_written(workdir: Path) -> None:
    (workdir / "out").write_text("a file, not a directory")
    config = write_config(workdir, GOOD_JOBS)
    result = sdbridge("once", "--config", str(config))
    assert result.returncode == 1
    assert (
        f"cannot write {workdir}/out/good.json: cannot create a temp file in {workdir}/out: Not a directory"
        in result.stderr
    )


def test_once_bad_config(workdir: Path) -> None:
    config = write_config(workdir, "  - {name: a}\n")
    result = sdbridge("once", "--config", str(config))
    assert result.returncode == 1
    assert f"{config}: jobs[0]: job 'a' has no mechanism" in result.stderr


class Running:
    """``sdbridge run`` in the background on a free port."""

    def __init__(self, config: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = ManagedProcess(
            [
                SDBRIDGE,
                "run",
                "--config.file",
                str(config),
                f"--web.listen-address=127.0.0.1:{self.port}",
                *extra,
            ],
            log_path=config.parent / "sdbridge.log",
        )

    def log(self) -> str:
        return self.process.log_path.read_text(errors="replace")

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=5) as response:
            return bytes(response.read())

    def wait_ready(self) -> None:
        wait_until(lambda: http_ok(self.url + "/-/ready"), timeout=30, what="sdbridge ready")

    def stop_with(self, sig: int) -> int:
        self.process.proc.send_signal(sig)  # the main process only, like a service manager
        return self.process.proc.wait(timeout=20)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_serves_and_exits_cleanly_on_signal(workdir: Path, sig: int) -> None:
    config = write_config(workdir, GOOD_JOBS)
    run = Running(config)
    try:
        run.wait_ready()
        wait_until(lambda: (workdir / "out/other.yml").exists(), what="the output file")
        assert json.loads(run.get("/sd/good")) == [
            {"labels": {"env": "dev"}, "targets": ["127.0.0.1:9100"]}
        ]
        assert b"sdbridge_job_targets" in run.get("/metrics")
        assert run.stop_with(sig) == 0
    finally:
        run.process.stop()
    log = run.log()
    assert "Traceback" not in log
    lines = log.splitlines()
    assert all(LOGFMT_LINE.match(line) for line in lines), log  # logfmt is the default
    assert any('msg="shutting down"' in line for line in lines)


def test_json_logs(workdir: Path) -> None:
    config = write_config(
        workdir, GOOD_JOBS + "  - {name: broken, exec_sd_configs: [{command: [./bad.sh]}]}\n"
    )
    run = Running(config, "--log.format=json", "--log.level=debug")
    try:
        wait_until(lambda: "registry unreachable" in run.log(), what="the failure log")
        assert run.stop_with(signal.SIGTERM) == 0
    finally:
        run.process.stop()
    records = [json.loads(line) for line in run.log().splitlines()]
    assert {"ts", "level", "logger", "msg"} <= set(records[0])
    failure = next(r for r in records if "registry unreachable" in r["msg"])
    assert failure["level"] == "error"
    assert failure["job"] == "broken"
    assert failure["mechanism"] == "exec"
    assert any(r["level"] == "debug" for r in records)


def test_run_keeps_what_was_published_through_bad_input(workdir: Path) -> None:
    """An unwritable output, then an invalid config on reload: nothing published is lost."""
    (workdir / "blocked").write_text("a file where a directory should be")
    config = write_config(
        workdir,
        GOOD_JOBS
        + "  - {name: blocked, exec_sd_configs: [{command: [./other.sh]}], output: {file: blocked/x.json}}\n",
    )
    run = Running(config)
    try:
        run.wait_ready()
        wait_until(lambda: (workdir / "out/good.json").exists(), what="the good job's file")
        wait_until(lambda: "blocked/x.json" in run.log(), what="the write error")
        # The job whose file cannot be written is still served over http_sd.
        assert json.loads(run.get("/sd/blocked")) == [{"labels": {}, "targets": ["127.0.0.2:9100"]}]
        good_file = (workdir / "out/good.json").read_bytes()

        config.write_text(config.read_text() + "  - {name: broken\n")  # invalid YAML
        run.process.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "config reload failed" in run.log(), what="the reload error")
        assert f"{config}: invalid YAML: line" in run.log()
        assert json.loads(run.get("/sd/good")) == [
            {"labels": {"env": "dev"}, "targets": ["127.0.0.1:9100"]}
        ]
        assert (workdir / "out/good.json").read_bytes() == good_file
        assert run.stop_with(signal.SIGTERM) == 0
    finally:
        run.process.stop()
    errors = [line for line in run.log().splitlines() if "blocked/x.json" in line]
    assert len(errors) == 1, errors  # logged once, not on every retry
    assert "level=error" in errors[0]


def test_once_gives_up_after_its_timeout(workdir: Path) -> None:
    script(workdir, "slow.sh", "echo $$ > slow.pid; exec sleep 120")
    config = write_config(
        workdir,
        GOOD_JOBS + "  - {name: slow, exec_sd_configs: [{command: [./slow.sh], timeout: 5m}]}\n",
    )
    result = sdbridge("once", "--config", str(config), "--timeout", "1s")
    assert result.returncode == 1
    assert (
        "job 'slow': no complete sync within 1s (waiting for: exec_sd_configs[0])" in result.stderr
    )
    assert (workdir / "out/good.json").exists()
    pid = int((workdir / "slow.pid").read_text())
    assert (
        not Path(f"/proc/{pid}").exists() or "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    )


HUGE = "1" + "0" * 400


def test_check_with_huge_numbers_gives_a_clean_error(workdir: Path) -> None:
    config = write_config(
        workdir,
        f"""\
          - name: a
            exec_sd_configs: [{{command: [./good.sh], refresh_interval: {HUGE}s}}]
            output: {{file: out/a.json, file_mode: {HUGE}}}
        """,
    )
    config.write_text(f"registry: {{default_ttl: {HUGE}s}}\n" + config.read_text())
    result = sdbridge("check", str(config))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "jobs[0].exec_sd_configs[0].refresh_interval: duration" in result.stderr
    assert "out of range (at most 292y)" in result.stderr
    assert "jobs[0].output.file_mode: file_mode" in result.stderr
    assert "registry.default_ttl" in result.stderr


def test_sighup_with_huge_numbers_fails_cleanly_and_is_counted(workdir: Path) -> None:
    config = write_config(workdir, GOOD_JOBS)
    run = Running(config)
    try:
        run.wait_ready()
        config.write_text(
            config.read_text().replace("[./good.sh]}", f"[./good.sh], refresh_interval: {HUGE}s}}")
        )
        assert HUGE in config.read_text()
        run.process.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "config reload failed" in run.log(), what="the reload error")
        metrics = run.get("/metrics").decode()
        assert "sdbridge_config_last_reload_successful 0.0" in metrics
        assert 'sdbridge_config_reloads_total{result="failure"} 1.0' in metrics
        assert json.loads(run.get("/sd/good")) == [
            {"labels": {"env": "dev"}, "targets": ["127.0.0.1:9100"]}
        ]
        assert run.stop_with(signal.SIGTERM) == 0
    finally:
        run.process.stop()
    log = run.log()
    assert "Traceback" not in log
    assert "never retrieved" not in log
    assert "out of range (at most 292y)" in log
