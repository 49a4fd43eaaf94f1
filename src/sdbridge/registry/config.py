"""The top-level ``registry:`` section: how the built-in registry's API accepts writes.

::

    registry:
      write_token_file: /etc/sdbridge/registry.token  # writes need "Authorization: Bearer <token>"
      default_ttl: 30s       # when a registration gives no ttl
      min_ttl: 1s            # bounds every ttl must fall within
      max_ttl: 1d
      register_self: false   # register sdbridge's own /metrics as service "sdbridge"

The section configures the API and the store; which registered services a job
publishes is chosen per job by ``registry_sd_configs``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..durations import Duration

API_PREFIX = "/api/v1/registry"
"""Where sdbridge's web server serves the registry API (shared by the API and its client)."""


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
        path = self.write_token_file
        if path is None or path.is_absolute():
            return self
        return self.model_copy(update={"write_token_file": base_dir / path})
