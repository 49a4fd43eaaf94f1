"""The ``consul_sd_configs`` options: Prometheus's consul_sd fields plus sdbridge's load knobs."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from ...durations import Duration
from .._http import BasicAuthConfig, HTTPClientConfig, url_path_prefix
from ..base import require_positive

MAX_WAIT = 600.0  # Consul caps ``wait`` at 10 minutes


class ConsulSDConfig(HTTPClientConfig):
    """One ``consul_sd_configs`` entry: Prometheus's consul_sd options plus load knobs.

    The shared HTTP client options (tls_config, basic_auth, authorization, oauth2,
    proxy_url, no_proxy, proxy_from_environment, follow_redirects) are inherited, as
    Prometheus's consul_sd inlines its HTTPClientConfig.
    """

    server: str = Field("localhost:8500", description="host:port of the Consul HTTP API")
    scheme: Literal["http", "https"] = "http"
    path_prefix: str = Field("", description="prefix for API paths, e.g. behind a proxy")
    datacenter: str = Field("", description="datacenter to query; default: the agent's")
    namespace: str = Field("", description="Consul Enterprise namespace")
    partition: str = Field("", description="Consul Enterprise admin partition")
    token: SecretStr | None = Field(None, description="ACL token, sent as X-Consul-Token")
    username: str = Field("", description="basic auth user (Prometheus's legacy option)")
    password: SecretStr | None = Field(None, description="basic auth password (legacy)")
    services: list[str] = Field(default_factory=list, description="services; empty = all")
    tags: list[str] = Field(default_factory=list, description="instances must have all tags")
    node_meta: dict[str, str] = Field(default_factory=dict, description="node meta filter")
    tag_separator: str = ","
    allow_stale: bool = Field(True, description="let any server answer (?stale)")
    refresh_interval: Duration = Field(30.0, description="minimum time between sweeps")
    filter: str = Field("", description="Consul filter expression for the catalog")
    health_filter: str = Field("", description="Consul filter expression for the health API")
    # sdbridge extensions (not in Prometheus): the load knobs.
    watch_timeout: Duration = Field(300.0, description="``wait`` of the blocking queries")
    max_concurrency: int = Field(16, ge=1, le=1024, description="parallel service reads")
    request_timeout: Duration = Field(30.0, description="timeout of a non-blocking read")

    @field_validator("server")
    @classmethod
    def _server(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("consul SD configuration requires a server address")
        return value.strip()

    @field_validator("path_prefix")
    @classmethod
    def _path_prefix(cls, value: str) -> str:
        return url_path_prefix(value)

    @field_validator("watch_timeout")
    @classmethod
    def _watch_timeout(cls, value: float) -> float:
        if not 0 < value <= MAX_WAIT:
            raise ValueError("watch_timeout must be greater than 0 and at most 10m")
        return value

    @field_validator("refresh_interval", "request_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        return require_positive(value)

    @model_validator(mode="after")
    def _auth(self) -> Self:
        # The same exclusions as Prometheus's SDConfig.UnmarshalYAML.
        if (self.username or self.password is not None) and self.basic_auth is not None:
            raise ValueError(
                "at most one of consul SD configuration username and password and basic auth"
                " can be configured"
            )
        if self.token is not None and (self.authorization is not None or self.oauth2 is not None):
            raise ValueError(
                "at most one of consul SD token, authorization, or oauth2 can be configured"
            )
        return self

    def http_options(self) -> HTTPClientConfig:
        """The shared HTTP options, with the legacy username/password as basic_auth."""
        if self.basic_auth is None and (self.username or self.password is not None):
            # Prometheus's legacy username/password options are basic auth by another name.
            legacy = BasicAuthConfig(username=self.username, password=self.password)
            return self.model_copy(update={"basic_auth": legacy})
        return self
