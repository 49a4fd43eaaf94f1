"""``exec_sd_configs``: run a command and read file_sd JSON or YAML from its stdout.

Any failure (missing command, non-zero exit, timeout, unparsable output, invalid
labels) fails the refresh, so the last good targets stay; stderr is logged.
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
from pydantic import Field

from ..durations import Duration
from ..errors import DiscoveryError, InvalidTargetError
from ..model import TargetGroup, parse_file_sd
from . import register
from .base import RefreshConfig, RefreshDiscoverer

_STDERR_TAIL = 2000


class ExecSDConfig(RefreshConfig):
    """One ``exec_sd_configs`` entry."""

    command: list[str] = Field(min_length=1, description="argv of the command; no shell")
    timeout: Duration = Field(30.0, description="kill the command after this long")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment")
    working_dir: Path | None = Field(None, description="directory to run the command in")


@register("exec", ExecSDConfig)
class ExecDiscoverer(RefreshDiscoverer[ExecSDConfig]):
    """Runs ``command`` every ``refresh_interval``; its stdout is the full target list."""

    async def refresh(self) -> list[TargetGroup]:
        """Run the command once and parse its output."""
        cfg = self.config
        shown = shlex.join(cfg.command)
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
            raise DiscoveryError(f"cannot run {shown}: {exc.strerror or exc}") from exc
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), cfg.timeout)
        except TimeoutError:
            await _kill(proc)
            raise DiscoveryError(
                f"{shown} timed out after {cfg.timeout:g}s and was killed"
            ) from None
        except BaseException:
            await _kill(proc)  # cancelled: leave no process and no zombie behind
            raise
        err_text = stderr.decode("utf-8", "replace").strip()[-_STDERR_TAIL:]
        if proc.returncode != 0:
            raise DiscoveryError(f"{shown} exited with status {proc.returncode}: {err_text}")
        if err_text:
            self.log.info("%s wrote to stderr: %s", shown, err_text)
        return parse_exec_output(stdout, origin=f"output of {shown}")


def parse_exec_output(stdout: bytes, *, origin: str) -> list[TargetGroup]:
    """Parse file_sd JSON, or YAML, from a command's stdout."""
    try:
        data = orjson.loads(stdout)
    except orjson.JSONDecodeError:
        try:
            data = yaml.safe_load(stdout.decode("utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise InvalidTargetError(f"{origin}: neither JSON nor YAML: {exc}") from exc
    return parse_file_sd(data, origin=origin)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    # Reap it even while being cancelled, so no zombie is left.
    await asyncio.shield(proc.wait())
