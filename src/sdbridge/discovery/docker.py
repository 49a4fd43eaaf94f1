"""``docker_sd_configs``: the containers of one Docker Engine, like Prometheus.

Targets and ``__meta_docker_*`` labels follow Prometheus's ``discovery/moby/docker.go``
and ``network.go``: for each running container (``GET /containers/json`` with the
configured filters) and each of its networks, one target per TCP port at
``<container ip>:<private port>`` (with ``port_public``/``port_public_ip`` when that port
is published), or one target at ``<container ip>:<port>`` when it has no TCP port.
Containers in host networking get ``host_networking_host``; a container sharing another
one's network (``--network container:<id>``) gets that container's networks.
With ``match_first_network`` (the default, as in Prometheus since 2.54), a container on
several networks is listed on the first one by name only.

One deliberate difference: sdbridge's outputs need ``host:port``, so when
``host_networking_host`` has no port, ``:<port>`` is appended (Prometheus writes the bare
host and its scraper adds the scheme's default port, 80 for http, which is also the
default ``port``).

sdbridge refreshes on container and network events from ``/events`` (debounced) as well
as every ``refresh_interval``; each container is its own group (``container/<id>``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from ..model import ADDRESS_LABEL, LabelSet, TargetGroup, is_valid_address, join_host_port
from . import register
from ._dockerapi import EngineClient, EngineConfig
from ._dockerbase import EngineWatcher, dig, int_field, network_labels, prefixed_labels

PREFIX = "__meta_docker_"

CONTAINER_ID = PREFIX + "container_id"
CONTAINER_NAME = PREFIX + "container_name"  # the first name, with its leading "/"
CONTAINER_NETWORK_MODE = PREFIX + "container_network_mode"
CONTAINER_IMAGE = PREFIX + "container_image"  # Prometheus main (commit 59c5deb)
CONTAINER_IMAGE_ID = PREFIX + "container_image_id"  # idem
CONTAINER_LABEL_PREFIX = PREFIX + "container_label_"  # + sanitized container label key
NETWORK_IP = PREFIX + "network_ip"
PORT_PRIVATE = PREFIX + "port_private"
PORT_PUBLIC = PREFIX + "port_public"  # only for a published port
PORT_PUBLIC_IP = PREFIX + "port_public_ip"  # only for a published port
# network.go: __meta_docker_network_{id,name,scope,internal,ingress,label_<k>}


class DockerSDConfig(EngineConfig):
    """One ``docker_sd_configs`` entry (Prometheus's options; see docs/mechanisms)."""

    host_networking_host: str = Field(
        "localhost", description="address of containers in host networking mode"
    )
    match_first_network: bool = Field(
        True, description="list a container on several networks on the first one only"
    )


@register("docker", DockerSDConfig)
class DockerDiscoverer(EngineWatcher[DockerSDConfig]):
    """Lists the running containers of an engine; refreshes on container events."""

    def event_types(self) -> list[str]:
        """Container and network events change what this mechanism lists."""
        return ["container", "network"]

    async def list_groups(self, client: EngineClient) -> list[TargetGroup]:
        """One group per container (see the module docstring for the targets)."""
        filters = self.config.filter_param()
        containers = await client.get_list(
            "/containers/json", {"filters": filters} if filters else None
        )
        net_labels = network_labels(await client.get_list("/networks"), PREFIX)
        by_id = {_id(c): c for c in containers}
        # Prometheus skips a container without a name.
        return [
            self._container_group(c, by_id, net_labels)
            for c in by_id.values()
            if isinstance(c.get("Names"), list) and c["Names"]
        ]

    def _container_group(
        self,
        container: Mapping[str, Any],
        by_id: Mapping[str, Mapping[str, Any]],
        net_labels: Mapping[str, LabelSet],
    ) -> TargetGroup:
        cid = _id(container)
        mode = str(dig(container, "HostConfig", "NetworkMode") or "")
        common: LabelSet = {
            CONTAINER_ID: cid,
            CONTAINER_NAME: str(container["Names"][0]),
            CONTAINER_NETWORK_MODE: mode,
        }
        if container.get("Image"):
            common[CONTAINER_IMAGE] = str(container["Image"])
        if container.get("ImageID"):
            common[CONTAINER_IMAGE_ID] = str(container["ImageID"])
        common.update(prefixed_labels(container.get("Labels"), CONTAINER_LABEL_PREFIX))

        networks = _networks(container)
        followed = mode
        # --network container:<id>: use the networks of the container it shares.
        while not networks and followed.startswith("container:"):
            other = by_id.get(followed.removeprefix("container:"))
            if other is None:
                break
            networks = _networks(other)
            followed = str(dig(other, "HostConfig", "NetworkMode") or "")
        if self.config.match_first_network and len(networks) > 1:
            first = min(networks)
            networks = {first: networks[first]}

        ports = [
            p
            for p in container.get("Ports") or ()
            if isinstance(p, dict) and p.get("Type") == "tcp"
        ]
        targets: list[LabelSet] = []
        for network in networks.values():
            ip = str(network.get("IPAddress") or network.get("GlobalIPv6Address") or "")
            net = net_labels.get(str(network.get("NetworkID") or ""), {})
            for port in ports:
                target = {NETWORK_IP: ip, PORT_PRIVATE: str(int_field(port, "PrivatePort"))}
                if int_field(port, "PublicPort") > 0:
                    target[PORT_PUBLIC] = str(int_field(port, "PublicPort"))
                    target[PORT_PUBLIC_IP] = str(port.get("IP") or "")
                target.update(common)
                target.update(net)
                target[ADDRESS_LABEL] = join_host_port(ip, int_field(port, "PrivatePort"))
                targets.append(target)
            if not ports:
                # Host-networking containers have no ports, so they only end up here.
                if mode == "host":
                    address = self._host_networking_address()
                else:
                    address = join_host_port(ip, self.config.port)
                targets.append({NETWORK_IP: ip, **common, **net, ADDRESS_LABEL: address})
        return self.valid_group(
            f"container/{cid}",
            targets,
            where=f"container {common[CONTAINER_NAME]}",
            hint=" (no IP on that network?)",
        )

    def _host_networking_address(self) -> str:
        host = self.config.host_networking_host
        return host if is_valid_address(host) else join_host_port(host, self.config.port)


def _id(container: Mapping[str, Any]) -> str:
    return str(container.get("Id") or container.get("ID") or "")


def _networks(container: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    networks = dig(container, "NetworkSettings", "Networks")
    if not isinstance(networks, dict):
        return {}
    return {str(k): v for k, v in networks.items() if isinstance(v, dict)}
