"""The ``etcd_sd_configs`` options, and the field paths of the ``json`` layout."""

from __future__ import annotations

import re
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from ...durations import Duration
from ...model import is_valid_label_name
from .._http import TLSConfig
from ..base import MechanismConfig, RefreshConfig
from .labels import JSON_LABEL_PREFIX

Layout = Literal["endpoints", "kratos", "go-zero", "go-micro", "coredns", "json"]

_PATH_SEGMENT_RE = re.compile(r"^(?P<name>[^.\[\]]*)(?P<indexes>(?:\[\d+\])*)$")
_INDEX_RE = re.compile(r"\[(\d+)\]")


def parse_field_path(path: str) -> tuple[str | int, ...]:
    """Parse ``a.b[0].c`` into ``("a", "b", 0, "c")``; raise ValueError if malformed."""
    parts: list[str | int] = []
    if not path:
        raise ValueError("a field path must not be empty")
    for segment in path.split("."):
        match = _PATH_SEGMENT_RE.match(segment)
        if match is None or (not match["name"] and not match["indexes"]):
            raise ValueError(f"invalid field path {path!r} (use e.g. service.nodes[0].address)")
        if match["name"]:
            parts.append(match["name"])
        parts.extend(int(i) for i in _INDEX_RE.findall(match["indexes"]))
    return tuple(parts)


MISSING = object()
"""What :func:`get_field` returns for a path that is not in the value."""


def get_field(data: object, path: tuple[str | int, ...]) -> object:
    """The value at ``path`` in decoded JSON, or the :data:`MISSING` sentinel."""
    for part in path:
        if isinstance(part, int):
            if not isinstance(data, list) or part >= len(data):
                return MISSING
            data = data[part]
        else:
            if not isinstance(data, dict) or part not in data:
                return MISSING
            data = data[part]
    return data


class JSONFields(MechanismConfig):
    """Where the ``json`` layout finds an instance's address and labels in a value."""

    address: str | None = Field(None, description="field path of a host:port string")
    host: str | None = Field(None, description="field path of the host (with port)")
    port: str | None = Field(None, description="field path of the port (with host)")
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="label suffix → field path; becomes __meta_etcd_json_<suffix>",
    )

    @field_validator("address", "host", "port")
    @classmethod
    def _valid_path(cls, value: str | None) -> str | None:
        if value is not None:
            parse_field_path(value)
        return value

    @field_validator("labels")
    @classmethod
    def _valid_labels(cls, value: dict[str, str]) -> dict[str, str]:
        for name, path in value.items():
            if not is_valid_label_name(JSON_LABEL_PREFIX + name):
                raise ValueError(f"labels: {name!r} does not make a valid label name")
            parse_field_path(path)
        return value

    @model_validator(mode="after")
    def _one_address(self) -> Self:
        if (self.address is None) == (self.host is None and self.port is None):
            raise ValueError("give either address, or host and port")
        if self.address is None and (self.host is None or self.port is None):
            raise ValueError("host and port must be given together")
        return self


class EtcdClientConfig(MechanismConfig):
    """How to reach etcd: shared by ``etcd_sd_configs`` and ``registry.etcd``."""

    endpoints: list[str] = Field(
        min_length=1, description="etcd client URLs, e.g. http://127.0.0.1:2379"
    )
    username: str | None = None
    password: SecretStr | None = None
    tls_config: TLSConfig | None = None
    dial_timeout: Duration = Field(5.0, description="timeout to connect to an endpoint")
    request_timeout: Duration = Field(30.0, description="timeout of one range request")
    page_size: int = Field(10_000, ge=1, le=1_000_000, description="keys per range request")

    @field_validator("endpoints")
    @classmethod
    def _valid_endpoints(cls, value: list[str]) -> list[str]:
        for endpoint in value:
            url = endpoint if "://" in endpoint else f"http://{endpoint}"
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"endpoint {endpoint!r} must be http(s)://host:port")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> Self:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password must be given together")
        return self

    def urls(self) -> list[str]:
        """The endpoints as base URLs; a bare host:port gets http, or https with TLS."""
        scheme = "https" if self.tls_config is not None else "http"
        return [(e if "://" in e else f"{scheme}://{e}").rstrip("/") for e in self.endpoints]


class EtcdSDConfig(RefreshConfig, EtcdClientConfig):
    """One ``etcd_sd_configs`` entry."""

    prefix: str = Field(min_length=1, description="key prefix to list and watch")
    layout: Layout = Field(description="how values are written, by which framework")
    fields: JSONFields | None = Field(None, description="the json layout's field paths")
    coredns_path: str = Field("/skydns", description="CoreDNS etcd plugin's path")
    watch: bool = Field(True, description="watch for changes; false: poll refresh_interval")
    refresh_interval: Duration = Field(30.0, description="poll interval when watch is false")

    @field_validator("coredns_path")
    @classmethod
    def _rooted(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("coredns_path must start with /")
        return value.rstrip("/") or "/"

    @model_validator(mode="after")
    def _layout_options(self) -> Self:
        if self.layout == "json" and self.fields is None:
            raise ValueError("layout json needs fields (address, or host and port)")
        if self.layout != "json" and self.fields is not None:
            raise ValueError(f"fields applies to layout json only, not {self.layout}")
        if self.layout == "coredns" and not self.prefix.startswith(self.coredns_path):
            raise ValueError(f"prefix {self.prefix!r} is not under coredns_path")
        return self
