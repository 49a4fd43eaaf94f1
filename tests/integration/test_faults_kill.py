"""Crash safety: ``kill -9`` a writing sdbridge again and again; SIGTERM it while it writes.

A real ``sdbridge run`` publishes a job whose exec backend answers differently on every
refresh (20ms), with a tiny publish delay, so it rewrites its file_sd output and its
last-known-good state many times a second. It is killed with SIGKILL at random moments
(every other time right after a write was seen, so many kills land on the next write)
and restarted, at least 200 times. After every kill the output file and the state file
must be whole: present once first written, parsable, with every target.

Starting a Python process that imports sdbridge costs about a second, so the processes
are forked from a "zygote" that imported sdbridge once; each child is a complete
``sdbridge run`` in its own session, killed as a process group. The zygote is a child
subreaper, so exec commands orphaned by a kill are reaped too.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml

from sdbridge.model import parse_file_sd
from sdbridge.outputs.file import TEMP_SUFFIX
from sdbridge.state import decode_state, state_path

from ..servers.common import wait_until
from ..servers.prometheus import Prometheus

KILLS = 200
TERMS = 20
TARGETS = 100

ZYGOTE = r"""
import ctypes, json, os, sys, time, traceback
from sdbridge.cli import main  # the import cost is paid once, here
from sdbridge.discovery import mechanisms
mechanisms()
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER

def reap_orphans(block=False):
    while True:
        try:
            pid, _ = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return

for line in sys.stdin:
    command, _, argument = line.strip().partition(" ")
    if command == "spawn":
        argv, log = json.loads(argument)
        pid = os.fork()
        if pid == 0:
            os.setsid()
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 70
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        while os.getpgid(pid) != pid:  # until it leads its own group: killpg can reach it
            time.sleep(0.0005)
        print(pid, flush=True)
    elif command == "wait":
        _, status = os.waitpid(int(argument), 0)
        print(os.waitstatus_to_exitcode(status), flush=True)
        reap_orphans()
reap_orphans(block=True)
"""


class Zygote:
    """A pre-imported Python that forks ``sdbridge run`` children on request."""

    def __init__(self, workdir: Path) -> None:
        self.log = workdir / "zygote.log"
        self._log_file = open(self.log, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
            start_new_session=True,
        )
        self.children: set[int] = set()

    def _ask(self, line: str) -> str:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise AssertionError(f"the zygote died: {self.log.read_text()[-2000:]}")
        return answer.strip()

    def spawn(self, argv: list[str], log: Path) -> int:
        pid = int(self._ask("spawn " + json.dumps([argv, str(log)])))
        self.children.add(pid)
        return pid

    def signal(self, pid: int, sig: int) -> None:
        os.killpg(pid, sig)

    def wait(self, pid: int) -> int:
        code = int(self._ask(f"wait {pid}"))
        self.children.discard(pid)
        return code

    def close(self) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            self.wait(pid)
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc.stdout.close()
        self._log_file.close()


def _load_yaml(data: bytes) -> object:
    return yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


class Setup:
    """A churning job's config, paths and checks."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.out = workdir / "out" / "churn.json"
        self.out_yaml = workdir / "out" / "churn-yaml.yml"
        self.out.parent.mkdir()
        self.state_dir = workdir / "data" / "state"
        self.log = workdir / "sdbridge.log"
        template = [
            {"targets": [f"127.0.0.1:{10000 + i}"], "labels": {"gen": "@", "i": str(i)}}
            for i in range(TARGETS)
        ]
        (workdir / "backend.json").write_text(json.dumps(template))
        # $$ is the shell's pid: a different answer on every refresh.
        command = ["sh", "-c", f"exec sed s/@/$$/g {workdir / 'backend.json'}"]
        config = {
            "global": {
                "data_dir": str(workdir / "data"),
                "publish_delay": {"min": "0s", "max": "1ms"},
            },
            "jobs": [
                {
                    "name": name,
                    "exec_sd_configs": [{"command": command, "refresh_interval": "20ms"}],
                    "guard": {"enabled": False},  # every answer replaces every target
                    "output": {"file": str(path)},
                }
                for name, path in (("churn", self.out), ("churn-yaml", self.out_yaml))
            ],
        }
        self.config = workdir / "sdbridge.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.argv = [
            "run",
            f"--config.file={self.config}",
            "--web.listen-address=127.0.0.1:0",
            "--log.level=info",
        ]
        self.written: set[Path] = set()

    def inode(self) -> int | None:
        try:
            return self.out.stat().st_ino
        except FileNotFoundError:
            return None

    def check(self, when: str) -> None:
        """Every output is whole: missing only before the first write, else all targets."""
        for path, loads in ((self.out, orjson.loads), (self.out_yaml, _load_yaml)):
            if not path.exists():
                assert path not in self.written, f"{path} is missing {when}"
                continue
            data = path.read_bytes()
            try:
                groups = parse_file_sd(loads(data), origin=str(path))
            except Exception as exc:
                raise AssertionError(f"{path} is broken {when}: {exc}\n{data[:200]!r}") from exc
            assert len(groups) == TARGETS, f"{path} has {len(groups)} targets {when}"
            self.written.add(path)
        for job in ("churn", "churn-yaml"):
            path = state_path(self.state_dir, job)
            if path.exists():
                snapshot = decode_state(path.read_bytes(), job=job, origin=str(path))
                assert snapshot.target_count == TARGETS

    def temp_files(self) -> list[Path]:
        return [
            p
            for d in (self.out.parent, self.state_dir)
            if d.exists()
            for p in d.iterdir()
            if p.name.endswith(TEMP_SUFFIX)
        ]


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    zygote = Zygote(tmp_path_factory.mktemp("zygote"))
    try:
        yield zygote
    finally:
        zygote.close()


def wait_for_new_write(setup: Setup, before: int | None, pid: int, zygote: Zygote) -> None:
    deadline = time.monotonic() + 30
    while setup.inode() == before:
        if time.monotonic() > deadline:
            zygote.signal(pid, signal.SIGKILL)
            zygote.wait(pid)
            pytest.fail(f"sdbridge wrote nothing for 30s:\n{setup.log.read_text()[-3000:]}")
        time.sleep(0.002)


@pytest.mark.slow
@pytest.mark.prometheus
def test_kill_9_loop_never_leaves_a_missing_partial_or_unparsable_file(
    tmp_path: Path, zygote: Zygote
) -> None:
    setup = Setup(tmp_path)
    # A real Prometheus reads both files through file_sd (fsnotify) all along.
    prom_dir = tmp_path / "prometheus"
    prom_dir.mkdir()
    scrape = {
        "job_name": "churn",
        "scrape_interval": "1h",
        "file_sd_configs": [{"files": [str(setup.out), str(setup.out_yaml)]}],
    }
    prometheus = Prometheus(prom_dir, {"scrape_configs": [scrape]})
    try:
        kill_loop(setup, zygote)
        wait_until(
            lambda: len(prometheus.active_targets("churn")) >= TARGETS,
            what="Prometheus to read the outputs",
        )
        log = prometheus.process.log_text()
    finally:
        prometheus.stop()
    assert "Error reading file" not in log, "Prometheus saw a broken file"
    assert "provider=file/0" in log, "Prometheus's file_sd never started?"


def kill_loop(setup: Setup, zygote: Zygote) -> None:
    """KILLS SIGKILLs at random moments, checking every output after each."""
    rng = random.Random(4242)
    killed_while_writing = 0
    for attempt in range(KILLS):
        before = setup.inode()
        pid = zygote.spawn(setup.argv, setup.log)
        if attempt % 2 == 0:
            # Right after a write, while the next ones are on their way.
            wait_for_new_write(setup, before, pid, zygote)
            time.sleep(rng.uniform(0, 0.02))
            killed_while_writing += 1
        else:
            time.sleep(rng.uniform(0, 0.2))  # anywhere: startup, restore, first sync, writes
        zygote.signal(pid, signal.SIGKILL)
        assert zygote.wait(pid) == -signal.SIGKILL
        setup.check(f"after kill {attempt + 1}")
    assert killed_while_writing >= KILLS // 2
    assert setup.written == {setup.out, setup.out_yaml}

    # A clean run afterwards removes whatever temp files the kills left behind.
    before = setup.inode()
    pid = zygote.spawn(setup.argv, setup.log)
    wait_for_new_write(setup, before, pid, zygote)
    zygote.signal(pid, signal.SIGTERM)
    assert zygote.wait(pid) == 0
    assert setup.temp_files() == []
    setup.check("after the final clean stop")
    assert "Traceback" not in setup.log.read_text()


def test_sigterm_lets_in_flight_writes_finish_and_leaves_no_temp_files(
    tmp_path: Path, zygote: Zygote
) -> None:
    setup = Setup(tmp_path)
    rng = random.Random(7)
    for attempt in range(TERMS):
        before = setup.inode()
        pid = zygote.spawn(setup.argv, setup.log)
        wait_for_new_write(setup, before, pid, zygote)
        time.sleep(rng.uniform(0, 0.02))
        zygote.signal(pid, signal.SIGTERM)
        assert zygote.wait(pid) == 0, setup.log.read_text()[-3000:]
        assert setup.temp_files() == [], f"temp files left after SIGTERM {attempt + 1}"
        setup.check(f"after SIGTERM {attempt + 1}")
    assert "shutting down" in setup.log.read_text()
