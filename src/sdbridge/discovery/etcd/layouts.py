"""How each framework writes an instance into etcd, read back as targets.

One parser per layout turns a key and its value into label sets (or raises
:class:`~sdbridge.errors.InvalidTargetError` naming what is wrong); the label names are
declared here, once. The layouts and their sources are listed in the package docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from ...errors import InvalidTargetError
from ...model import (
    ADDRESS_LABEL,
    LabelSet,
    is_valid_address,
    join_host_port,
    sanitize_label_name,
)
from .config import MISSING, EtcdSDConfig, JSONFields, get_field, parse_field_path
from .labels import (
    DNS_LABEL_PREFIX,
    ENDPOINT_LABEL,
    ENDPOINT_SCHEME_LABEL,
    INSTANCE_ID_LABEL,
    JSON_LABEL_PREFIX,
    METADATA_LABEL,
    METADATA_LABEL_PREFIX,
    SERVICE_LABEL,
    VERSION_LABEL,
)


def _json(value: bytes) -> object:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidTargetError(f"value is not JSON: {exc}") from None


def _object(value: bytes, what: str) -> dict[str, Any]:
    data = _json(value)
    if not isinstance(data, dict):
        raise InvalidTargetError(f"value is not a {what} JSON object")
    return data


def _string(data: dict[str, Any], field: str, *, required: bool = False) -> str:
    value = data.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise InvalidTargetError(f"field {field!r} must be a non-empty string, got {value!r}")
    return value


def _address(address: object, where: str) -> str:
    if not isinstance(address, str) or not is_valid_address(address):
        raise InvalidTargetError(f"{where} {address!r} is not host:port")
    return address


def _text(value: object) -> str:
    """A label value from a JSON scalar; containers are written as compact JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def metadata_labels(*maps: object) -> LabelSet:
    """``__meta_etcd_metadata_<key>`` for each key of each map; later maps win."""
    labels: LabelSet = {}
    for metadata in maps:
        if metadata is None:
            continue
        if not isinstance(metadata, dict):
            raise InvalidTargetError(f"metadata must be an object, got {metadata!r}")
        for key in sorted(metadata):
            text = _text(metadata[key])
            if text:
                labels[METADATA_LABEL_PREFIX + sanitize_label_name(str(key))] = text
    return labels


def _parent(key: str) -> str:
    return key.rpartition("/")[0]


def parse_endpoints(key: str, value: bytes) -> list[LabelSet]:
    """etcd naming/endpoints: ``{"Op":0,"Addr":"h:p","Metadata":...}``; Op 1 is no instance."""
    data = _object(value, "naming endpoint")
    op = data.get("Op", 0)
    if op == 1:
        return []
    if op != 0:
        raise InvalidTargetError(f"unknown Op {op!r} (0 is Add, 1 is Delete)")
    labels = {ADDRESS_LABEL: _address(data.get("Addr"), "Addr"), SERVICE_LABEL: _parent(key)}
    metadata = data.get("Metadata")
    if isinstance(metadata, dict):
        labels.update(metadata_labels(metadata))
    elif metadata is not None:
        labels[METADATA_LABEL] = _text(metadata)
    return [labels]


def parse_kratos(key: str, value: bytes) -> list[LabelSet]:
    """Kratos ServiceInstance: one target per endpoint URL."""
    data = _object(value, "Kratos ServiceInstance")
    common = {
        SERVICE_LABEL: _string(data, "name", required=True),
        INSTANCE_ID_LABEL: _string(data, "id"),
        VERSION_LABEL: _string(data, "version"),
        **metadata_labels(data.get("metadata")),
    }
    endpoints = data.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        raise InvalidTargetError("field 'endpoints' must be a non-empty list of URLs")
    targets = []
    for endpoint in endpoints:
        if not isinstance(endpoint, str):
            raise InvalidTargetError(f"endpoint {endpoint!r} is not a URL string")
        parts = urlsplit(endpoint)
        if not parts.scheme:
            raise InvalidTargetError(f"endpoint {endpoint!r} has no scheme")
        address = _address(parts.netloc, f"endpoint {endpoint!r}: host")
        # Kratos before v2.3.1 wrote ?isSecure=true instead of grpcs:// and https://.
        secure = parse_qs(parts.query).get("isSecure") == ["true"]
        scheme = parts.scheme + "s" if secure and not parts.scheme.endswith("s") else parts.scheme
        targets.append(
            {
                **common,
                ADDRESS_LABEL: address,
                ENDPOINT_LABEL: endpoint,
                ENDPOINT_SCHEME_LABEL: scheme,
            }
        )
    return targets


def parse_go_zero(key: str, value: bytes) -> list[LabelSet]:
    """go-zero: a plain ``host:port`` under ``<service key>/<lease id>``."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidTargetError("value is not UTF-8 text") from None
    service, _, instance = key.rpartition("/")
    return [
        {
            ADDRESS_LABEL: _address(text, "value"),
            SERVICE_LABEL: service,
            INSTANCE_ID_LABEL: instance,
        }
    ]


def parse_go_micro(key: str, value: bytes) -> list[LabelSet]:
    """go-micro Service: one target per node; node metadata overrides service metadata."""
    data = _object(value, "go-micro Service")
    service = _string(data, "name", required=True)
    version = _string(data, "version")
    nodes = data.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        raise InvalidTargetError("field 'nodes' must be a non-empty list")
    targets = []
    for node in nodes:
        if not isinstance(node, dict):
            raise InvalidTargetError(f"node {node!r} is not an object")
        targets.append(
            {
                **metadata_labels(data.get("metadata"), node.get("metadata")),
                ADDRESS_LABEL: _address(node.get("address"), "node address"),
                SERVICE_LABEL: service,
                VERSION_LABEL: version,
                INSTANCE_ID_LABEL: _string(node, "id"),
            }
        )
    return targets


def coredns_domain(key: str, path: str) -> str:
    """The DNS name of a CoreDNS etcd key: ``/skydns/local/a/b`` → ``b.a.local``."""
    root = path.rstrip("/") + "/"
    if not key.startswith(root):
        raise InvalidTargetError(f"key is not under coredns_path {path!r}")
    labels = [label for label in key[len(root) :].split("/") if label]
    return ".".join(reversed(labels))


def parse_coredns(key: str, value: bytes, path: str) -> list[LabelSet]:
    """SkyDNS/CoreDNS record: ``host`` and ``port``; records without a port are skipped."""
    data = _object(value, "SkyDNS service")
    host = _string(data, "host", required=True)
    port = data.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port <= 65535:
        raise InvalidTargetError(f"field 'port' must be 1..65535, got {port!r}")
    address = join_host_port(host, port)
    labels = {
        ADDRESS_LABEL: _address(address, "host and port"),
        SERVICE_LABEL: coredns_domain(key, path),
    }
    for field in ("priority", "weight", "ttl", "text", "group"):
        text = _text(data.get(field))
        if text and text != "0":  # the Go struct omits empty values: so do we
            labels[DNS_LABEL_PREFIX + field] = text
    return [labels]


def parse_json(value: bytes, fields: JSONFields) -> list[LabelSet]:
    """Generic JSON: the address (or host and port) and labels at configured field paths."""
    data = _json(value)
    if fields.address is not None:
        found = get_field(data, parse_field_path(fields.address))
        if found is MISSING:
            raise InvalidTargetError(f"no field {fields.address!r}")
        address = _address(found, f"field {fields.address!r}")
    else:
        assert fields.host is not None
        assert fields.port is not None
        host = get_field(data, parse_field_path(fields.host))
        port = get_field(data, parse_field_path(fields.port))
        for path, found in ((fields.host, host), (fields.port, port)):
            if found is MISSING:
                raise InvalidTargetError(f"no field {path!r}")
        if not isinstance(host, str) or not isinstance(port, int | str):
            raise InvalidTargetError(f"host {host!r} and port {port!r} do not make an address")
        address = _address(join_host_port(host, port), "address")
    labels = {ADDRESS_LABEL: address}
    for name, path in sorted(fields.labels.items()):
        found = get_field(data, parse_field_path(path))
        if found is not MISSING:
            labels[JSON_LABEL_PREFIX + name] = _text(found)
    return [labels]


def layout_parser(config: EtcdSDConfig) -> Callable[[str, bytes], list[LabelSet]]:
    """The function reading one key's value in the configured layout."""
    match config.layout:
        case "endpoints":
            return parse_endpoints
        case "kratos":
            return parse_kratos
        case "go-zero":
            return parse_go_zero
        case "go-micro":
            return parse_go_micro
        case "coredns":
            path = config.coredns_path
            return lambda key, value: parse_coredns(key, value, path)
        case "json":
            fields = config.fields
            assert fields is not None
            return lambda _key, value: parse_json(value, fields)
