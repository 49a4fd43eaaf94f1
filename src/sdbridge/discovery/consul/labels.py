"""What Consul's answers mean: the label names, and the parsers of each answer.

Labels and ``__address__`` are those of Prometheus's consul_sd, name for name and value
for value (prometheus/prometheus ``discovery/consul/consul.go``): one target per service
instance from ``/v1/health/service/<name>``. The long-polls' answers (the catalog, the
checks, the nodes) are reduced to what can change a target, so that two answers compare
equal exactly when no target moved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ...model import (
    ADDRESS_LABEL,
    LabelSet,
    is_valid_address,
    join_host_port,
    sanitize_label_name,
)
from .._json import JSONReader

# Label names, as in prometheus/prometheus discovery/consul/consul.go.
META = "__meta_consul_"
ADDRESS = META + "address"  # the node's address
NODE = META + "node"  # the node's name
METADATA_PREFIX = META + "metadata_"  # node meta, one label per key
SERVICE_METADATA_PREFIX = META + "service_metadata_"  # service meta, one label per key
TAGS = META + "tags"  # the service's tags, joined and wrapped with tag_separator
SERVICE = META + "service"  # the service's name
HEALTH = META + "health"  # the aggregated status of the instance's checks
SERVICE_ADDRESS = META + "service_address"  # the service's own address, may be empty
SERVICE_PORT = META + "service_port"
DATACENTER = META + "dc"  # the queried datacenter (given, or the agent's)
NAMESPACE = META + "namespace"  # Consul Enterprise
PARTITION = META + "partition"  # Consul Enterprise admin partition
TAGGED_ADDRESS_PREFIX = META + "tagged_address_"  # the node's tagged addresses
SERVICE_ID = META + "service_id"

# Consul's own check ids for maintenance mode (api/health.go: NodeMaint, ServiceMaintPrefix).
_NODE_MAINTENANCE = "_node_maintenance"
_SERVICE_MAINTENANCE_PREFIX = "_service_maintenance:"


def aggregated_status(checks: Iterable[Mapping[str, Any]]) -> str:
    """The health of an instance from its checks, as Consul's HealthChecks.AggregatedStatus.

    Maintenance wins over critical over warning over passing; no checks is passing; an
    unknown status makes the whole answer empty.
    """
    warning = critical = maintenance = False
    for check in checks:
        check_id = str(check.get("CheckID") or "")
        if check_id == _NODE_MAINTENANCE or check_id.startswith(_SERVICE_MAINTENANCE_PREFIX):
            maintenance = True
            continue
        status = check.get("Status")
        if status == "passing":
            continue
        if status == "warning":
            warning = True
        elif status == "critical":
            critical = True
        else:
            return ""
    if maintenance:
        return "maintenance"
    if critical:
        return "critical"
    if warning:
        return "warning"
    # Every check passing, or no checks at all.
    return "passing"


class GoJSONReader(JSONReader):
    """Reads fields of decoded JSON as Go's json.Unmarshal into Consul's structs would:
    a null is the zero value, a wrong type is a BackendError naming where and what."""

    def objects(self, value: Any, what: str) -> list[dict[str, Any]]:
        """A list of objects (each called ``what`` in errors)."""
        if not isinstance(value, list):
            raise self.fail(f"expected a list of {what}s, got {type(value).__name__}")
        return [self.obj(item, what) for item in value]

    def text(self, value: Any, what: str) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.fail(f"{what} is not a string: {value!r:.100}")
        return value

    def port(self, value: Any, what: str) -> int:
        if value is None:
            return 0
        # bool is an int in Python, not in Go's JSON.
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(f"{what} is not a number: {value!r:.100}")
        return value

    def strings(self, value: Any, what: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(f"{what} is not a list of strings: {value!r:.100}")
        return value

    def string_map(self, value: Any, what: str) -> dict[str, str]:
        mapping = self.obj(value, what)
        for key, item in mapping.items():
            if not isinstance(item, str):
                raise self.fail(f"{what}[{key!r}] is not a string: {item!r:.100}")
        return mapping


@dataclass(frozen=True)
class Instance:
    """One service instance: its labels and where it runs."""

    node: str
    labels: LabelSet


def parse_service_nodes(
    data: Any, *, service: str, tag_separator: str, where: str
) -> list[Instance | str]:
    """Turn a ``/v1/health/service/<name>`` answer into instances with their labels.

    Raises BackendError on a shape Go's decoder would reject (e.g. a non-numeric port);
    returns a message string for an instance whose address is not a valid target.
    """
    shape = GoJSONReader(where)
    if data is None:
        return []
    if not isinstance(data, list):
        raise shape.fail(f"expected a list of service nodes, got {type(data).__name__}")
    result: list[Instance | str] = []
    for position, entry in enumerate(data):
        at = f"entry {position}"
        entry = shape.obj(entry, at)
        node = shape.obj(entry.get("Node"), f"{at}.Node")
        svc = shape.obj(entry.get("Service"), f"{at}.Service")
        checks_value = entry.get("Checks")
        if checks_value is not None and not isinstance(checks_value, list):
            raise shape.fail(f"{at}.Checks is not a list")
        checks = [shape.obj(c, f"{at}.Checks[]") for c in checks_value or []]
        node_name = shape.text(node.get("Node"), f"{at}.Node.Node")
        node_address = shape.text(node.get("Address"), f"{at}.Node.Address")
        service_address = shape.text(svc.get("Address"), f"{at}.Service.Address")
        port = shape.port(svc.get("Port"), f"{at}.Service.Port")
        tags = shape.strings(svc.get("Tags"), f"{at}.Service.Tags")
        # A service registered for another host carries its own address.
        address = join_host_port(service_address or node_address, port)
        labels: LabelSet = {
            ADDRESS_LABEL: address,
            ADDRESS: node_address,
            NODE: node_name,
            NAMESPACE: shape.text(svc.get("Namespace"), f"{at}.Service.Namespace"),
            PARTITION: shape.text(svc.get("Partition"), f"{at}.Service.Partition"),
            TAGS: tag_separator + tag_separator.join(tags) + tag_separator,
            SERVICE_ADDRESS: service_address,
            SERVICE_PORT: str(port),
            SERVICE_ID: shape.text(svc.get("ID"), f"{at}.Service.ID"),
            HEALTH: aggregated_status(checks),
        }
        for prefix, value, what in (
            (METADATA_PREFIX, node.get("Meta"), "Node.Meta"),
            (SERVICE_METADATA_PREFIX, svc.get("Meta"), "Service.Meta"),
            (TAGGED_ADDRESS_PREFIX, node.get("TaggedAddresses"), "Node.TaggedAddresses"),
        ):
            for key, item in shape.string_map(value, f"{at}.{what}").items():
                labels[prefix + sanitize_label_name(key)] = item
        if not is_valid_address(address):
            result.append(f"service {service!r} instance {labels[SERVICE_ID]!r}: {address!r}")
            continue
        # An empty label value is an absent label (Prometheus drops them on relabeling).
        result.append(Instance(node_name, {k: v for k, v in labels.items() if v}))
    return result


# What identifies one version of one instance: (node, service ID, the instance's
# ModifyIndex). Every write to an instance (port, address, tags, meta) moves its
# ModifyIndex, so two reads of a service list the same versions exactly when none of its
# instances was registered, re-registered or removed in between.
InstanceVersion = tuple[str, str, str]


def service_versions(data: Any) -> frozenset[InstanceVersion]:
    """The instance versions of a ``/v1/health/service/<name>`` answer that
    :func:`parse_service_nodes` has accepted."""
    return frozenset(
        (
            str((entry.get("Node") or {}).get("Node") or ""),
            str((entry.get("Service") or {}).get("ID") or ""),
            str((entry.get("Service") or {}).get("ModifyIndex")),
        )
        for entry in data or ()
    )


def parse_node_services(data: Any, *, where: str) -> list[tuple[str, list[str], InstanceVersion]]:
    """Parse ``/v1/catalog/node/<node>``: (service name, tags, version) per instance.

    An unknown node (deregistered since the node list was read) answers ``null``.
    """
    shape = GoJSONReader(where)
    if data is None:
        return []
    answer = shape.obj(data, "answer")
    node = shape.text(shape.obj(answer.get("Node"), "Node").get("Node"), "Node.Node")
    result = []
    for service_id, svc in shape.obj(answer.get("Services"), "Services").items():
        svc = shape.obj(svc, f"Services[{service_id!r}]")
        name = shape.text(svc.get("Service"), f"Services[{service_id!r}].Service")
        tags = shape.strings(svc.get("Tags"), f"Services[{service_id!r}].Tags")
        result.append((name, tags, (node, str(service_id), str(svc.get("ModifyIndex")))))
    return result


Catalog = dict[str, list[str]]  # service name -> tags
Checks = dict[tuple[str, str], tuple[str, str, str, int]]  # (node, check id) -> state
Nodes = dict[str, tuple[str, ...]]  # node name -> state


def parse_catalog(data: Any) -> Catalog:
    """Parse ``/v1/catalog/services``: a map of service name to tags."""
    shape = GoJSONReader(POLLS["services"])
    return {
        str(name): shape.strings(tags, f"tags of {name!r}")
        for name, tags in shape.obj(data, "answer").items()
    }


def parse_checks(data: Any) -> Checks:
    """Parse ``/v1/health/state/any``: each check's service, status and modify index."""
    shape = GoJSONReader(POLLS["checks"])
    checks: Checks = {}
    for check in shape.objects(data, "check"):
        key = (shape.text(check.get("Node"), "Node"), shape.text(check.get("CheckID"), "CheckID"))
        modify_index = check.get("ModifyIndex")
        checks[key] = (
            shape.text(check.get("ServiceName"), "ServiceName"),
            shape.text(check.get("ServiceID"), "ServiceID"),
            shape.text(check.get("Status"), "Status"),
            modify_index if isinstance(modify_index, int) else 0,
        )
    return checks


def parse_nodes(data: Any) -> Nodes:
    """Parse ``/v1/catalog/nodes``: what of each node ends up in labels, and its index."""
    shape = GoJSONReader(POLLS["nodes"])
    nodes: Nodes = {}
    for node in shape.objects(data, "node"):
        nodes[shape.text(node.get("Node"), "Node")] = (
            str(node.get("ModifyIndex")),
            shape.text(node.get("Address"), "Address"),
            orjson.dumps(node.get("Meta"), option=orjson.OPT_SORT_KEYS).decode(),
            orjson.dumps(node.get("TaggedAddresses"), option=orjson.OPT_SORT_KEYS).decode(),
        )
    return nodes


# The three long-polls, by kind.
POLLS = {
    "services": "/v1/catalog/services",
    "checks": "/v1/health/state/any",
    "nodes": "/v1/catalog/nodes",
}


PARSERS: dict[str, Callable[[Any], Any]] = {
    "services": parse_catalog,
    "checks": parse_checks,
    "nodes": parse_nodes,
}
