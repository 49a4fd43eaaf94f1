"""The ``sdbridge`` command: ``run``, ``check``, ``once``, ``register``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .config import DEFAULT_MAX_CONFIG_SIZE, ConfigBase, load_config, parse_size
from .daemon import Daemon
from .defaults import banner, default_config
from .discovery.check import check_backends
from .durations import parse_duration
from .errors import ConfigError, SdbridgeError
from .job import Job
from .logfmt import setup_logging
from .masking import mask_text
from .registry import api as registry_api
from .registry import client as registry_client
from .web.server import DEFAULT_LISTEN_ADDRESS, start_server

log = logging.getLogger("sdbridge")


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
        prog="sdbridge", description="Bridge any service registry to Prometheus."
    )
    parser.add_argument("--version", action="version", version=f"sdbridge {__version__}")
    _log_flags(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", parents=[common], help="run every job until stopped")
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
        "--web.config.file", dest="web_config", type=Path, help="TLS and basic auth config"
    )

    _config_size_flag(run)
    check = commands.add_parser("check", parents=[common], help="validate a config file")
    check.add_argument("config", type=Path)
    _config_size_flag(check)
    check.add_argument(
        "--check.connect",
        dest="check_connect",
        action="store_true",
        help="also reach the backends that support it (sql_sd: run the query, check columns)",
    )

    once = commands.add_parser(
        "once", parents=[common], help="run one complete discovery pass, write outputs, exit"
    )
    once.add_argument("--config.file", "--config", dest="config", type=Path, required=True)
    _config_size_flag(once)
    once.add_argument(
        "--timeout",
        type=_duration_arg,
        default=300.0,
        help="fail a job whose mechanisms have not all synced after this long (default 5m)",
    )
    registry_client.add_parser(commands, [common])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sdbridge`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    setup_logging("warning" if args.log_level == "warn" else args.log_level, args.log_format)
    try:
        if args.command == "check":
            return _check(args.config, args.config_max_size, connect=args.check_connect)
        if args.command == "once":
            config = load_config(args.config, max_size=args.config_max_size)
            return asyncio.run(_once(config, args.timeout))
        if args.command == "register":
            return asyncio.run(registry_client.run_register(args))
        return asyncio.run(_run(args))
    except ConfigError as exc:
        print(f"sdbridge: invalid configuration:\n{mask_text(str(exc))}", file=sys.stderr)
        return 1
    except SdbridgeError as exc:
        print(f"sdbridge: {mask_text(str(exc))}", file=sys.stderr)
        return 1


def _check(path: Path, max_size: int, *, connect: bool = False) -> int:
    config = load_config(path, max_size=max_size)
    if connect and (failures := asyncio.run(check_backends(config.jobs))):
        print("sdbridge: " + "\n".join(failures), file=sys.stderr)
        return 1
    mechanisms = sum(len(job.mechanism_configs()) for job in config.jobs)
    print(f"{path}: OK ({len(config.jobs)} job(s), {mechanisms} mechanism(s))")
    return 0


async def _once(config: ConfigBase, within: float | None = None) -> int:
    failures = 0
    for job_config in config.jobs:
        job = Job(job_config, config.global_)
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
    config = load_config(path, max_size=max_size) if path is not None else default_config()
    loader = (lambda: load_config(path, max_size=max_size)) if path is not None else None
    daemon = Daemon(config, config_path=path, config_loader=loader)
    address = args.listen_address or config.web.listen_address or DEFAULT_LISTEN_ADDRESS
    server = await start_server(
        daemon,
        address,
        args.web_config,
        route_hooks=[registry_api.registry_routes(daemon)],
        max_config_size=max_size,
    )
    await registry_api.server_listening(server.runner.app, server.url)
    daemon.start()
    if args.config is None:
        print(banner(config, server.url), flush=True)
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
    await daemon.stop()
    await server.close()
    return 0


_background: set[asyncio.Task[None]] = set()


def _reload_in_background(daemon: Daemon) -> None:
    async def reload() -> None:
        with contextlib.suppress(ConfigError):  # already logged and counted
            await daemon.reload()

    task = asyncio.create_task(reload())
    _background.add(task)
    task.add_done_callback(_background.discard)
