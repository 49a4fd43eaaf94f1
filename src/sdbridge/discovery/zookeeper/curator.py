"""The ``curator`` layout: Apache Curator service discovery.

Also Spring Cloud Zookeeper and Dubbo 3 application-level registration.
``<path>/<service>/<id>`` holds a ``ServiceInstance`` as JSON, ``{"name","id","address",
"port","sslPort","payload","registrationTimeUTC","serviceType","uriSpec"[,"enabled"]}``;
``address`` may be a host name. Source: apache/curator
``curator-x-discovery/.../ServiceInstance.java`` and ``details/JsonInstanceSerializer.java``.
"""

from __future__ import annotations

import orjson

from ...errors import InvalidTargetError
from ...model import ADDRESS_LABEL, LabelSet, join_host_port, sanitize_label_name
from .layout import META, PATH_LABEL, integer_field

# Label names, from the ServiceInstance JSON (and PATH_LABEL from .layout).
CURATOR = META + "curator_"
CURATOR_NAME = CURATOR + "name"  # the service name
CURATOR_ID = CURATOR + "id"  # the instance id
CURATOR_ADDRESS = CURATOR + "address"  # as registered: an IP address or a host name
CURATOR_PORT = CURATOR + "port"  # "" when the instance has only an sslPort
CURATOR_SSL_PORT = CURATOR + "ssl_port"  # "" when the instance has none
CURATOR_SERVICE_TYPE = CURATOR + "service_type"  # DYNAMIC, STATIC, PERMANENT, ...
CURATOR_REGISTRATION_TIME = CURATOR + "registration_time_utc"  # epoch milliseconds
CURATOR_ENABLED = CURATOR + "enabled"  # "true" unless the instance says otherwise
CURATOR_URI_SPEC = CURATOR + "uri_spec"  # the template, e.g. {scheme}://{address}:{port}
CURATOR_PAYLOAD_CLASS = CURATOR + "payload_class"  # Jackson's "@class" of the payload
CURATOR_PAYLOAD_PREFIX = CURATOR + "payload_"  # scalar payload fields, name sanitized
CURATOR_METADATA_PREFIX = CURATOR + "payload_metadata_"  # payload.metadata entries


def _scalar(value: object) -> str | None:
    """A JSON scalar as a label value (booleans as Go and Java print them), else None."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return None


def _uri_spec(value: object) -> str:
    """Curator's ``UriSpec`` as its template string, e.g. ``{scheme}://{address}:{port}``."""
    if not isinstance(value, dict) or not isinstance(value.get("parts"), list):
        return ""
    text = []
    for part in value["parts"]:
        if isinstance(part, dict) and isinstance(part.get("value"), str):
            text.append("{" + part["value"] + "}" if part.get("variable") else part["value"])
    return "".join(text)


def parse_curator_instance(data: bytes, path: str) -> LabelSet:
    """Labels of a Curator ``ServiceInstance``; the address may be a host name."""
    if not data:
        raise InvalidTargetError(f"znode {path}: empty, expected a Curator ServiceInstance")
    try:
        instance = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidTargetError(f"znode {path}: not a Curator ServiceInstance: {exc}") from None
    if not isinstance(instance, dict):
        raise InvalidTargetError(f"znode {path}: a Curator ServiceInstance is a JSON object")
    address = instance.get("address")
    if not isinstance(address, str) or not address.strip():
        raise InvalidTargetError(f"znode {path}: no address in the ServiceInstance")
    address = address.strip()
    port = integer_field(instance.get("port"), f"znode {path}: port", allow_none=True)
    ssl_port = integer_field(instance.get("sslPort"), f"znode {path}: sslPort", allow_none=True)
    chosen = port if port is not None else ssl_port
    if chosen is None:
        raise InvalidTargetError(f"znode {path}: the ServiceInstance has no port nor sslPort")
    enabled = instance.get("enabled", True)
    labels = {
        ADDRESS_LABEL: join_host_port(address, chosen),
        PATH_LABEL: path,
        CURATOR_NAME: _scalar(instance.get("name")) or "",
        CURATOR_ID: _scalar(instance.get("id")) or "",
        CURATOR_ADDRESS: address,
        CURATOR_PORT: "" if port is None else str(port),
        CURATOR_SSL_PORT: "" if ssl_port is None else str(ssl_port),
        CURATOR_SERVICE_TYPE: _scalar(instance.get("serviceType")) or "",
        CURATOR_REGISTRATION_TIME: _scalar(instance.get("registrationTimeUTC")) or "",
        CURATOR_ENABLED: _scalar(enabled if enabled is not None else True) or "",
        CURATOR_URI_SPEC: _uri_spec(instance.get("uriSpec")),
    }
    payload = instance.get("payload")
    if isinstance(payload, dict):
        for key, value in sorted(payload.items()):
            if key == "@class":
                labels[CURATOR_PAYLOAD_CLASS] = _scalar(value) or ""
            elif key == "metadata" and isinstance(value, dict):
                for meta_key, meta_value in sorted(value.items()):
                    text = _scalar(meta_value)
                    if text is not None:
                        labels[CURATOR_METADATA_PREFIX + sanitize_label_name(meta_key)] = text
            elif (text := _scalar(value)) is not None:
                labels[CURATOR_PAYLOAD_PREFIX + sanitize_label_name(key)] = text
    return labels


class CuratorLayout:
    """``<base>/<service>/<id>``: depth 0, 1, 2; the instances' data is read."""

    def lists_children(self, depth: int) -> bool:
        """The base path and each service are listed."""
        return depth < 2

    def descends_into(self, depth: int, name: str) -> bool:
        """Every service and instance counts."""
        return True

    def reads_data(self, depth: int) -> bool:
        """Only instances hold data."""
        return depth == 2

    def parse(self, path: str, depth: int, data: bytes | None) -> LabelSet | None:
        """An instance znode is a target."""
        if depth != 2:
            return None
        return parse_curator_instance(data or b"", path)
