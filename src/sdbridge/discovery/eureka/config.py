"""The ``eureka_sd_configs`` options: Prometheus's eureka_sd fields plus two of sdbridge's."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator

from ...durations import Duration
from .._http import HTTPClientConfig
from ..base import RefreshConfig


class EurekaSDConfig(RefreshConfig, HTTPClientConfig):
    """One ``eureka_sd_configs`` entry: Prometheus's options, ``delta``, ``request_timeout``.

    The shared HTTP client options (tls_config, basic_auth, authorization, oauth2,
    proxy_url, no_proxy, proxy_from_environment, follow_redirects) are inherited, as
    Prometheus's eureka_sd inlines its HTTPClientConfig.
    """

    server: str = Field(description="Eureka's REST base URL, e.g. http://eureka:8761/eureka")
    refresh_interval: Duration = Field(30.0, description="time between refreshes")
    # sdbridge extensions (not in Prometheus).
    delta: bool = Field(
        True, description="follow /apps/delta between full fetches (false: full every time)"
    )
    request_timeout: Duration = Field(30.0, gt=0, description="timeout of one request")

    @field_validator("server")
    @classmethod
    def _server(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("eureka_sd: empty or null eureka server")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # The value may hold a password: say what is wrong, not the value.
            raise ValueError("eureka_sd: invalid eureka server URL (http:// or https:// + host)")
        return value.rstrip("/")
