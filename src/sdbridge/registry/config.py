"""The top-level ``registry:`` section: how the built-in registry's API accepts writes.

::

    registry:
      write_token_file: /etc/sdbridge/registry.token  # writes need "Authorization: Bearer <token>"
      default_ttl: 30s       # when a registration gives no ttl
      min_ttl: 1s            # bounds every ttl must fall within
      max_ttl: 1d
      register_self: false   # register sdbridge's own /metrics as service "sdbridge"
      backend: sqlite        # or etcd: every replica pointed at the same etcd shares it
      etcd:                  # with backend etcd (endpoints, TLS and auth as in etcd_sd_configs)
        endpoints: [http://127.0.0.1:2379]
        prefix: /sdbridge/registry/

The section configures the API and the store; which registered services a job
publishes is chosen per job by ``registry_sd_configs``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..discovery.etcd.config import EtcdClientConfig
from ..durations import Duration

API_PREFIX = "/api/v1/registry"
"""Where sdbridge's web server serves the registry API (shared by the API and its client)."""

ETCD_MIN_TTL = 2.0
"""etcd's smallest lease TTL with default timings (1.5 s, in whole seconds)."""


class RegistryEtcdConfig(EtcdClientConfig):
    """``registry.etcd``: where the etcd backend keeps instances (connection as etcd_sd's)."""

    prefix: str = Field(
        "/sdbridge/registry/", description="key prefix; each instance is <prefix><service>/<id>"
    )
    request_timeout: Duration = Field(
        5.0, description="timeout of one etcd request; a write waits at most this long"
    )

    @field_validator("prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        if not value.startswith("/") or not value.endswith("/") or len(value) < 2:
            raise ValueError(
                f"registry.etcd.prefix {value!r} must start and end with / (e.g. /sdbridge/registry/)"
            )
        return value


class RegistryConfig(BaseModel):
    """The ``registry:`` section of the config file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    write_token_file: Path | None = Field(
        None, description="file holding the bearer token that writes must present"
    )
    default_ttl: Duration = Field(30.0, description="ttl of a registration that gives none")
    min_ttl: Duration = Field(1.0, description="smallest ttl accepted")
    max_ttl: Duration = Field(86400.0, description="largest ttl accepted")
    register_self: bool = Field(
        False, description="register sdbridge's own /metrics address as service 'sdbridge'"
    )
    backend: Literal["sqlite", "etcd"] = Field(
        "sqlite", description="sqlite (in data_dir, one process) or etcd (shared by replicas)"
    )
    etcd: RegistryEtcdConfig | None = Field(None, description="the etcd backend's connection")

    @model_validator(mode="before")
    @classmethod
    def _etcd_min_ttl(cls, data: object) -> object:
        # etcd grants no lease shorter than ~1.5 s: with that backend the default bound is 2 s.
        if isinstance(data, dict) and data.get("backend") == "etcd" and "min_ttl" not in data:
            data = {**data, "min_ttl": f"{ETCD_MIN_TTL:g}s"}
        return data

    @model_validator(mode="after")
    def _backend(self) -> Self:
        if self.backend == "etcd":
            if self.etcd is None:
                raise ValueError("registry.backend etcd needs registry.etcd.endpoints")
            if self.min_ttl < ETCD_MIN_TTL:
                raise ValueError(
                    f"registry.min_ttl must be at least {ETCD_MIN_TTL:g}s with backend etcd "
                    "(etcd's minimum lease TTL)"
                )
        elif self.etcd is not None:
            raise ValueError("registry.etcd applies to backend etcd only (set registry.backend)")
        return self

    @model_validator(mode="after")
    def _ttl_bounds(self) -> Self:
        if self.min_ttl <= 0:
            raise ValueError("registry.min_ttl must be greater than 0")
        if self.min_ttl > self.max_ttl:
            raise ValueError("registry.min_ttl must not exceed registry.max_ttl")
        if not self.min_ttl <= self.default_ttl <= self.max_ttl:
            raise ValueError("registry.default_ttl must lie between min_ttl and max_ttl")
        return self

    def resolve_paths(self, base_dir: Path) -> Self:
        """A copy whose relative ``write_token_file`` is resolved against ``base_dir``."""
        update: dict[str, object] = {}
        if self.etcd is not None:
            update["etcd"] = self.etcd.resolve_paths(base_dir)
        path = self.write_token_file
        if path is not None and not path.is_absolute():
            update["write_token_file"] = base_dir / path
        return self.model_copy(update=update) if update else self
