"""The ``serverset`` layout: Twitter/Finagle serversets, as Prometheus reads them.

Labelled exactly like Prometheus's ``serverset_sd_configs`` (prometheus/prometheus
``discovery/zookeeper/zookeeper.go``): every znode under a path whose data is a serverset
member becomes a target.
"""

from __future__ import annotations

import orjson

from ...errors import InvalidTargetError
from ...model import ADDRESS_LABEL, LabelSet, join_host_port, sanitize_label_name
from .layout import integer_field

# Label names, as in prometheus/prometheus discovery/zookeeper/zookeeper.go.
SERVERSET = "__meta_serverset_"
SERVERSET_PATH = SERVERSET + "path"  # the znode of the member
SERVERSET_ENDPOINT_PREFIX = SERVERSET + "endpoint"  # _host, _port, _host_<name>, _port_<name>
SERVERSET_STATUS = SERVERSET + "status"  # the member's status, e.g. ALIVE
SERVERSET_SHARD = SERVERSET + "shard"  # the member's shard, 0 when unset


def parse_serverset_member(data: bytes, path: str) -> LabelSet:
    """Labels of a serverset member, as Prometheus's ``parseServersetMember`` makes them.

    Go's ``encoding/json`` matches field names case-insensitively, so this does too.
    """
    try:
        member = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidTargetError(f"znode {path}: not a serverset member: {exc}") from None
    if member is None:  # Go decodes JSON null into an empty struct
        member = {}
    if not isinstance(member, dict):
        raise InvalidTargetError(f"znode {path}: serverset member must be a JSON object")
    fields = {str(k).lower(): v for k, v in member.items()}
    endpoint = _endpoint(fields.get("serviceendpoint"), f"znode {path}: serviceEndpoint")
    status = fields.get("status")
    if status is not None and not isinstance(status, str):
        raise InvalidTargetError(f"znode {path}: status must be a string, got {status!r}")
    shard = integer_field(fields.get("shard", 0), f"znode {path}: shard", allow_none=True) or 0
    host, port = endpoint
    labels = {
        SERVERSET_PATH: path,
        ADDRESS_LABEL: join_host_port(host, port),
        SERVERSET_ENDPOINT_PREFIX + "_host": host,
        SERVERSET_ENDPOINT_PREFIX + "_port": str(port),
        SERVERSET_STATUS: status or "",
        SERVERSET_SHARD: str(shard),
    }
    additional = fields.get("additionalendpoints") or {}
    if not isinstance(additional, dict):
        raise InvalidTargetError(f"znode {path}: additionalEndpoints must be a JSON object")
    for name, value in additional.items():
        extra_host, extra_port = _endpoint(value, f"znode {path}: endpoint {name!r}")
        clean = sanitize_label_name(name)
        labels[f"{SERVERSET_ENDPOINT_PREFIX}_host_{clean}"] = extra_host
        labels[f"{SERVERSET_ENDPOINT_PREFIX}_port_{clean}"] = str(extra_port)
    return labels


def _endpoint(value: object, what: str) -> tuple[str, int]:
    if value is None:
        return "", 0
    if not isinstance(value, dict):
        raise InvalidTargetError(f"{what} must be a JSON object")
    fields = {str(k).lower(): v for k, v in value.items()}
    host = fields.get("host") or ""
    if not isinstance(host, str):
        raise InvalidTargetError(f"{what}: host must be a string, got {host!r}")
    port = integer_field(fields.get("port"), f"{what}: port", allow_none=True) or 0
    return host, port


class ServersetLayout:
    """Any depth, like Prometheus's tree cache: every znode with member data is a target."""

    def lists_children(self, depth: int) -> bool:
        """Every znode is listed."""
        return True

    def descends_into(self, depth: int, name: str) -> bool:
        """Every child counts."""
        return True

    def reads_data(self, depth: int) -> bool:
        """Every znode is read."""
        return True

    def parse(self, path: str, depth: int, data: bytes | None) -> LabelSet | None:
        """A znode with data is a member."""
        if not data:  # an inner znode (Prometheus drops these silently, so do we)
            return None
        return parse_serverset_member(data, path)
