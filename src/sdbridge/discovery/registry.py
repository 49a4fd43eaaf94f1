"""``registry_sd_configs``: the instances registered with sdbridge's own registry.

Services register over the API (``PUT /api/v1/registry/<service>/<instance>``) or with
``sdbridge register``; see :mod:`sdbridge.registry`. The store lives in
``<global.data_dir>/registry.db`` and tells this mechanism at once which instances
changed, so it is watch-based, not polled: each change is sent as the changed
``<service>/<instance>`` groups, and the job's ``publish_delay`` batches bursts.

Prometheus has no SD of this name, so the label design is sdbridge's own. Each
instance is one target whose ``__address__`` is the registered address, with:

- ``__meta_registry_service``: the service name it registered under;
- ``__meta_registry_instance``: its instance id, unique within the service;
- every label it registered, as given (they are the target's labels, as in file_sd).
  Names starting with ``__`` are refused at registration, except the scrape settings
  ``__scheme__``, ``__metrics_path__``, ``__scrape_interval__``, ``__scrape_timeout__``
  and ``__param_<name>``, so a registration cannot spoof ``__meta_*`` labels.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic import Field, field_validator

from ..errors import InvalidTargetError
from ..model import ADDRESS_LABEL, TargetGroup
from ..registry.instance import Instance, Key, check_service
from ..registry.store import StoreHandle
from . import register
from .base import BaseDiscoverer, MechanismConfig, Send

META_PREFIX = "__meta_registry_"
# The service name the instance registered under.
SERVICE_LABEL = META_PREFIX + "service"
# The instance id, unique within its service.
INSTANCE_LABEL = META_PREFIX + "instance"


class RegistrySDConfig(MechanismConfig):
    """One ``registry_sd_configs`` entry."""

    services: list[str] = Field(
        default_factory=list,
        description="publish only these services; empty publishes every registered service",
    )

    @field_validator("services")
    @classmethod
    def _valid_services(cls, value: list[str]) -> list[str]:
        for service in value:
            check_service(service)
        return value


def instance_group(instance: Instance) -> TargetGroup:
    """The one-target group of a registered instance."""
    return TargetGroup(
        source=source_of(instance.key),
        targets=({ADDRESS_LABEL: instance.address},),
        labels={
            **instance.labels,
            SERVICE_LABEL: instance.service,
            INSTANCE_LABEL: instance.instance,
        },
    )


def source_of(key: Key) -> str:
    """The group source of an instance: ``<service>/<instance>``."""
    return f"{key[0]}/{key[1]}"


@register("registry", RegistrySDConfig)
class RegistryDiscoverer(BaseDiscoverer[RegistrySDConfig]):
    """Sends the registered instances, then each change as the store reports it."""

    async def run(self, send: Send) -> None:
        """Send the full set, then changed ``<service>/<instance>`` groups, until cancelled."""
        wanted = set(self.config.services)
        data_dir = self.context.data_dir if self.context.data_dir is not None else Path("data")
        pending: set[Key] = set()
        changed = asyncio.Event()

        def on_change(keys: set[Key]) -> None:
            pending.update(k for k in keys if not wanted or k[0] in wanted)
            if pending:
                changed.set()

        # The daemon's store (shared with the API); `sdbridge once` opens its own.
        handle = self.context.registry_store
        own = handle is None
        if handle is None:
            handle = StoreHandle()
        try:
            store = await handle.get(data_dir)
            # Subscribe before reading: nothing can change in between (same event loop),
            # and nothing after the read is missed.
            with store.subscribe(on_change):
                full = [
                    group
                    for i in store.instances()
                    if (not wanted or i.service in wanted) and (group := self._group(i))
                ]
                await send(full)
                while True:
                    await changed.wait()
                    changed.clear()
                    keys = sorted(pending)
                    pending.clear()
                    groups = []
                    for key in keys:
                        current = store.get(key)
                        if current is None:
                            groups.append(TargetGroup(source=source_of(key)))
                        else:
                            # An instance that cannot be a target is withdrawn, not kept.
                            groups.append(
                                self._group(current) or TargetGroup(source=source_of(key))
                            )
                    await send(groups)
        finally:
            if own:
                await asyncio.shield(handle.close())

    def _group(self, instance: Instance) -> TargetGroup | None:
        # Rows are validated when registered; a database edited by hand may still hold junk.
        try:
            return instance_group(instance)
        except InvalidTargetError as exc:
            self.context.record_invalid(f"registry instance {source_of(instance.key)}", exc)
            return None
