"""Eureka's answers decoded as Go's ``encoding/xml`` decodes them into Prometheus's structs
(prometheus/prometheus ``discovery/eureka/client.go``), and Eureka's JSON the same way.

Nothing here interprets a value: an instance is kept as the text of its fields, so that
a value Go could not decode is found per instance (:mod:`.labels`) and skips only that one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from xml.parsers import expat

import orjson

from ...errors import BackendError

_STATUSES = frozenset({"UP", "DOWN", "STARTING", "OUT_OF_SERVICE", "UNKNOWN"})


Port = tuple[str, str | None]  # (the element's text, its enabled attribute if present)


@dataclass(slots=True)
class RawInstance:
    """An ``<instance>`` as decoded, before any value is interpreted."""

    fields: dict[str, str] = field(default_factory=dict)  # hostName, status, ... (text)
    port: Port | None = None
    secure_port: Port | None = None
    datacenter: str | None = None  # dataCenterInfo's name; None: no <dataCenterInfo>
    datacenter_metadata: list[tuple[str, str]] = field(default_factory=list)
    metadata: list[tuple[str, str]] = field(default_factory=list)  # (element name, value)
    problem: str | None = None  # set when the instance's shape is wrong (JSON)

    def key(self) -> str:
        """Eureka's ``InstanceInfo.getId()``: instanceId, an Amazon instance-id, or hostName."""
        if instance_id := self.fields.get("instanceId"):
            return instance_id
        if self.datacenter == "Amazon":
            for name, value in self.datacenter_metadata:
                if name == "instance-id" and value:
                    return value
        return self.fields.get("hostName", "")

    def status(self) -> str:
        """The status as Eureka's ``InstanceStatus.toEnum`` reads it (unknown: UNKNOWN)."""
        status = self.fields.get("status", "").upper()
        return status if status in _STATUSES else "UNKNOWN"


@dataclass(slots=True)
class Applications:
    """A decoded ``/apps`` or ``/apps/delta`` answer."""

    hash_code: str = ""
    apps: list[tuple[str, list[RawInstance]]] = field(default_factory=list)


_INSTANCE_TEXT = frozenset(
    {
        "hostName",
        "homePageUrl",
        "statusPageUrl",
        "healthCheckUrl",
        "app",
        "ipAddr",
        "vipAddress",
        "secureVipAddress",
        "status",
        "actionType",
        "countryId",
        "instanceId",
    }
)


class _XMLDecoder:
    """Decodes Eureka's XML as Go's encoding/xml decodes into Prometheus's structs.

    Elements are matched by local name; a text field is the element's own character
    data (children skipped); a metadata item's value is its raw inner XML (Go's
    ``,innerxml``), entities and all. A DTD is refused (no entity expansion attacks).
    """

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.result = Applications()
        self.roles: list[str] = []
        self.texts: list[list[str] | None] = []
        self.app_name = ""
        self.app_instances: list[RawInstance] = []
        self.instance = RawInstance()
        self.item_start = 0
        self.attrs: dict[str, str] = {}
        self.parser = expat.ParserCreate()
        self.parser.buffer_text = True
        self.parser.StartElementHandler = self._start
        self.parser.EndElementHandler = self._end
        self.parser.CharacterDataHandler = self._data
        self.parser.StartDoctypeDeclHandler = self._doctype

    def decode(self) -> Applications:
        self.parser.Parse(self.body, True)
        return self.result

    @staticmethod
    def _doctype(*_: object) -> None:
        raise ValueError("a DTD is not allowed in a Eureka answer")

    def _role(self, parent: str, local: str) -> str:
        if parent == "root":
            return {"application": "app", "apps__hashcode": "hash"}.get(local, "skip")
        if parent == "app":
            return {"name": "app.name", "instance": "instance"}.get(local, "skip")
        if parent == "instance":
            if local in _INSTANCE_TEXT:
                return "text:" + local
            return {
                "port": "port",
                "securePort": "securePort",
                "dataCenterInfo": "dc",
                "metadata": "meta",
            }.get(local, "skip")
        if parent == "dc":
            return {"name": "dc.name", "metadata": "dcmeta"}.get(local, "skip")
        if parent in ("meta", "dcmeta"):
            return "item"
        return "skip"

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        local = name.rpartition(":")[2]
        if not self.roles and local != "applications":
            # Go would decode any root into an empty registry: an HTML error page that
            # happens to be well-formed would remove every target.
            raise ValueError(f"answer is <{local[:40]}>, not Eureka's <applications>")
        role = self._role(self.roles[-1], local) if self.roles else "root"
        self.roles.append(role)
        collect = role not in ("root", "app", "instance", "dc", "meta", "dcmeta", "item", "skip")
        self.texts.append([] if collect else None)
        if role == "app":
            self.app_name, self.app_instances = "", []
        elif role == "instance":
            self.instance = RawInstance()
        elif role in ("port", "securePort"):
            self.attrs = {k.rpartition(":")[2]: v for k, v in attrs.items()}
        elif role == "dc":
            self.instance.datacenter = self.instance.datacenter or ""
        elif role == "item":
            self.item_start = _start_tag_end(self.body, self.parser.CurrentByteIndex)

    def _data(self, text: str) -> None:
        buffer = self.texts[-1]
        if buffer is not None:
            buffer.append(text)

    def _end(self, name: str) -> None:
        role = self.roles.pop()
        buffer = self.texts.pop()
        text = "".join(buffer) if buffer is not None else ""
        instance = self.instance
        if role.startswith("text:"):
            instance.fields[role[5:]] = text
        elif role == "port":
            instance.port = (text, self.attrs.get("enabled"))
        elif role == "securePort":
            instance.secure_port = (text, self.attrs.get("enabled"))
        elif role == "dc.name":
            instance.datacenter = text
        elif role == "item":
            end = self.parser.CurrentByteIndex
            raw = self.body[self.item_start : end] if self.item_start >= 0 else b""
            items = instance.metadata if self.roles[-1] == "meta" else instance.datacenter_metadata
            items.append((name.rpartition(":")[2], raw.decode("utf-8", "replace")))
        elif role == "instance":
            self.app_instances.append(instance)
        elif role == "app.name":
            self.app_name = text
        elif role == "app":
            self.result.apps.append((self.app_name, self.app_instances))
        elif role == "hash":
            self.result.hash_code = text


def _start_tag_end(body: bytes, start: int) -> int:
    """Where the content of the element whose start tag begins at ``start`` begins;
    -1 for an empty-element tag (``<a/>``). The document is known to be well-formed,
    so the first ``>`` outside a quoted attribute value ends the tag."""
    quote = 0
    for position in range(start + 1, len(body)):
        byte = body[position]
        if quote:
            if byte == quote:
                quote = 0
        elif byte in (0x22, 0x27):  # " '
            quote = byte
        elif byte == 0x3E:  # >
            return -1 if body[position - 1] == 0x2F else position + 1  # "/>"
    return -1


def parse_xml(body: bytes, where: str) -> Applications:
    """Decode an XML ``<applications>`` answer; BackendError if it is not well-formed."""
    if not body.strip():
        raise BackendError(f"{where}: empty answer")
    try:
        return _XMLDecoder(body).decode()
    except expat.ExpatError as exc:
        raise BackendError(
            f"{where}: answer is not well-formed XML ({expat.errors.messages[exc.code]},"
            f" line {exc.lineno}, column {exc.offset}): {body[:80]!r}"
        ) from exc
    except ValueError as exc:
        raise BackendError(f"{where}: {exc}") from exc


def _json_list(value: Any) -> list[Any]:
    # Older Eureka JSON (Jettison) writes a one-element list as the element itself.
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _json_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise ValueError(f"{value!r:.60} is not a scalar")


def _json_port(value: Any) -> Port | None:
    if value is None:
        return None
    if isinstance(value, dict):
        enabled = value.get("@enabled")
        return _json_text(value.get("$")), None if enabled is None else _json_text(enabled)
    return _json_text(value), None


def _json_items(value: Any) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise ValueError(f"metadata {value!r:.60} is not an object")
    # {"@class": "java.util.Collections$EmptyMap"} is how Eureka writes an empty map.
    return [(k, _json_text(v)) for k, v in value.items() if not k.startswith("@")]


def _json_instance(data: Any) -> RawInstance:
    if not isinstance(data, dict):
        raise ValueError(f"instance {data!r:.60} is not an object")
    raw = RawInstance()
    for name in _INSTANCE_TEXT:
        if name in data:
            raw.fields[name] = _json_text(data[name])
    raw.port = _json_port(data.get("port"))
    raw.secure_port = _json_port(data.get("securePort"))
    dc = data.get("dataCenterInfo")
    if isinstance(dc, dict):
        raw.datacenter = _json_text(dc.get("name"))
        raw.datacenter_metadata = _json_items(dc.get("metadata"))
    raw.metadata = _json_items(data.get("metadata"))
    return raw


def parse_json(body: bytes, where: str) -> Applications:
    """Decode a JSON ``{"applications": ...}`` answer (Eureka's Jackson shape)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BackendError(f"{where}: answer is not JSON ({exc}): {body[:80]!r}") from exc
    root = data.get("applications") if isinstance(data, dict) else None
    if not isinstance(root, dict):
        raise BackendError(f'{where}: answer has no "applications" object: {body[:80]!r}')
    result = Applications(hash_code=_json_text(root.get("apps__hashcode")))
    for position, app in enumerate(_json_list(root.get("application"))):
        if not isinstance(app, dict):
            raise BackendError(f"{where}: application {position} is not an object")
        instances: list[RawInstance] = []
        for data_instance in _json_list(app.get("instance")):
            try:
                instances.append(_json_instance(data_instance))
            except ValueError as exc:
                key = data_instance.get("instanceId") if isinstance(data_instance, dict) else None
                fields = {"instanceId": str(key or f"#{len(instances)}")}
                instances.append(RawInstance(fields=fields, problem=str(exc)))
        result.apps.append((_json_text(app.get("name")), instances))
    return result


def parse_answer(body: bytes, content_type: str, where: str) -> Applications:
    """Decode an answer as its Content-Type says: JSON, else XML (what Prometheus reads)."""
    if "json" in content_type.lower():
        return parse_json(body, where)
    return parse_xml(body, where)
