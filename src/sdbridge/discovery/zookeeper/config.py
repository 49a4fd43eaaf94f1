"""The ``zookeeper_sd_configs`` model: what an operator writes, checked at load time."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from ...durations import Duration
from .._http import TLSFiles
from ..base import MechanismConfig, RefreshConfig
from .paths import is_under

LayoutName = Literal["curator", "dubbo", "serverset"]


class ZookeeperTLSConfig(TLSFiles):
    """TLS to the ZooKeeper servers (their ``secureClientPort``)."""

    key_password: SecretStr | None = Field(None, description="password of key_file")


class ZookeeperDigestAuth(MechanismConfig):
    """ZooKeeper ``digest`` authentication, for znodes whose ACLs need it."""

    username: str = Field(min_length=1)
    password: SecretStr


class ZookeeperSDConfig(RefreshConfig):
    """One ``zookeeper_sd_configs`` entry."""

    servers: list[str] = Field(min_length=1, description="host:port of each server")
    paths: list[str] = Field(min_length=1, description="base znodes, one tree each")
    layout: LayoutName = Field(description="curator, dubbo or serverset")
    timeout: Duration = Field(10.0, description="session timeout")
    watch: bool = Field(True, description="follow watches; false polls every refresh_interval")
    persistent_watches: bool = Field(
        True, description="use persistent recursive watches where the server has them (3.6+)"
    )
    digest_auth: ZookeeperDigestAuth | None = None
    tls_config: ZookeeperTLSConfig | None = None

    @field_validator("servers")
    @classmethod
    def _servers(cls, value: list[str]) -> list[str]:
        for server in value:
            if not server or "/" in server or "," in server:
                raise ValueError(f"server {server!r} must be host:port (one per list entry)")
        return value

    @field_validator("paths")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/") or (path != "/" and path.endswith("/")):
                raise ValueError(f"path {path!r} must start with '/' and not end with one")
        for path in value:
            for other in value:
                if other != path and is_under(other, path):
                    raise ValueError(f"path {other!r} lies under {path!r}; list only one")
        if len(set(value)) != len(value):
            raise ValueError("paths must be distinct")
        return value

    @field_validator("timeout")
    @classmethod
    def _session_timeout(cls, value: float) -> float:
        # The protocol carries it as an int32 of milliseconds.
        if not 0 < value <= 2**31 // 1000:
            raise ValueError("timeout must be greater than 0 and at most 24d")
        return value


def sync_timeout(config: ZookeeperSDConfig) -> float:
    """A sync that takes longer than this is abandoned and retried."""
    return max(30.0, 3 * config.timeout)
