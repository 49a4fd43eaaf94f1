"""The ``nacos_sd_configs`` options: servers, scope, auth and the load knobs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from ...durations import Duration
from .._http import HTTPClientConfig, resolve_files, url_path_prefix
from ..base import RefreshConfig, require_positive

ALL = "*"  # namespace: every namespace the server lists


def _as_list(value: object) -> object:
    """One value or a list of them; a blank value is none."""
    if isinstance(value, str):
        return [value] if value.strip() else []
    return [] if value is None else value


class NacosSDConfig(RefreshConfig, HTTPClientConfig):
    """One ``nacos_sd_configs`` entry.

    The shared HTTP client options (tls_config, basic_auth, authorization, oauth2,
    proxy_url, no_proxy, proxy_from_environment, follow_redirects) are inherited.
    """

    server: list[str] = Field(
        min_length=1, description="host:port (or URL) of Nacos servers, tried in turn"
    )
    scheme: Literal["http", "https"] = "http"
    context_path: str = Field("/nacos", description="Nacos's server.servlet.contextPath")
    namespace: list[str] = Field(
        default_factory=lambda: ["public"],
        description='namespace ids; "*" = every namespace the server lists',
    )
    group: list[str] = Field(
        default_factory=list,
        description="groups; empty = all where a bulk API lists them, else DEFAULT_GROUP",
    )
    services: list[str] = Field(default_factory=list, description="services; empty = all")
    clusters: list[str] = Field(default_factory=list, description="clusters; empty = all")
    healthy_only: bool = Field(False, description="drop unhealthy instances")
    username: str = Field("", description="Nacos user (auth plugin)")
    password: SecretStr | None = None
    password_file: Path | None = None
    grpc: bool = Field(True, description="subscribe over gRPC on Nacos 2.x/3.x")
    grpc_port: int | None = Field(None, ge=1, le=65535, description="default: HTTP port + 1000")
    refresh_interval: Duration = Field(30.0, description="time between listings")
    resync_interval: Duration = Field(
        300.0, description="time between full listings while the gRPC subscription is live"
    )
    page_size: int = Field(500, ge=1, le=1000, description="services per page of a listing")
    max_concurrency: int = Field(8, ge=1, le=256, description="parallel per-service reads")
    request_timeout: Duration = Field(10.0, description="timeout of one request")

    @field_validator("server", "namespace", "group", "services", "clusters", mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        return _as_list(value)

    @field_validator("server")
    @classmethod
    def _servers(cls, value: list[str]) -> list[str]:
        servers = [s.strip().rstrip("/") for s in value]
        if not all(servers):
            raise ValueError("nacos SD configuration: a server address is empty")
        return servers

    @field_validator("context_path")
    @classmethod
    def _context_path(cls, value: str) -> str:
        return url_path_prefix(value)

    @field_validator("resync_interval", "request_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        return require_positive(value)

    @model_validator(mode="after")
    def _auth(self) -> Self:
        if self.password is not None and self.password_file is not None:
            raise ValueError("at most one of nacos SD password and password_file can be set")
        if (self.password is not None or self.password_file is not None) and not self.username:
            raise ValueError("nacos SD password needs a username")
        if ALL in self.namespace and len(self.namespace) > 1:
            raise ValueError('nacos SD namespace "*" (all) cannot be combined with others')
        return self

    def resolve_paths(self, base_dir: Path) -> Self:
        return resolve_files(super().resolve_paths(base_dir), ("password_file",), base_dir)
