"""What Nacos's answers mean: the label names, and the parsers of its instance shapes.

Label names are vmagent's (VictoriaMetrics ``lib/promscrape/discovery/nacos/
service_instance.go``) plus ``weight`` and ``instance_id``. Three shapes carry
instances: the client ``Instance`` (v1/v2 ``ServiceInfo.hosts``, v3 client list, 3.x
admin ``ClusterInfo.hosts``, gRPC ``ServiceInfo``), and 1.x/2.x's catalog
``IpAddressInfo`` (``valid`` for healthy; no id, cluster or ephemeral flag).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...model import ADDRESS_LABEL, LabelSet, join_host_port, sanitize_label_name
from .._json import JSONReader

# Label names, as vmagent's nacos_sd_configs names them (plus the last two).
META = "__meta_nacos_"
SERVICE = META + "service"  # the service's name, without its group
SERVICE_ADDRESS = META + "service_address"  # the instance's ip
SERVICE_PORT = META + "service_port"
SERVICE_HEALTHY = META + "service_healthy"  # "true"/"false"
SERVICE_ENABLED = META + "service_enabled"  # always "true": disabled instances are dropped
SERVICE_EPHEMERAL = META + "service_ephemeral"  # "true" for client-heartbeat instances
SERVICE_CLUSTER = META + "service_cluster"  # the instance's cluster (default DEFAULT)
SERVICE_NAMESPACE = META + "service_namespace"  # the namespace id; "public" for ""
SERVICE_GROUP = META + "service_group"  # the service's group (default DEFAULT_GROUP)
METADATA_PREFIX = META + "metadata_"  # instance metadata, key sanitized
SERVICE_WEIGHT = META + "service_weight"  # sdbridge: the instance's weight
SERVICE_INSTANCE_ID = META + "service_instance_id"  # sdbridge: Nacos's instanceId

PUBLIC = "public"
DEFAULT_GROUP = "DEFAULT_GROUP"
DEFAULT_CLUSTER = "DEFAULT"
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


def namespace_label(namespace: str) -> str:
    """The public namespace is ``""`` on 1.x/2.x and ``public`` on 3.x: ``public`` here."""
    return namespace or PUBLIC


def split_grouped(name: str, group: str) -> tuple[str, str]:
    """``GROUP@@service`` -> (group, service); a bare name keeps ``group``."""
    if "@@" in name:
        found, service = name.split("@@", 1)
        return found, service
    return group, name


@dataclass(frozen=True)
class ServiceKey:
    """Where a service lives: namespace id (``public`` for ``""``), group, name."""

    namespace: str
    group: str
    service: str

    @property
    def source(self) -> str:
        return f"nacos/{self.namespace}/{self.group}/{self.service}"


@dataclass
class Skips:
    """Instances skipped as invalid in one listing, with a description of each."""

    items: list[str]

    def add(self, what: str) -> None:
        self.items.append(what)


class Reader(JSONReader):
    """Reads fields of decoded JSON the way Nacos's Jackson mapping would; a wrong type is
    a BackendError naming where and what."""

    def objects(self, value: Any, what: str) -> list[dict[str, Any]]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(f"expected a list of {what}s, got {type(value).__name__}")
        return [self.obj(item, what) for item in value]

    def text(self, value: Any, what: str, default: str = "") -> str:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(f"{what} is not a string: {value!r:.100}")
        return str(value)

    def flag(self, value: Any, what: str, default: bool) -> bool:
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if value in ("true", "false"):
            return bool(value == "true")
        raise self.fail(f"{what} is not a boolean: {value!r:.100}")

    def number(self, value: Any, what: str, default: float) -> float:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(f"{what} is not a number: {value!r:.100}")
        return float(value)

    def metadata(self, value: Any, what: str) -> dict[str, str]:
        return {str(k): self.text(v, f"{what}[{k!r}]") for k, v in self.obj(value, what).items()}


def format_weight(weight: float) -> str:
    """Go's strconv.FormatFloat(w, 'f', -1, 64): ``1``, ``0.5``."""
    text = repr(weight)
    return text[:-2] if text.endswith(".0") else text


def valid_host(ip: str) -> bool:
    """An IPv4/IPv6 address or a DNS name (Nacos lets instances register a hostname)."""
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return bool(_HOSTNAME.fullmatch(ip)) and not ip.replace(".", "").isdigit()
    return True


Keep = Callable[[str, bool], bool]  # (cluster, healthy) -> keep the instance?


def parse_instance(
    shape: Reader,
    raw: dict[str, Any],
    key: ServiceKey,
    *,
    at: str,
    cluster: str | None = None,
    keep: Keep,
    skips: Skips,
) -> LabelSet | None:
    """One instance's labels; None if it is disabled, filtered or invalid (then in skips).

    ``cluster`` is given for the catalog's ``IpAddressInfo``, which lives in a cluster map.
    """
    if not shape.flag(raw.get("enabled"), f"{at}.enabled", True):
        return None  # offline: Nacos's clients never see it
    healthy = shape.flag(raw.get("healthy", raw.get("valid")), f"{at}.healthy", True)
    cluster_name = (
        cluster
        if cluster is not None
        else shape.text(raw.get("clusterName"), f"{at}.clusterName", DEFAULT_CLUSTER)
    )
    if not keep(cluster_name, healthy):
        return None
    ip = shape.text(raw.get("ip"), f"{at}.ip")
    port_value = raw.get("port")
    if isinstance(port_value, bool) or not isinstance(port_value, int):
        raise shape.fail(f"{at}.port is not a number: {port_value!r:.100}")
    grouped = f"{key.group}@@{key.service}"
    # Nacos's default ("simple") instance id generator: ip#port#cluster#group@@service.
    instance_id = shape.text(
        raw.get("instanceId"), f"{at}.instanceId", f"{ip}#{port_value}#{cluster_name}#{grouped}"
    )
    if not 0 < port_value <= 65535 or not valid_host(ip):
        skips.add(f"{key.source} instance {instance_id!r}: address {ip!r} port {port_value}")
        return None
    labels = {
        ADDRESS_LABEL: join_host_port(ip, port_value),
        SERVICE: key.service,
        SERVICE_ADDRESS: ip,
        SERVICE_PORT: str(port_value),
        SERVICE_HEALTHY: "true" if healthy else "false",
        SERVICE_ENABLED: "true",
        # The catalog's IpAddressInfo does not say: Nacos's default is ephemeral.
        SERVICE_EPHEMERAL: "true"
        if shape.flag(raw.get("ephemeral"), f"{at}.ephemeral", True)
        else "false",
        SERVICE_CLUSTER: cluster_name,
        SERVICE_NAMESPACE: namespace_label(key.namespace),
        SERVICE_GROUP: key.group,
        SERVICE_WEIGHT: format_weight(shape.number(raw.get("weight"), f"{at}.weight", 1.0)),
        SERVICE_INSTANCE_ID: instance_id,
    }
    for name, value in shape.metadata(raw.get("metadata"), f"{at}.metadata").items():
        labels[METADATA_PREFIX + sanitize_label_name(name)] = value
    return labels


def parse_hosts(
    shape: Reader, hosts: Any, key: ServiceKey, *, at: str, keep: Keep, skips: Skips
) -> list[LabelSet]:
    """A list of client ``Instance`` objects (ServiceInfo.hosts, v3 client list)."""
    found = []
    for n, raw in enumerate(shape.objects(hosts, "instance")):
        labels = parse_instance(shape, raw, key, at=f"{at}[{n}]", keep=keep, skips=skips)
        if labels is not None:
            found.append(labels)
    return found


def parse_service_detail(
    shape: Reader, detail: dict[str, Any], namespace: str, *, at: str, keep: Keep, skips: Skips
) -> tuple[ServiceKey, list[LabelSet]]:
    """A ``ServiceDetailInfo`` of a bulk listing: its key and its instances' labels."""
    service = shape.text(detail.get("serviceName"), f"{at}.serviceName")
    group = shape.text(detail.get("groupName"), f"{at}.groupName", DEFAULT_GROUP) or DEFAULT_GROUP
    if not service:
        raise shape.fail(f"{at}: a service without a serviceName")
    group, service = split_grouped(service, group)
    key = ServiceKey(namespace, group, service)
    found = []
    for cluster, info in sorted(shape.obj(detail.get("clusterMap"), f"{at}.clusterMap").items()):
        hosts = shape.objects(shape.obj(info, f"{at}.clusterMap[{cluster!r}]").get("hosts"), "host")
        for n, raw in enumerate(hosts):
            where = f"{at}.clusterMap[{cluster!r}].hosts[{n}]"
            # A full Instance (3.x) names its cluster; an IpAddressInfo (1.x/2.x) does not.
            labels = parse_instance(
                shape, raw, key, at=where, cluster=str(cluster), keep=keep, skips=skips
            )
            if labels is not None:
                found.append(labels)
    return key, found
