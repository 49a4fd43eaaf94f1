"""The ``sdbridge`` command: ``run``, ``check``, ``once``, ``register``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import functools
import logging
import os
import shlex
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import DEFAULT_MAX_CONFIG_SIZE, ConfigBase, load_config, parse_size
from .daemon import Daemon
from .defaults import ORIGIN, banner, default_config
from .discovery.check import check_backends
from .durations import parse_duration
from .errors import ConfigError, SdbridgeError
from .job import Job
from .logfmt import setup_logging
from .masking import mask_text
from .preflight import preflight
from .registry import client as registry_client
from .registry import migrate as registry_migrate
from .registry.store import StoreHandle
from .version import version_text
from .web import flags as web_flags
from .web import registry_api
from .web.server import DEFAULT_LISTEN_ADDRESS, start_server

log = logging.getLogger("sdbridge")

# The docs ship with the source; no hosted copy exists yet.
DOCS = "docs"


def _log_flags(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    # Accepted before and after the command; a subcommand's flag must not reset the
    # top-level one, so only the top level has defaults.
    level_default = "info" if defaults else argparse.SUPPRESS
    format_default = "logfmt" if defaults else argparse.SUPPRESS
    parser.add_argument(
        "--log.level",
        dest="log_level",
        default=level_default,
        choices=["debug", "info", "warn", "error"],
        help="log level (default info)",
    )
    parser.add_argument(
        "--log.format",
        dest="log_format",
        default=format_default,
        choices=["logfmt", "json"],
        help="log format (default logfmt)",
    )


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _config_size_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config.max-size",
        dest="config_max_size",
        type=_size_arg,
        default=DEFAULT_MAX_CONFIG_SIZE,
        help="refuse a config or web config file larger than this (default 16MiB)",
    )


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _log_flags(common, defaults=False)

    parser = argparse.ArgumentParser(
        prog="sdbridge",
        description="Bridge any service registry to Prometheus: discover targets and "
        "publish them as file_sd files and http_sd endpoints.",
        epilog=_epilog(
            "sdbridge run                      # the built-in registry, no config needed\n"
            "  sdbridge check sdbridge.yml       # validate a config before running it\n"
            "  sdbridge run --config.file sdbridge.yml",
            "quickstart.md",
        ),
        formatter_class=_Help,
    )
    parser.add_argument(
        "--version", action="version", version=version_text(), help="print the version and revision"
    )
    _log_flags(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    command = functools.partial(_command, commands, common)
    run = command(
        "run",
        "run every job until stopped",
        "Run every job of the config until SIGINT or SIGTERM; SIGHUP reloads the config. "
        "Without --config.file, run the built-in registry job.",
        "sdbridge run --config.file sdbridge.yml --web.listen-address 127.0.0.1:9100",
    )
    run.add_argument(
        "--config.file",
        "--config",
        dest="config",
        type=Path,
        help="config file (default: the built-in registry job, see docs/quickstart.md)",
    )
    run.add_argument(
        "--web.listen-address",
        dest="listen_address",
        help=f"address to serve http_sd, API, UI and metrics on (default {DEFAULT_LISTEN_ADDRESS})",
    )
    run.add_argument(
        "--web.config.file",
        dest="web_config",
        type=Path,
        help="TLS and basic auth for the web server (exporter-toolkit format, see docs/web.md)",
    )
    web_flags.add_flags(run)

    _config_size_flag(run)
    check = command(
        "check",
        "validate a config file",
        "Check a config file (and a web config file) for everything run checks before "
        "serving: shape, files it names, exec commands, directories, listen address. All "
        "problems are reported at once; exit status 1 if any.",
        "sdbridge check sdbridge.yml --web.config.file web.yml\n"
        "  sdbridge check sdbridge.yml --check.connect   # also reach every backend",
    )
    check.add_argument(
        "config", type=Path, nargs="?", metavar="CONFIG", help="the config file to check"
    )
    _config_size_flag(check)
    check.add_argument(
        "--web.config.file",
        dest="web_config",
        type=Path,
        help="also check this web config file (TLS and basic auth), as run would load it",
    )
    check.add_argument(
        "--web.listen-address",
        dest="listen_address",
        help="also check the listen address run would be given",
    )
    check.add_argument(
        "--check.connect",
        "--connect",
        dest="check_connect",
        action="store_true",
        help="also reach every backend: the mechanisms' own checks (sql_sd: run the query, "
        "check columns), then one discovery pass per job; nothing is written",
    )
    check.add_argument(
        "--timeout",
        type=_duration_arg,
        default=30.0,
        help="with --check.connect: fail a job that has not synced after this long (default 30s)",
    )

    once = command(
        "once",
        "run one complete discovery pass, write outputs, exit",
        "Run every job until each of its mechanisms has synced once, write the output "
        "files, and exit: for cron jobs and CI. Exit status 1 if a job failed.",
        "sdbridge once --config.file sdbridge.yml --timeout 1m",
    )
    once.add_argument(
        "--config.file",
        "--config",
        dest="config",
        type=Path,
        required=True,
        help="the config file whose jobs to run",
    )
    _config_size_flag(once)
    once.add_argument(
        "--timeout",
        type=_duration_arg,
        default=300.0,
        help="fail a job whose mechanisms have not all synced after this long (default 5m)",
    )
    registry_client.add_parser(commands, [common])
    commands.choices["register"].formatter_class = _Help
    registry_migrate.add_parser(commands, [common])
    return parser


class _Help(argparse.HelpFormatter):
    """Wraps descriptions; keeps the epilog's example lines as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("example:"):
            return text
        return super()._fill_text(text, width, indent)


def _command(
    commands: Any,
    common: argparse.ArgumentParser,
    name: str,
    summary: str,
    description: str,
    example: str,
    page: str = "configuration.md",
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        parents=[common],
        help=summary,
        description=description,
        epilog=_epilog(example, page),
        formatter_class=_Help,
    )
    return parser


def _epilog(example: str, page: str) -> str:
    return f"example:\n  {example}\n\ndocs: {DOCS}/{page}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sdbridge`` command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    setup_logging("warning" if args.log_level == "warn" else args.log_level, args.log_format)
    try:
        if args.command == "check":
            return _check(args)
        if args.command == "once":
            config = _load_jobs(args.config, args.config_max_size)
            return asyncio.run(_once(config, args.timeout))
        if args.command == "register":
            return asyncio.run(registry_client.run_register(args))
        if args.command == "registry":
            config = load_config(args.config)
            migrate = registry_migrate.run_migrate(args, config.registry, config.global_.data_dir)
            return asyncio.run(migrate)
        return asyncio.run(_run(args))
    except ConfigError as exc:
        print(f"sdbridge: invalid configuration:\n{mask_text(str(exc))}", file=sys.stderr)
        return 1
    except SdbridgeError as exc:
        print(f"sdbridge: {mask_text(str(exc))}", file=sys.stderr)
        return 1


def _load_jobs(path: Path, max_size: int) -> ConfigBase:
    """Load a config that run and once can use: one with at least one job."""
    config = load_config(path, max_size=max_size)
    if not config.jobs:
        raise ConfigError(
            f"{path}: no jobs; add at least one under jobs: (see {DOCS}/configuration.md)"
        )
    return config


def _check(args: argparse.Namespace) -> int:
    path: Path | None = args.config
    if path is None and args.web_config is None:
        print(
            "sdbridge check: give a config file, --web.config.file FILE, or both", file=sys.stderr
        )
        return 2
    max_size = args.config_max_size
    config = load_config(path, max_size=max_size) if path is not None else default_config()
    origin = str(path) if path is not None else ORIGIN
    problems = preflight(
        config,
        origin,
        listen_address=args.listen_address,
        web_config=args.web_config,
        max_size=max_size,
    )
    if problems:
        raise ConfigError("\n".join(problems), errors=problems)
    reached: list[str] = []
    if args.check_connect and path is not None:
        failures, reached = asyncio.run(_connect(config, args.timeout))
        if failures:
            print("sdbridge: " + mask_text("\n".join(failures)), file=sys.stderr)
            return 1
    if path is not None:
        mechanisms = sum(len(job.mechanism_configs()) for job in config.jobs)
        print(f"{path}: OK ({len(config.jobs)} job(s), {mechanisms} mechanism(s))")
        if not config.jobs:
            print(f"{path}: warning: no jobs; run and once refuse a config without jobs")
    if args.web_config is not None:
        print(f"{args.web_config}: OK (web config)")
    for line in reached:
        print(line)
    return 0


async def _connect(config: ConfigBase, within: float) -> tuple[list[str], list[str]]:
    """Reach every backend: the mechanisms' own checks, then one discovery pass per job.

    Nothing is written anywhere. Returns the failures and a line per job reached.
    """
    failures = await check_backends(config.jobs)
    reached = []
    for job_config in config.jobs:
        try:
            snapshot = await Job(job_config, config.global_).sync_once(within)
        except SdbridgeError as exc:
            failures.append(str(exc))
            continue
        reached.append(f"{job_config.name}: reached, {snapshot.target_count} target(s)")
    return failures, reached


async def _once(config: ConfigBase, within: float | None = None) -> int:
    # One registry store for every job, on the configured backend (SQLite or etcd).
    registry = StoreHandle(config.registry)
    try:
        return await _once_jobs(config, registry, within)
    finally:
        await registry.close()


async def _once_jobs(config: ConfigBase, registry: StoreHandle, within: float | None) -> int:
    failures = 0
    for job_config in config.jobs:
        job = Job(job_config, config.global_, registry_store=registry)
        try:
            snapshot = await job.sync_once(within)
            if job.file_output is not None:
                await job.file_output.write_now(snapshot)
        except SdbridgeError as exc:
            print(f"sdbridge: {mask_text(str(exc))}", file=sys.stderr)
            failures += 1
            continue
        where = job.file_output.path if job.file_output is not None else "(no file output)"
        print(f"{job.name}: {snapshot.target_count} target(s) -> {where}")
    return 1 if failures else 0


async def _run(args: argparse.Namespace) -> int:
    # No config file: the built-in default (sdbridge's own registry, see defaults.py).
    max_size = args.config_max_size
    path = args.config
    config = _load_jobs(path, max_size) if path is not None else default_config()
    loader = (lambda: load_config(path, max_size=max_size)) if path is not None else None
    daemon = Daemon(config, config_path=path, config_loader=loader)
    address = args.listen_address or config.web.listen_address or DEFAULT_LISTEN_ADDRESS
    try:
        server = await start_server(
            daemon,
            address,
            args.web_config,
            route_hooks=[registry_api.registry_routes(daemon)],
            max_config_size=max_size,
            flags=web_flags.from_args(args),
        )
    except ConfigError as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
            raise SdbridgeError(
                f"cannot listen on {address}: the port is already in use (another sdbridge "
                "running?); stop it, or listen elsewhere with --web.listen-address HOST:PORT"
            ) from None
        raise
    await registry_api.server_listening(server.runner.app, server.url)
    daemon.start()
    if args.config is None:
        print(banner(config, server.url, invoked_as()), flush=True)
    log.info(
        "sdbridge %s listening on %s with %d job(s)", __version__, server.url, len(daemon.jobs)
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload_in_background(daemon))
    await stop.wait()
    log.info("shutting down")
    await server.close()  # first: it deregisters sdbridge itself from the daemon's store
    await daemon.stop()
    return 0


def invoked_as(argv0: str | None = None) -> str:
    """How the user started sdbridge, to paste back: ``sdbridge`` or ``.venv/bin/sdbridge``."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    if not os.path.isfile(argv0):  # embedded, e.g. python -c; "sdbridge" is the best guess
        return "sdbridge"
    name = os.path.basename(argv0)
    found = shutil.which(name)
    # A script found on the PATH arrives as its full path; the bare name is what was typed.
    if found is not None and os.path.samefile(found, argv0):
        return name
    return shlex.quote(argv0)


_background: set[asyncio.Task[None]] = set()


def _reload_in_background(daemon: Daemon) -> None:
    async def reload() -> None:
        with contextlib.suppress(ConfigError):  # already logged and counted
            await daemon.reload()

    task = asyncio.create_task(reload())
    _background.add(task)
    task.add_done_callback(_background.discard)
