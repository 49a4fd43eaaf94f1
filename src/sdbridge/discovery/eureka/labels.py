"""The label names of eureka_sd, and one instance's target as Prometheus builds it.

Labels and ``__address__`` are those of Prometheus's eureka_sd, name for name and value
for value (prometheus/prometheus ``discovery/eureka/eureka.go`` ``targetsForApp``).
"""

from __future__ import annotations

import re

from ...model import ADDRESS_LABEL, LabelSet, is_valid_address, join_host_port, sanitize_label_name
from .decode import RawInstance

# Label names, as in prometheus/prometheus discovery/eureka/eureka.go.
META = "__meta_eureka_"
INSTANCE_META = META + "app_instance_"
INSTANCE_LABEL = "instance"  # Prometheus's target label: the instanceId (absent when empty)
APP_NAME = META + "app_name"  # the application's <name>, upper case in Eureka
HOSTNAME = INSTANCE_META + "hostname"  # <hostName>, also the host of __address__
HOMEPAGE_URL = INSTANCE_META + "homepage_url"  # <homePageUrl>
STATUSPAGE_URL = INSTANCE_META + "statuspage_url"  # <statusPageUrl>
HEALTHCHECK_URL = INSTANCE_META + "healthcheck_url"  # <healthCheckUrl>
IP_ADDR = INSTANCE_META + "ip_addr"  # <ipAddr>
VIP_ADDRESS = INSTANCE_META + "vip_address"  # <vipAddress>
SECURE_VIP_ADDRESS = INSTANCE_META + "secure_vip_address"  # <secureVipAddress>
STATUS = INSTANCE_META + "status"  # <status>: UP, DOWN, STARTING, OUT_OF_SERVICE, UNKNOWN
PORT = INSTANCE_META + "port"  # <port>'s number, only when the instance has a <port>
PORT_ENABLED = INSTANCE_META + "port_enabled"  # its enabled attribute, "true"/"false"
SECURE_PORT = INSTANCE_META + "secure_port"  # <securePort>'s number, when present
SECURE_PORT_ENABLED = INSTANCE_META + "secure_port_enabled"  # its enabled attribute
DATACENTERINFO_NAME = INSTANCE_META + "datacenterinfo_name"  # MyOwn, Amazon ...
DATACENTERINFO_METADATA = INSTANCE_META + "datacenterinfo_metadata_"  # one per key, sanitized
COUNTRY_ID = INSTANCE_META + "country_id"  # <countryId>, "0" when absent
ID = INSTANCE_META + "id"  # <instanceId>
METADATA = INSTANCE_META + "metadata_"  # one label per metadata key, sanitized
DEFAULT_PORT = 80  # Prometheus's port for an instance without <port>
_GO_INT = re.compile(r"[+-]?[0-9]+")
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def _go_int(text: str, what: str) -> int:
    # encoding/xml: empty is 0, else strconv.ParseInt of the trimmed text, 64 bits.
    text = text.strip()
    if not text:
        return 0
    if not _GO_INT.fullmatch(text) or not -(2**63) <= int(text) < 2**63:
        raise ValueError(f"{what} {text[:40]!r} is not a number")
    return int(text)


def _go_bool(text: str | None, what: str) -> bool:
    if text is None:
        return False
    text = text.strip()
    if not text or text in _GO_FALSE:
        return False
    if text in _GO_TRUE:
        return True
    raise ValueError(f"{what} {text[:40]!r} is not a boolean")


def instance_labels(app: str, raw: RawInstance) -> LabelSet:
    """The target of one instance, as Prometheus's eureka_sd builds it (empty values
    left out); ValueError naming the field when a value cannot be decoded as Go would,
    or when the address is not a valid ``host:port``."""
    if raw.problem is not None:
        raise ValueError(raw.problem)
    fields = raw.fields
    host = fields.get("hostName", "")
    labels: LabelSet = {
        INSTANCE_LABEL: fields.get("instanceId", ""),
        APP_NAME: app,
        HOSTNAME: host,
        HOMEPAGE_URL: fields.get("homePageUrl", ""),
        STATUSPAGE_URL: fields.get("statusPageUrl", ""),
        HEALTHCHECK_URL: fields.get("healthCheckUrl", ""),
        IP_ADDR: fields.get("ipAddr", ""),
        VIP_ADDRESS: fields.get("vipAddress", ""),
        SECURE_VIP_ADDRESS: fields.get("secureVipAddress", ""),
        STATUS: fields.get("status", ""),
        COUNTRY_ID: str(_go_int(fields.get("countryId", ""), "countryId")),
        ID: fields.get("instanceId", ""),
    }
    port = DEFAULT_PORT
    if raw.port is not None:
        port = _go_int(raw.port[0], "port")
        labels[PORT] = str(port)
        labels[PORT_ENABLED] = "true" if _go_bool(raw.port[1], "port enabled") else "false"
    if raw.secure_port is not None:
        labels[SECURE_PORT] = str(_go_int(raw.secure_port[0], "securePort"))
        enabled = _go_bool(raw.secure_port[1], "securePort enabled")
        labels[SECURE_PORT_ENABLED] = "true" if enabled else "false"
    if raw.datacenter is not None:
        labels[DATACENTERINFO_NAME] = raw.datacenter
        for name, value in raw.datacenter_metadata:
            labels[DATACENTERINFO_METADATA + sanitize_label_name(name)] = value
    for name, value in raw.metadata:
        labels[METADATA + sanitize_label_name(name)] = value
    address = join_host_port(host, port)
    if not is_valid_address(address):
        raise ValueError(f"address {address[:80]!r} is not a valid host:port")
    labels[ADDRESS_LABEL] = address
    # An empty label value is an absent label (Prometheus drops them on relabeling).
    return {k: v for k, v in labels.items() if v}
