"""``sdbridge registry export`` / ``import``: move the registry between backends.

One JSON object per line and instance, sorted by service and instance::

    {"service": "api", "instance": "a1", "address": "10.0.0.5:9100", "labels": {},
     "ttl": 30.0, "expires_at": 1767225600.5, "registered_at": 1767220000.0}

``expires_at`` is absolute Unix time, so an instance keeps the rest of its TTL across the
move (time spent between export and import counts, as it does while sdbridge is
stopped); on etcd it is rounded up to whole seconds. Already expired lines are skipped.
Each line is checked like an API registration, so a hand-edited file cannot import junk.

The SQLite database is locked by a running sdbridge: stop it (or export from etcd, which
any number of processes share) before exporting or importing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import IO, Any

import orjson

from ..errors import ConfigError
from .config import RegistryConfig
from .instance import (
    Instance,
    RegistrationError,
    RegistryStore,
    check_address,
    check_instance,
    check_labels,
    check_service,
)
from .store import StoreHandle


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``registry export`` and ``registry import`` to the CLI's subparsers."""
    registry = commands.add_parser(
        "registry",
        parents=parents,
        help="export or import the built-in registry (JSON lines), e.g. from SQLite to etcd",
    )
    actions = registry.add_subparsers(dest="registry_command", required=True)
    for name, what in (
        ("export", "write every registered instance as JSON lines"),
        ("import", "register the instances of a JSON lines export, keeping their expiry"),
    ):
        action = actions.add_parser(name, parents=parents, help=what, description=what)
        action.add_argument(
            "--config.file",
            "--config",
            dest="config",
            type=Path,
            required=True,
            help="config whose registry: section (backend) and global.data_dir to use",
        )
        flag = "--output" if name == "export" else "--input"
        action.add_argument(flag, type=Path, help="file (default: standard output / input)")


def instance_line(instance: Instance) -> bytes:
    """One export line."""
    data = {
        "service": instance.service,
        "instance": instance.instance,
        "address": instance.address,
        "labels": dict(instance.labels),
        "ttl": instance.ttl,
        "expires_at": round(instance.expires_at, 3),
        "registered_at": round(instance.registered_at, 3),
    }
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS) + b"\n"


def parse_line(line: bytes, where: str) -> Instance:
    """The instance on an export line; RegistrationError naming ``where`` if it is not one."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise RegistrationError(f"{where}: not JSON", field="line") from None
    if not isinstance(data, dict):
        raise RegistrationError(f"{where}: not a JSON object", field="line")
    try:
        numbers = [data[k] for k in ("ttl", "expires_at", "registered_at")]
        if any(isinstance(n, bool) or not isinstance(n, int | float) for n in numbers):
            raise RegistrationError(
                "ttl, expires_at and registered_at must be numbers", field="ttl"
            )
        ttl, expires_at, registered_at = (float(n) for n in numbers)
        if not ttl > 0:
            raise RegistrationError("ttl must be positive", field="ttl")
        return Instance(
            check_service(str(data.get("service", ""))),
            check_instance(str(data.get("instance", ""))),
            check_address(data.get("address")),
            check_labels(data.get("labels")),
            ttl,
            expires_at,
            registered_at,
        )
    except KeyError as exc:
        raise RegistrationError(f"{where}: missing {exc.args[0]!r}", field="line") from None
    except RegistrationError as exc:
        raise RegistrationError(f"{where}: {exc}", field=exc.field) from None


async def export_to(store: RegistryStore, out: IO[bytes]) -> int:
    """Write every instance of ``store``; return how many."""
    exact = getattr(store, "instances_with_expiry", None)  # etcd: ask the leases
    instances = await exact() if exact is not None else store.instances()
    for instance in instances:
        out.write(instance_line(instance))
    out.flush()
    return len(instances)


async def import_from(store: RegistryStore, lines: IO[bytes], name: str) -> tuple[int, int]:
    """Restore the instances on ``lines`` into ``store``; return (imported, expired)."""
    parsed = [
        parse_line(line, f"{name} line {number}")
        for number, line in enumerate(lines, 1)
        if line.strip()
    ]  # every line checked before anything is written
    imported = expired = 0
    for instance in parsed:
        if instance.expires_at <= time.time():
            expired += 1
            continue
        await store.restore(instance)
        imported += 1
    return imported, expired


async def run_migrate(args: argparse.Namespace, registry: RegistryConfig, data_dir: Path) -> int:
    """``sdbridge registry export|import``; the exit status."""
    handle = StoreHandle(registry)
    try:
        store = await handle.get(data_dir)
        if args.registry_command == "export":
            if args.output is None:
                count = await export_to(store, sys.stdout.buffer)
            else:
                with args.output.open("wb") as out:
                    count = await export_to(store, out)
            print(f"exported {count} instance(s) from {registry.backend}", file=sys.stderr)
            return 0
        source = args.input
        try:
            if source is None:
                imported, expired = await import_from(store, sys.stdin.buffer, "<stdin>")
            else:
                with source.open("rb") as lines:
                    imported, expired = await import_from(store, lines, str(source))
        except OSError as exc:
            raise ConfigError(f"cannot read {source}: {exc.strerror}") from None
        except RegistrationError as exc:
            raise ConfigError(f"nothing imported: {exc}") from None
        print(
            f"imported {imported} instance(s) into {registry.backend}"
            + (f", skipped {expired} already expired" if expired else ""),
            file=sys.stderr,
        )
        return 0
    finally:
        await handle.close()
