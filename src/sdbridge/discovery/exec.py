"""``exec_sd_configs``: run a command and read file_sd JSON or YAML from its stdout.

Any failure (missing command, non-zero exit, timeout, unparsable output, invalid
labels) fails the refresh, so the last good targets stay; stderr is logged.
The command runs in its own process group (session), which is killed when the
command finishes, times out or is cancelled, so it leaves no process behind.
The command runs in the config file's directory unless ``working_dir`` says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
from pathlib import Path

import orjson
import yaml
from pydantic import Field, field_validator

from ..durations import Duration
from ..errors import DiscoveryError, InvalidTargetError
from ..masking import mask_argv
from ..model import TargetGroup, parse_file_sd
from ..yamlload import UniqueKeyLoader, YAMLProblem, load_yaml
from . import register
from .base import RefreshConfig, RefreshDiscoverer, resolve_path

_STDERR_TAIL = 2000


class ExecSDConfig(RefreshConfig):
    """One ``exec_sd_configs`` entry."""

    command: list[str] = Field(min_length=1, description="argv of the command; no shell")
    timeout: Duration = Field(30.0, description="kill the command after this long")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment")
    working_dir: Path | None = Field(
        None, description="directory to run the command in; default: the config file's"
    )

    @field_validator("command")
    @classmethod
    def _non_empty_program(cls, value: list[str]) -> list[str]:
        if not value[0]:
            raise ValueError("the program (first element) must not be empty")
        return value

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("timeout must be greater than 0")
        return value

    def resolve_paths(self, base_dir: Path) -> ExecSDConfig:
        """Run in the config file's directory by default; a relative ``working_dir`` is under it."""
        working_dir = (
            base_dir if self.working_dir is None else resolve_path(self.working_dir, base_dir)
        )
        return self.model_copy(update={"working_dir": working_dir})


@register("exec", ExecSDConfig)
class ExecDiscoverer(RefreshDiscoverer[ExecSDConfig]):
    """Runs ``command`` every ``refresh_interval``; its stdout is the full target list."""

    _last_stderr = ""  # stderr of a successful run is logged when it changes, not every run

    async def refresh(self) -> list[TargetGroup]:
        """Run the command once and parse its output."""
        cfg = self.config
        shown = shlex.join(mask_argv(cfg.command))  # errors and logs never show secrets
        self.context.count_request()  # the command is this mechanism's backend
        try:
            proc = await asyncio.create_subprocess_exec(
                *cfg.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, **cfg.env} if cfg.env else None,
                cwd=cfg.working_dir,
                start_new_session=True,  # its own process group, so a kill reaches children
            )
        except OSError as exc:
            what = f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else exc
            where = f" in {cfg.working_dir}" if cfg.working_dir is not None else ""
            raise DiscoveryError(f"cannot run {shown}{where}: {what}") from exc
        try:
            # Not wait_for: on 3.11 it can lose a cancellation (see base.wait_event).
            async with asyncio.timeout(cfg.timeout):
                stdout, stderr = await proc.communicate()
        except TimeoutError:
            await _kill(proc)
            raise DiscoveryError(
                f"{shown} timed out after {cfg.timeout:g}s and was killed"
            ) from None
        except BaseException:
            await _kill(proc)  # cancelled: leave no process and no zombie behind
            raise
        # Children it left running in the background go too (they are in its group).
        _kill_group(proc.pid)
        err_text = stderr.decode("utf-8", "replace").strip()[-_STDERR_TAIL:]
        if proc.returncode:  # not None: communicate() waited for the exit
            status = _describe_status(proc.returncode)
            raise DiscoveryError(f"{shown} {status}; stderr: {err_text or '(empty)'}")
        if err_text and err_text != self._last_stderr:
            self.log.warning("%s wrote to stderr: %s", shown, err_text)
        self._last_stderr = err_text
        return parse_exec_output(stdout, origin=f"output of {shown}")


class _FileSDLoader(UniqueKeyLoader):
    """YAML as Prometheus's file_sd reads it into strings: ``port: 80`` is the label "80".

    Go's yaml.v2 decodes any scalar into a string field as its text; PyYAML would make
    it an int (or a bool, a float, a date) that is then no valid label value.
    """


def _scalar_text(loader: UniqueKeyLoader, node: yaml.ScalarNode) -> str:
    return str(loader.construct_scalar(node))


for _tag in ("bool", "int", "float", "timestamp"):
    _FileSDLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _scalar_text)


def parse_exec_output(stdout: bytes, *, origin: str) -> list[TargetGroup]:
    """Parse file_sd JSON, or YAML, from a command's stdout."""
    if not stdout.strip():
        raise InvalidTargetError(f"{origin}: the command printed nothing; print [] for no targets")
    try:
        data = orjson.loads(stdout)
    except orjson.JSONDecodeError:
        try:
            data = load_yaml(stdout.decode("utf-8"), _FileSDLoader)
        except UnicodeDecodeError as exc:
            raise InvalidTargetError(f"{origin}: neither JSON nor YAML: {exc}") from exc
        except YAMLProblem as exc:
            if exc.messages[0].startswith("invalid YAML"):
                raise InvalidTargetError(f"{origin}: neither JSON nor YAML: {exc}") from None
            raise InvalidTargetError(f"{origin}: {'; '.join(exc.messages)}") from None
    return parse_file_sd(data, origin=origin)


def _describe_status(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    # The whole group: a shell script's children would otherwise keep running.
    _kill_group(proc.pid)
    # Reap it even while being cancelled, so no zombie is left.
    await asyncio.shield(proc.wait())
