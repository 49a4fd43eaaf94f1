"""exec_sd_configs, driven through a real Job: every failure keeps the last good set."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import textwrap
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdbridge.config import GlobalConfig, PublishDelay, parse_config
from sdbridge.discovery.base import DiscoveryContext, MechanismStatus
from sdbridge.discovery.exec import ExecDiscoverer, ExecSDConfig, parse_exec_output
from sdbridge.errors import DiscoveryError, InvalidTargetError
from sdbridge.job import Job

from .fakes import RecordingOutput, running, until

GOOD = '[{"targets": ["127.0.0.1:9100"], "labels": {"env": "dev"}}]'

# The script prints what the test put in "mode": a good set, or one kind of failure.
SCRIPT = r"""#!/bin/sh
echo $$ > pids
case "$(cat mode)" in
  good) cat good.json ;;
  yaml) printf -- '- targets: [127.0.0.2:9100]\n  labels:\n    env: "yaml"\n' ;;
  garbage) echo 'this is { not JSON' ; echo 'nor: [yaml' ;;
  badlabel) echo '[{"targets": ["127.0.0.1:9100"], "labels": {"1abc": "x"}}]' ;;
  badaddress) echo '[{"targets": ["no-port"]}]' ;;
  fail) echo "backend is down" >&2 ; exit 3 ;;
  empty) ;;
  hang) sleep 300 & echo $! >> pids ; sleep 300 ;;
  missing) exec /nonexistent/command ;;
esac
"""


class ExecHarness:
    """A Job with one exec mechanism running SCRIPT in ``workdir``."""

    def __init__(self, workdir: Path, *, timeout: str = "10s") -> None:
        self.workdir = workdir
        (workdir / "good.json").write_text(GOOD)
        script = workdir / "targets.sh"
        script.write_text(SCRIPT)
        script.chmod(0o755)
        self.set_mode("good")
        config = parse_config(
            {
                "jobs": [
                    {
                        "name": "exec",
                        "exec_sd_configs": [
                            # Relative command: runs in the config's directory.
                            {
                                "command": ["./targets.sh"],
                                "refresh_interval": "1h",
                                "timeout": timeout,
                            }
                        ],
                    }
                ]
            },
            base_dir=workdir,
        )
        global_config = GlobalConfig(
            publish_delay=PublishDelay.model_validate({"min": "0s", "max": "0s"})
        )
        self.output = RecordingOutput()
        self.job = Job(config.jobs[0], global_config, extra_outputs=[self.output])
        self.runner = self.job.runners[0]

    def set_mode(self, mode: str) -> None:
        (self.workdir / "mode").write_text(mode)

    @property
    def status(self) -> MechanismStatus:
        return self.runner.context.status

    async def refresh(self) -> None:
        """Trigger one refresh and wait until it completed."""
        before = self.status.refreshes
        self.runner.discoverer.request_refresh()  # type: ignore[attr-defined]
        await until(lambda: self.status.refreshes > before, within=20)

    def pids(self) -> list[int]:
        return [int(p) for p in (self.workdir / "pids").read_text().split()]


def gone(pid: int) -> bool:
    """The process no longer exists, or is a zombie that is not ours to reap."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    return fields["State"].startswith("Z") and int(fields["PPid"]) != os.getpid()


def reaped(pid: int) -> bool:
    """Our child ``pid`` was already waited for (so it is no zombie of ours)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


@pytest.fixture
def harness(tmp_path: Path) -> ExecHarness:
    return ExecHarness(tmp_path)


async def test_good_output_is_published(harness: ExecHarness) -> None:
    async with running(harness.job):
        snapshot = await asyncio.wait_for(harness.job.wait_published(), 20)
    assert orjson.loads(snapshot.body) == [
        {"labels": {"env": "dev"}, "targets": ["127.0.0.1:9100"]}
    ]
    assert harness.status.last_error is None


async def test_yaml_output(harness: ExecHarness) -> None:
    harness.set_mode("yaml")
    async with running(harness.job):
        snapshot = await asyncio.wait_for(harness.job.wait_published(), 20)
    assert orjson.loads(snapshot.body) == [
        {"labels": {"env": "yaml"}, "targets": ["127.0.0.2:9100"]}
    ]


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("garbage", "neither JSON nor YAML"),
        ("badlabel", "invalid label name '1abc'"),
        ("badaddress", "'no-port' is not host:port"),
        ("fail", "exited with status 3; stderr: backend is down"),
        ("empty", "printed nothing"),
        ("missing", "exited with status 127"),
    ],
)
async def test_a_failing_refresh_keeps_the_last_good_set(
    harness: ExecHarness, mode: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(harness.job):
        good = await asyncio.wait_for(harness.job.wait_published(), 20)
        harness.set_mode(mode)
        with caplog.at_level(logging.ERROR, logger="sdbridge"):
            await harness.refresh()
        assert message in (harness.status.last_error or "")
        assert harness.job.snapshot is good
        assert harness.output.snapshots == [good]
        # Logged once, naming the job and the command.
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1
        assert message in errors[0].getMessage()
        assert "./targets.sh" in errors[0].getMessage()
        assert errors[0].job == "exec"  # type: ignore[attr-defined]
        # And it recovers.
        harness.set_mode("good")
        await harness.refresh()
        assert harness.status.last_error is None


async def test_a_missing_command(tmp_path: Path) -> None:
    config = ExecSDConfig(command=["./no-such-command"]).resolve_paths(tmp_path)

    discoverer = ExecDiscoverer(config, DiscoveryContext(job="j", mechanism="exec"))
    with pytest.raises(DiscoveryError, match=r"cannot run ./no-such-command in .*: No such file"):
        await discoverer.refresh()


async def test_a_missing_command_through_a_job_keeps_the_last_good_set(
    harness: ExecHarness,
) -> None:
    async with running(harness.job):
        good = await asyncio.wait_for(harness.job.wait_published(), 20)
        (harness.workdir / "targets.sh").rename(harness.workdir / "moved.sh")
        await harness.refresh()
        assert "cannot run ./targets.sh" in (harness.status.last_error or "")
        assert harness.job.snapshot is good


async def test_a_hanging_command_is_killed_with_its_children(tmp_path: Path) -> None:
    harness = ExecHarness(tmp_path, timeout="300ms")
    async with running(harness.job):
        good = await asyncio.wait_for(harness.job.wait_published(), 20)
        harness.set_mode("hang")
        await harness.refresh()
        assert "timed out after 0.3s and was killed" in (harness.status.last_error or "")
        assert harness.job.snapshot is good
        script_pid, child_pid = harness.pids()
        await until(lambda: gone(script_pid) and gone(child_pid), within=5)
        assert reaped(script_pid)


async def test_cancelling_kills_the_running_command(tmp_path: Path) -> None:
    harness = ExecHarness(tmp_path, timeout="5m")
    harness.set_mode("hang")
    task = asyncio.create_task(harness.job.run())
    try:
        pids = tmp_path / "pids"
        await until(lambda: pids.exists() and len(pids.read_text().split()) == 2)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    script_pid, child_pid = harness.pids()
    await until(lambda: gone(script_pid) and gone(child_pid), within=5)
    assert reaped(script_pid)
    assert harness.job.snapshot is None


async def test_background_children_of_a_finished_command_are_killed(tmp_path: Path) -> None:
    script = tmp_path / "bg.sh"
    script.write_text(
        textwrap.dedent(
            """\
            #!/bin/sh
            sleep 300 > /dev/null 2>&1 &
            echo $! > child
            echo '[]'
            """
        )
    )
    script.chmod(0o755)
    config = ExecSDConfig(command=["./bg.sh"]).resolve_paths(tmp_path)

    discoverer = ExecDiscoverer(config, DiscoveryContext(job="j", mechanism="exec"))
    assert await discoverer.refresh() == []
    child = int((tmp_path / "child").read_text())
    await until(lambda: gone(child), within=5)


async def test_env_and_working_dir(tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    config = parse_config(
        {
            "jobs": [
                {
                    "name": "j",
                    "exec_sd_configs": [
                        {
                            "command": [
                                "sh",
                                "-c",
                                'printf \'[{"targets":["127.0.0.1:1"],"labels":{"dir":"%s","x":"%s"}}]\' "$(pwd)" "$X"',
                            ],
                            "env": {"X": "from env"},
                            "working_dir": "sub",
                        }
                    ],
                }
            ]
        },
        base_dir=tmp_path,
    )
    exec_config = config.jobs[0].mechanism_configs()[0][1]
    assert isinstance(exec_config, ExecSDConfig)
    assert exec_config.working_dir == sub

    groups = await ExecDiscoverer(
        exec_config, DiscoveryContext(job="j", mechanism="exec")
    ).refresh()
    assert groups[0].labels == {"dir": str(sub), "x": "from env"}


def test_working_dir_defaults_to_the_config_dir(tmp_path: Path) -> None:
    assert ExecSDConfig(command=["x"]).resolve_paths(tmp_path).working_dir == tmp_path
    absolute = ExecSDConfig(command=["x"], working_dir=Path("/opt")).resolve_paths(tmp_path)
    assert absolute.working_dir == Path("/opt")


@pytest.mark.parametrize(
    ("stdout", "message"),
    [
        (b"", "printed nothing"),
        (b"  \n", "printed nothing"),
        (b"\xff\xfe", "neither JSON nor YAML"),
        (b"[{]", "neither JSON nor YAML"),
        (b"hello", "expected a list of target groups, got str"),
        (b"[null]", "group 0: expected a mapping"),
        (b'[{"targets": [], "oops": 1}]', "unknown field(s) 'oops'"),
    ],
)
def test_parse_exec_output_rejects(stdout: bytes, message: str) -> None:
    with pytest.raises(InvalidTargetError, match=r"^output of x: ") as info:
        parse_exec_output(stdout, origin="output of x")
    assert message in str(info.value)


def test_parse_exec_output_accepts_json_and_yaml() -> None:
    as_json = parse_exec_output(GOOD.encode(), origin="x")
    as_yaml = parse_exec_output(
        b"- targets: ['127.0.0.1:9100']\n  labels: {env: dev}\n", origin="x"
    )
    assert as_json == as_yaml


def test_yaml_scalars_are_label_text_as_in_prometheus() -> None:
    # Prometheus's yaml.v2 decodes any scalar into a label value as its text.
    [group] = parse_exec_output(
        b"- targets: [127.0.0.1:9100]\n  labels: {port: 80, on: true, ratio: 0.50, day: 2024-01-02}\n",
        origin="x",
    )
    assert group.labels == {"port": "80", "on": "true", "ratio": "0.50", "day": "2024-01-02"}


def test_a_yaml_null_entry_is_still_rejected() -> None:
    with pytest.raises(InvalidTargetError, match="group 0: expected a mapping"):
        parse_exec_output(b"- ~\n", origin="x")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["targets", "labels", "x", "1abc", "a"]), children, max_size=3
        )
    ),
    max_leaves=12,
)


@given(st.binary(max_size=200))
def test_any_output_parses_or_fails_cleanly(stdout: bytes) -> None:
    with contextlib.suppress(InvalidTargetError):
        parse_exec_output(stdout, origin="x")


@given(json_values)
def test_any_json_document_parses_or_fails_cleanly(data: object) -> None:
    with contextlib.suppress(InvalidTargetError):
        parse_exec_output(orjson.dumps(data), origin="x")


@pytest.mark.parametrize(
    "stdout",
    [b"[" * 100_000, b"- " * 5000 + b"x", b"!!python/object:os.system ls", b"&a [*a]", b"\x00\x01"],
)
def test_hostile_output_fails_cleanly(stdout: bytes) -> None:
    with pytest.raises(InvalidTargetError):
        parse_exec_output(stdout, origin="x")
