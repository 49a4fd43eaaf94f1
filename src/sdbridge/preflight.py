"""What ``sdbridge check`` verifies beyond the config's shape: everything ``run`` needs first.

A config can be valid YAML of the right shape and still fail at start: a token file that
is missing, an exec command that is not executable, an output directory that cannot be
created, a listen address that does not parse. :func:`preflight` finds all of those at
once, without touching the network and without creating anything, so ``check`` passes
exactly the configs ``run`` starts with. Reaching the backends is the opt-in
``check --check.connect``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .config import DEFAULT_MAX_CONFIG_SIZE, ConfigBase
from .discovery.exec import ExecSDConfig
from .errors import ConfigError
from .web.server import parse_listen_address
from .web.webconfig import load_web_config
from .yamlload import format_location


def preflight(
    config: ConfigBase,
    origin: str,
    *,
    listen_address: str | None = None,
    web_config: Path | None = None,
    max_size: int = DEFAULT_MAX_CONFIG_SIZE,
) -> list[str]:
    """Every problem ``run`` would stop at before serving, each naming where; [] if none."""
    problems = [f"{origin}: {message}" for message in _config_problems(config)]
    address = listen_address or config.web.listen_address
    if address is not None:
        try:
            parse_listen_address(address)
        except ConfigError:
            where = "--web.listen-address" if listen_address else f"{origin}: web.listen_address"
            problems.append(f"{where}: {address!r} is not host:port (e.g. 127.0.0.1:9099)")
    if web_config is not None:
        try:
            load_web_config(web_config, max_size=max_size)
        except ConfigError as exc:
            problems.extend(exc.errors or [str(exc)])
    return problems


def _config_problems(config: ConfigBase) -> Iterator[str]:
    for loc, path in _files(config, ()):
        if loc[-2:] == ("output", "file"):
            continue  # written, not read: checked with its directory below
        yield from _readable(loc, path)
    yield from _writable_dir(("global", "data_dir"), config.global_.data_dir)
    for index, job in enumerate(config.jobs):
        if job.output.file is not None:
            yield from _writable_dir(("jobs", index, "output", "file"), job.output.file.parent)
        for position, entry in enumerate(getattr(job, "exec_sd_configs", ())):
            if isinstance(entry, ExecSDConfig):
                yield from _executable(("jobs", index, "exec_sd_configs", position), entry)


def _files(value: Any, loc: tuple[int | str, ...]) -> Iterator[tuple[tuple[int | str, ...], Path]]:
    """Every ``*_file`` path in the config, with its location."""
    if isinstance(value, BaseModel):
        for name, field in type(value).model_fields.items():
            key = field.alias or name
            item = getattr(value, name)
            if isinstance(item, Path) and (key.endswith("_file") or key == "file"):
                yield (*loc, key), item
            else:
                yield from _files(item, (*loc, key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _files(item, (*loc, index))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _files(item, (*loc, str(key)))


def _readable(loc: tuple[int | str, ...], path: Path) -> Iterator[str]:
    where = format_location(loc)
    if not path.exists():
        yield f"{where}: {path}: file not found"
    elif not path.is_file():
        yield f"{where}: {path}: not a file"
    elif not os.access(path, os.R_OK):
        yield f"{where}: {path}: not readable by this user"


def _writable_dir(loc: tuple[int | str, ...], directory: Path) -> Iterator[str]:
    # run creates missing directories, so the nearest existing ancestor must take them.
    where = format_location(loc)
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        created = "" if existing == directory else f", so {directory} cannot be created"
        yield f"{where}: {existing} is not a directory{created}"
    elif not os.access(existing, os.W_OK | os.X_OK):
        verb = "write to" if existing == directory else f"create {directory} in"
        yield f"{where}: cannot {verb} {existing} (permission denied for this user)"


def _executable(loc: tuple[int | str, ...], entry: ExecSDConfig) -> Iterator[str]:
    where = format_location((*loc, "command"))
    program = entry.command[0]
    if "/" in program:
        path = Path(program)
        if not path.is_absolute() and entry.working_dir is not None:
            path = entry.working_dir / path
        if not path.is_file():
            yield f"{where}: {path}: no such program"
        elif not os.access(path, os.X_OK):
            yield f"{where}: {path}: not executable (chmod +x it)"
    elif shutil.which(program, path=entry.env.get("PATH")) is None:
        yield f"{where}: {program!r} is not on the PATH"
    if entry.working_dir is not None and not entry.working_dir.is_dir():
        yield f"{format_location((*loc, 'working_dir'))}: {entry.working_dir}: no such directory"
