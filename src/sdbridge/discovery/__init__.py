"""The table of discovery mechanisms (:data:`MECHANISMS`).

Each mechanism registers a name and a pydantic config model; the YAML key
``<name>_sd_configs`` is derived from the name. Built-in mechanisms are imported
from :data:`BUILTIN_MODULES`; third-party packages add theirs through the
``sdbridge.discoverers`` entry-point group. A plugin that fails to load is logged
and skipped, never fatal.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, TypeVar

from .base import Discoverer, DiscoveryContext, MechanismConfig

log = logging.getLogger("sdbridge.discovery")

ENTRY_POINT_GROUP = "sdbridge.discoverers"
BUILTIN_MODULES: tuple[str, ...] = (
    "sdbridge.discovery.exec",
    "sdbridge.discovery.consul",
    "sdbridge.discovery.registry",
    "sdbridge.discovery.etcd",
    "sdbridge.discovery.zookeeper",
    "sdbridge.discovery.dockerswarm",
    "sdbridge.discovery.docker",
    "sdbridge.discovery.sql",
    "sdbridge.discovery.eureka",
    "sdbridge.discovery.nacos",
)
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Mechanism:
    """A registered mechanism: its name, config model and discoverer factory."""

    name: str
    config_model: type[MechanismConfig]
    factory: Callable[[Any, DiscoveryContext], Discoverer]

    @property
    def config_key(self) -> str:
        """The YAML key of this mechanism's configs in a job."""
        return f"{self.name}_sd_configs"


MECHANISMS: dict[str, Mechanism] = {}
"""Every registered mechanism by name; read it through :func:`mechanisms`."""
_loaded = False

D = TypeVar("D")


def register(name: str, config: type[MechanismConfig]) -> Callable[[type[D]], type[D]]:
    """Class decorator: register a discoverer class under ``name`` with its config model.

    The class is constructed as ``cls(config, context)``.
    """
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"mechanism name {name!r} must match {_NAME_RE.pattern}")

    def decorate(cls: type[D]) -> type[D]:
        existing = MECHANISMS.get(name)
        if existing is not None and existing.factory is not cls:
            raise ValueError(f"mechanism {name!r} is already registered by {existing.factory}")
        MECHANISMS[name] = Mechanism(name, config, cls)  # type: ignore[arg-type]
        return cls

    return decorate


def mechanisms() -> dict[str, Mechanism]:
    """All registered mechanisms, loading built-ins and plugins on first use."""
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
        _load_plugins()
    return dict(MECHANISMS)


def _load_plugins() -> None:
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            # Loading imports the plugin's module, whose @register does the rest.
            entry_point.load()
        except Exception:
            log.exception("skipping discovery plugin %r that failed to load", entry_point.value)
