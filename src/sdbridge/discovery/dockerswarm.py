"""``dockerswarm_sd_configs``: Docker Swarm services, tasks or nodes, like Prometheus.

Targets and ``__meta_dockerswarm_*`` labels follow Prometheus's ``discovery/moby``
(dockerswarm.go, services.go, tasks.go, nodes.go, network.go) exactly, so a scrape
config written for Prometheus's own ``dockerswarm_sd_configs`` works unchanged:

* ``services``: one target per (virtual IP, published TCP port) of each service, at
  ``<vip>:<published port>``; a service without a published TCP port gives one target
  per virtual IP at ``<vip>:<port>``.
* ``tasks``: for each task, one target per host-mode published TCP port at
  ``<node address>:<published port>``, and one per (network address, published TCP port
  of its service) at ``<task ip>:<published port>``, or ``<task ip>:<port>`` when the
  service publishes no TCP port. Every task is listed, whatever its state: relabel on
  ``__meta_dockerswarm_task_desired_state`` to keep only running ones.
* ``nodes``: one target per node at ``<node address>:<port>``.

Unlike Prometheus, sdbridge does not wait for the refresh interval to see a change: it
follows the engine's ``/events`` stream (service, node and network events) and
refreshes, debounced, when one arrives. For the tasks role it also refreshes twice a
second for 3 s after an event (swarm's orchestrator updates tasks after the service event
that announces the change) and while tasks are still starting or stopping. If the stream drops, the next refresh is a
full resync; a refresh that fails sends nothing, so the last good targets stay.

Each service, task and node is its own target group (source ``service/<id>``,
``task/<id>``, ``node/<id>``), so a change re-renders only what changed.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from ..errors import BackendError
from ..model import ADDRESS_LABEL, LabelSet, TargetGroup, join_host_port
from . import register
from ._dockerapi import EngineClient, EngineConfig
from ._dockerbase import EngineWatcher, dig, int_field, network_labels, prefixed_labels
from .base import DiscoveryContext

PREFIX = "__meta_dockerswarm_"

# services.go
SERVICE_ID = PREFIX + "service_id"
SERVICE_NAME = PREFIX + "service_name"
SERVICE_MODE = PREFIX + "service_mode"  # "replicated" or "global"
SERVICE_UPDATING_STATUS = PREFIX + "service_updating_status"  # only while/after an update
SERVICE_LABEL_PREFIX = PREFIX + "service_label_"  # + sanitized service label key
SERVICE_ENDPOINT_PORT_NAME = PREFIX + "service_endpoint_port_name"
SERVICE_ENDPOINT_PORT_PUBLISH_MODE = PREFIX + "service_endpoint_port_publish_mode"
SERVICE_TASK_CONTAINER_HOSTNAME = PREFIX + "service_task_container_hostname"
SERVICE_TASK_CONTAINER_IMAGE = PREFIX + "service_task_container_image"

# tasks.go
TASK_ID = PREFIX + "task_id"
TASK_DESIRED_STATE = PREFIX + "task_desired_state"
TASK_STATE = PREFIX + "task_state"
TASK_CONTAINER_ID = PREFIX + "task_container_id"  # absent until the task has a container
TASK_SLOT = PREFIX + "task_slot"  # 0 for global services
TASK_PORT_PUBLISH_MODE = PREFIX + "task_port_publish_mode"
CONTAINER_LABEL_PREFIX = PREFIX + "container_label_"  # + sanitized container label key

# nodes.go
NODE_ID = PREFIX + "node_id"
NODE_ROLE = PREFIX + "node_role"
NODE_ADDRESS = PREFIX + "node_address"
NODE_AVAILABILITY = PREFIX + "node_availability"
NODE_HOSTNAME = PREFIX + "node_hostname"
NODE_ENGINE_VERSION = PREFIX + "node_engine_version"  # nodes role only
NODE_PLATFORM_ARCHITECTURE = PREFIX + "node_platform_architecture"
NODE_PLATFORM_OS = PREFIX + "node_platform_os"
NODE_STATUS = PREFIX + "node_status"
NODE_MANAGER_LEADER = PREFIX + "node_manager_leader"  # managers only, nodes role only
NODE_MANAGER_REACHABILITY = PREFIX + "node_manager_reachability"
NODE_MANAGER_ADDRESS = PREFIX + "node_manager_address"
NODE_LABEL_PREFIX = PREFIX + "node_label_"  # + sanitized node label key

# network.go: __meta_dockerswarm_network_{id,name,scope,internal,ingress,label_<k>}

SETTLE_AFTER_EVENT = 3.0
_EVENT_TYPES = {
    "services": ["service", "network"],
    # No container events: they only cover this node's tasks, and the settling
    # refreshes after a service event already follow tasks until they converge (more
    # refreshes would only keep the job's publish_delay from seeing a pause).
    "tasks": ["service", "node", "network"],
    "nodes": ["node"],
}


class DockerSwarmSDConfig(EngineConfig):
    """One ``dockerswarm_sd_configs`` entry (Prometheus's options; see docs/mechanisms)."""

    role: Literal["services", "tasks", "nodes"] = Field(description="what to discover")


@register("dockerswarm", DockerSwarmSDConfig)
class DockerSwarmDiscoverer(EngineWatcher[DockerSwarmSDConfig]):
    """Lists services, tasks or nodes of a swarm; refreshes on engine events."""

    def __init__(self, config: DockerSwarmSDConfig, context: DiscoveryContext) -> None:
        super().__init__(config, context)
        if config.role == "tasks":
            # The orchestrator updates tasks after the service event that announces it.
            self.settle_after_event = SETTLE_AFTER_EVENT

    def event_types(self) -> list[str]:
        """Engine event types that can change this role's targets."""
        return _EVENT_TYPES[self.config.role]

    async def list_groups(self, client: EngineClient) -> list[TargetGroup]:
        """The full set of target groups for the configured role."""
        filters = self.config.filter_param()
        params = {"filters": filters} if filters else None
        if self.config.role == "nodes":
            nodes = await client.get_list("/nodes", params)
            return self._node_groups(nodes)
        if self.config.role == "services":
            services, networks = await asyncio.gather(
                client.get_list("/services", params), client.get_list("/networks")
            )
            return self._service_groups(services, network_labels(networks, PREFIX))
        tasks, services, nodes, networks = await asyncio.gather(
            client.get_list("/tasks", params),
            client.get_list("/services"),
            client.get_list("/nodes"),
            client.get_list("/networks"),
        )
        self.settling = any(_moving(task) for task in tasks)
        return self._task_groups(tasks, services, nodes, network_labels(networks, PREFIX))

    # --- services ----------------------------------------------------------------------

    def _service_groups(
        self, services: list[Any], networks: Mapping[str, LabelSet]
    ) -> list[TargetGroup]:
        groups = []
        for service in services:
            sid = _str(service, "ID")
            common = _service_labels(service)
            spec = dig(service, "Spec", "TaskTemplate", "ContainerSpec")
            if isinstance(spec, dict):
                common[SERVICE_TASK_CONTAINER_HOSTNAME] = _str(spec, "Hostname")
                common[SERVICE_TASK_CONTAINER_IMAGE] = _str(spec, "Image")
            update_state = dig(service, "UpdateStatus", "State")
            if update_state is not None:
                common[SERVICE_UPDATING_STATUS] = str(update_state)
            ports = _tcp_ports(dig(service, "Endpoint", "Ports"))
            targets: list[LabelSet] = []
            for vip in _dicts(dig(service, "Endpoint", "VirtualIPs")):
                ip = _cidr_ip(_str(vip, "Addr"), f"service {sid}")
                net = networks.get(_str(vip, "NetworkID"), {})
                if not ports:
                    targets.append(
                        {**common, **net, ADDRESS_LABEL: join_host_port(ip, self.config.port)}
                    )
                for port in ports:
                    targets.append(
                        {
                            SERVICE_ENDPOINT_PORT_NAME: _str(port, "Name"),
                            SERVICE_ENDPOINT_PORT_PUBLISH_MODE: _str(port, "PublishMode"),
                            **common,
                            **net,
                            ADDRESS_LABEL: join_host_port(ip, int_field(port, "PublishedPort")),
                        }
                    )
            groups.append(self.valid_group(f"service/{sid}", targets))
        return groups

    # --- tasks -------------------------------------------------------------------------

    def _task_groups(
        self,
        tasks: list[Any],
        services: list[Any],
        nodes: list[Any],
        networks: Mapping[str, LabelSet],
    ) -> list[TargetGroup]:
        # Auxiliary lists are unfiltered, as in Prometheus: filters apply to tasks only.
        service_labels = {_str(s, "ID"): _service_labels(s) for s in _dicts(services)}
        service_ports = {
            _str(s, "ID"): _tcp_ports(dig(s, "Endpoint", "Ports")) for s in _dicts(services)
        }
        node_labels = {_str(n, "ID"): _node_labels(n) for n in _dicts(nodes)}
        groups = []
        for task in tasks:
            tid = _str(task, "ID")
            common: LabelSet = {
                TASK_ID: tid,
                TASK_DESIRED_STATE: _str(task, "DesiredState"),
                TASK_STATE: _str(dig(task, "Status"), "State"),
                TASK_SLOT: str(int_field(task, "Slot")),
            }
            container_status = dig(task, "Status", "ContainerStatus")
            if isinstance(container_status, dict):
                common[TASK_CONTAINER_ID] = _str(container_status, "ContainerID")
            common.update(
                prefixed_labels(
                    dig(task, "Spec", "ContainerSpec", "Labels"), CONTAINER_LABEL_PREFIX
                )
            )
            common.update(service_labels.get(_str(task, "ServiceID"), {}))
            common.update(node_labels.get(_str(task, "NodeID"), {}))
            targets: list[LabelSet] = []
            for port in _tcp_ports(dig(task, "Status", "PortStatus", "Ports")):
                address = join_host_port(
                    common.get(NODE_ADDRESS, ""), int_field(port, "PublishedPort")
                )
                targets.append(
                    {
                        TASK_PORT_PUBLISH_MODE: _str(port, "PublishMode"),
                        **common,
                        ADDRESS_LABEL: address,
                    }
                )
            ports = service_ports.get(_str(task, "ServiceID"), [])
            for attachment in _dicts(task.get("NetworksAttachments")):
                net = networks.get(_str(dig(attachment, "Network"), "ID"), {})
                for cidr in attachment.get("Addresses") or ():
                    ip = _cidr_ip(str(cidr), f"task {tid}")
                    if not ports:
                        targets.append(
                            {**common, **net, ADDRESS_LABEL: join_host_port(ip, self.config.port)}
                        )
                    for port in ports:
                        targets.append(
                            {
                                TASK_PORT_PUBLISH_MODE: _str(port, "PublishMode"),
                                **common,
                                **net,
                                ADDRESS_LABEL: join_host_port(ip, int_field(port, "PublishedPort")),
                            }
                        )
            groups.append(self.valid_group(f"task/{tid}", targets))
        return groups

    # --- nodes -------------------------------------------------------------------------

    def _node_groups(self, nodes: list[Any]) -> list[TargetGroup]:
        groups = []
        for node in nodes:
            labels = _node_labels(node)
            labels[NODE_ENGINE_VERSION] = _str(dig(node, "Description", "Engine"), "EngineVersion")
            manager = node.get("ManagerStatus")
            if isinstance(manager, dict):
                labels[NODE_MANAGER_LEADER] = "true" if manager.get("Leader") is True else "false"
                labels[NODE_MANAGER_REACHABILITY] = _str(manager, "Reachability")
                labels[NODE_MANAGER_ADDRESS] = _str(manager, "Addr")
            labels[ADDRESS_LABEL] = join_host_port(labels[NODE_ADDRESS], self.config.port)
            groups.append(self.valid_group(f"node/{labels[NODE_ID]}", [labels]))
        return groups


def _moving(task: Mapping[str, Any]) -> bool:
    """Whether a task is on its way to its desired state (so more changes will follow)."""
    state = dig(task, "Status", "State")
    desired = task.get("DesiredState")
    if desired == "running":
        return state not in ("running", "failed", "rejected", "complete")
    return bool(state == "running")


def _service_labels(service: Mapping[str, Any]) -> LabelSet:
    """The service labels a service's tasks carry too (services.go getServicesLabelsAndPorts)."""
    labels = {
        SERVICE_ID: _str(service, "ID"),
        SERVICE_NAME: _str(dig(service, "Spec"), "Name"),
        SERVICE_MODE: _service_mode(service),
    }
    labels.update(prefixed_labels(dig(service, "Spec", "Labels"), SERVICE_LABEL_PREFIX))
    return labels


def _service_mode(service: Mapping[str, Any]) -> str:
    mode = dig(service, "Spec", "Mode")
    if isinstance(mode, dict):
        if mode.get("Global") is not None:
            return "global"
        if mode.get("Replicated") is not None:
            return "replicated"
    return ""


def _node_labels(node: Mapping[str, Any]) -> LabelSet:
    """The node labels a node's tasks carry too (nodes.go getNodesLabels)."""
    labels = {
        NODE_ID: _str(node, "ID"),
        NODE_ROLE: _str(dig(node, "Spec"), "Role"),
        NODE_ADDRESS: _str(dig(node, "Status"), "Addr"),
        NODE_AVAILABILITY: _str(dig(node, "Spec"), "Availability"),
        NODE_HOSTNAME: _str(dig(node, "Description"), "Hostname"),
        NODE_PLATFORM_ARCHITECTURE: _str(dig(node, "Description", "Platform"), "Architecture"),
        NODE_PLATFORM_OS: _str(dig(node, "Description", "Platform"), "OS"),
        NODE_STATUS: _str(dig(node, "Status"), "State"),
    }
    labels.update(prefixed_labels(dig(node, "Spec", "Labels"), NODE_LABEL_PREFIX))
    return labels


def _tcp_ports(ports: Any) -> list[dict[str, Any]]:
    # Prometheus skips every port whose protocol is not tcp (udp, sctp).
    return [p for p in _dicts(ports) if p.get("Protocol") == "tcp"]


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _str(obj: Any, key: str) -> str:
    value = obj.get(key) if isinstance(obj, dict) else None
    return "" if value is None else str(value)


def _cidr_ip(cidr: str, where: str) -> str:
    # Prometheus fails the whole refresh on an unparsable address (net.ParseCIDR).
    try:
        return str(ipaddress.ip_interface(cidr).ip)
    except ValueError:
        raise BackendError(f"{where}: cannot parse address {cidr!r}") from None
