"""What a registration is, whichever backend keeps it: the instance record, the checks a
registration must pass, change notifications and the interface every store offers.

The SQLite store (:mod:`.store`) and the etcd store (:mod:`.etcd_store`) both build on
this module, and so do the API and ``registry_sd_configs``, so that a registration is
refused the same way and looks the same whichever backend is configured.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..durations import format_duration, parse_duration
from ..errors import SdbridgeError
from ..model import (
    address_problem,
    is_valid_address,
    is_valid_label_name,
    reserved_label_problem,
)

log = logging.getLogger("sdbridge.registry")

Key = tuple[str, str]
"""(service, instance)"""
Subscriber = Callable[[set[Key]], None]

SERVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
INSTANCE_RE = re.compile(r"^[A-Za-z0-9\[][A-Za-z0-9_.:@\[\]-]{0,199}$")
MAX_LABELS = 64
MAX_LABEL_VALUE = 4096
MAX_ADDRESS = 255
# Labels a registration may set although they start with "__": the ones Prometheus reads
# to scrape a target. Any other "__" name is reserved (and __meta_* would spoof the SD).
SCRAPE_LABELS = frozenset(
    {"__scheme__", "__metrics_path__", "__scrape_interval__", "__scrape_timeout__"}
)
SCRAPE_LABEL_PREFIX = "__param_"


class RegistrationError(SdbridgeError):
    """A registration that cannot be accepted; ``field`` names the offending input."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Instance:
    """One registered instance; ``expires_at`` is Unix time."""

    service: str
    instance: str
    address: str
    labels: Mapping[str, str]
    ttl: float
    expires_at: float
    registered_at: float

    @property
    def key(self) -> Key:
        """(service, instance)."""
        return (self.service, self.instance)

    def same_target(self, other: Instance) -> bool:
        """Whether both publish the same target (address and labels)."""
        return self.address == other.address and self.labels == other.labels

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        """The API's view of the instance."""
        now = time.time() if now is None else now
        return {
            "service": self.service,
            "instance": self.instance,
            "address": self.address,
            "labels": dict(self.labels),
            "ttl": format_duration(self.ttl),
            "expires_at": round(self.expires_at, 3),
            "expires_in": round(max(0.0, self.expires_at - now), 3),
            "registered_at": round(self.registered_at, 3),
        }


# --- validation ------------------------------------------------------------------------


def check_service(service: str) -> str:
    """Return ``service`` or raise RegistrationError."""
    if not SERVICE_RE.fullmatch(service):  # fullmatch: "$" would accept "web\n"
        raise RegistrationError(
            f"invalid service name {service!r}: use 1-128 of [A-Za-z0-9_.-], "
            "starting with a letter or digit",
            field="service",
        )
    return service


def check_instance(instance: str) -> str:
    """Return ``instance`` or raise RegistrationError."""
    if not INSTANCE_RE.fullmatch(instance):
        raise RegistrationError(
            f"invalid instance id {instance!r}: use 1-200 of [A-Za-z0-9_.:@[]-], "
            "starting with a letter, digit or [",
            field="instance",
        )
    return instance


def check_address(address: object) -> str:
    """Return a valid ``host:port`` address or raise RegistrationError."""
    if not isinstance(address, str) or not address:
        raise RegistrationError(
            '"address" is required and must be a "host:port" string', field="address"
        )
    problem = "longer than 255 characters" if len(address) > MAX_ADDRESS else None
    if problem is None and not is_valid_address(address):
        problem = "must be host:port with a port in 1-65535 (IPv6 as [::1]:9100)"
    if problem is None:
        problem = address_problem(address)
    if problem is not None:
        raise RegistrationError(
            f"invalid address {address[:MAX_ADDRESS]!r}: {problem}", field="address"
        )
    return address


def check_labels(labels: object) -> dict[str, str]:
    """Return labels Prometheus accepts, or raise RegistrationError naming the first bad one."""
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise RegistrationError('"labels" must be an object of string values', field="labels")
    if len(labels) > MAX_LABELS:
        raise RegistrationError(
            f"too many labels: {len(labels)} (at most {MAX_LABELS})", field="labels"
        )
    for name, value in labels.items():
        if not is_valid_label_name(name):
            raise RegistrationError(
                f"invalid label name {name!r}: Prometheus label names match [a-zA-Z_][a-zA-Z0-9_]*",
                field=f"labels.{name}",
            )
        if (
            name.startswith("__")
            and name not in SCRAPE_LABELS
            and not name.startswith(SCRAPE_LABEL_PREFIX)
        ):
            raise RegistrationError(
                f"label name {name!r} is reserved: names starting with __ are Prometheus's; "
                "only __scheme__, __metrics_path__, __scrape_interval__, __scrape_timeout__ "
                "and __param_<name> may be set",
                field=f"labels.{name}",
            )
        if not isinstance(value, str):
            raise RegistrationError(
                f"label {name} must have a string value, got {value!r}", field=f"labels.{name}"
            )
        if len(value) > MAX_LABEL_VALUE:
            raise RegistrationError(
                f"label {name} is longer than {MAX_LABEL_VALUE} characters", field=f"labels.{name}"
            )
    reserved = reserved_label_problem(labels, strict=True)
    if reserved is not None:
        raise RegistrationError(reserved[1], field=f"labels.{reserved[0]}")
    return dict(labels)


def check_ttl(ttl: object, *, default: float, minimum: float, maximum: float) -> float:
    """Parse a ttl (a duration string such as ``"30s"`` or a number of seconds) within bounds."""
    if ttl is None:
        return default
    if isinstance(ttl, bool) or not isinstance(ttl, str | int | float):
        raise RegistrationError(
            '"ttl" must be a duration such as "30s" or a number of seconds', field="ttl"
        )
    if isinstance(ttl, str):
        try:
            seconds = parse_duration(ttl)
        except ValueError as exc:
            raise RegistrationError(f"invalid ttl: {exc}", field="ttl") from None
    else:
        seconds = float(ttl)
    if not minimum <= seconds <= maximum:  # also rejects NaN
        raise RegistrationError(
            f"ttl {ttl!r} is out of bounds: it must lie between {format_duration(minimum)} "
            f"and {format_duration(maximum)}",
            field="ttl",
        )
    return seconds


class Subscribable:
    """Change notifications, the same for every backend (``_subscribers`` set by the store)."""

    _subscribers: list[Subscriber]

    @contextlib.contextmanager
    def subscribe(self, callback: Subscriber) -> Iterator[None]:
        """Call ``callback(keys)`` on the event loop whenever those keys' targets change."""
        self._subscribers.append(callback)
        try:
            yield
        finally:
            self._subscribers.remove(callback)

    def _notify(self, keys: set[Key]) -> None:
        for callback in list(self._subscribers):
            try:
                callback(keys)
            except Exception:
                log.exception("registry subscriber failed")


def name_some(keys: set[Key], limit: int = 10) -> str:
    """``svc/a, svc/b and 3 more``: the first ``limit`` keys, sorted, and how many others."""
    names = [f"{service}/{instance}" for service, instance in sorted(keys)]
    shown = ", ".join(names[:limit])
    return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown


class RegistryStore(Protocol):
    """What the API and ``registry_sd_configs`` use of a store, whichever its backend."""

    path: Any  # where it keeps its data, for messages and to tell stores apart

    def instances(self, service: str | None = None) -> list[Instance]: ...
    def get(self, key: Key) -> Instance | None: ...
    def __len__(self) -> int: ...
    def subscribe(self, callback: Subscriber) -> contextlib.AbstractContextManager[None]: ...
    async def put(
        self, service: str, instance: str, address: str, labels: Mapping[str, str], ttl: float
    ) -> tuple[Instance, bool]: ...
    async def heartbeat(self, service: str, instance: str) -> Instance | None: ...
    async def delete(self, service: str, instance: str) -> bool: ...
    async def restore(self, instance: Instance) -> None: ...
    async def check_writable(self) -> str | None: ...
    async def close(self) -> None: ...
