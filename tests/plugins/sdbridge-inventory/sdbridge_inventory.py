"""``inventory_sd_configs``: hosts from an HTTP inventory that answers with JSON.

The inventory answers ``GET <url>`` with a list of hosts::

    [{"hostname": "web-1", "address": "127.0.0.1", "port": 9100,
      "datacenter": "dc1", "tags": ["web", "prod"], "metadata": {"rack": "r1"}}]

Each host becomes one target group (source: its hostname). This is the worked example
of docs/writing-a-mechanism.md, installed by the plugin tests.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from sdbridge.sdk import (
    BackendError,
    Duration,
    InvalidTargetError,
    RefreshConfig,
    RefreshDiscoverer,
    TargetGroup,
    join_host_port,
    join_list,
    register,
    sanitize_label_name,
)

# Label names, declared once.
META = "__meta_inventory_"
LABEL_HOSTNAME = META + "hostname"  # the host's name in the inventory
LABEL_DATACENTER = META + "datacenter"  # its datacenter
LABEL_TAGS = META + "tags"  # its tags, joined as ,a,b,
LABEL_METADATA = META + "metadata_"  # one label per metadata key (sanitized)


# Everything a malformed record can raise in host_group: a missing key (KeyError), a
# wrong type (TypeError, AttributeError), a port that is no number (ValueError) or too
# big a number (OverflowError), an invalid label or address (InvalidTargetError).
BAD_RECORD = (InvalidTargetError, LookupError, TypeError, AttributeError, ValueError, OverflowError)


class InventorySDConfig(RefreshConfig):
    """One ``inventory_sd_configs`` entry."""

    url: str
    refresh_interval: Duration = 30.0


@register("inventory", InventorySDConfig)
class InventoryDiscoverer(RefreshDiscoverer[InventorySDConfig]):
    """Polls the inventory every ``refresh_interval``."""

    async def refresh(self) -> list[TargetGroup]:
        """The inventory's full list of hosts, or raise (the last good set then stays)."""
        self.context.count_request()
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
                session.get(self.config.url) as response,
            ):
                response.raise_for_status()
                hosts = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise BackendError(f"inventory {self.config.url}: {exc}") from exc
        if not isinstance(hosts, list):
            raise BackendError(f"inventory {self.config.url}: expected a list of hosts")
        groups = []
        for host in hosts:
            try:
                groups.append(host_group(host))
            except BAD_RECORD as exc:
                # One bad record is skipped and reported; the rest are still good.
                self.context.record_invalid(f"host {host!r}", exc)
        return groups


def host_group(host: dict[str, Any]) -> TargetGroup:
    """One host → one target group."""
    labels = {
        LABEL_HOSTNAME: str(host["hostname"]),
        LABEL_DATACENTER: str(host.get("datacenter", "")),
        LABEL_TAGS: join_list(str(t) for t in host.get("tags", [])),
    }
    for key, value in host.get("metadata", {}).items():
        labels[LABEL_METADATA + sanitize_label_name(key)] = str(value)
    # join_host_port brackets an IPv6 address: [::1]:9100, as Prometheus writes it.
    address = join_host_port(str(host["address"]), int(host["port"]))
    return TargetGroup(
        source=str(host["hostname"]), targets=({"__address__": address},), labels=labels
    )
