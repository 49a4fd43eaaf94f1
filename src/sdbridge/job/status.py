"""What a job reports of itself to the API, the UI and ``sdbridge check``: typed, read-only.

The web reads these attributes instead of string keys, so a renamed field is a type
error, not a silently empty column. :meth:`JobStatus.as_json` is the API's shape.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..discovery.base import MechanismStatus
from ..guard import GuardStatus


@dataclass(frozen=True, slots=True)
class MechanismState:
    """One ``<name>_sd_configs[index]`` entry of a job: its config and its health."""

    name: str
    index: int
    config: dict[str, Any]  # dumped in pydantic's JSON mode (SecretStr masked)
    health: MechanismStatus  # a copy, taken when the status was asked for

    @property
    def label(self) -> str:
        """Where it sits in the config, e.g. ``exec_sd_configs[0]``."""
        return f"{self.name}_sd_configs[{self.index}]"

    def as_json(self) -> dict[str, Any]:
        """The API's shape: name, index, config and the health fields side by side."""
        return {
            "name": self.name,
            "index": self.index,
            "config": self.config,
            **dataclasses.asdict(self.health),
        }


@dataclass(frozen=True, slots=True)
class OutputState:
    """One output that writes somewhere (the file, the last-known-good state)."""

    name: str
    path: str
    last_error: str | None


@dataclass(frozen=True, slots=True)
class JobStatus:
    """A job's state at one moment."""

    name: str
    synced: bool  # every mechanism's first full set has been merged
    stale: bool | None  # None: nothing published or restored yet
    stale_since: float | None  # a stale snapshot's creation time: when it was last fresh
    targets: int
    groups: int
    dropped_targets: int  # dropped by relabel_configs in the current state (kept or not)
    last_publish: float | None
    guard: GuardStatus
    mechanisms: tuple[MechanismState, ...]
    outputs: tuple[OutputState, ...]

    def as_json(self) -> dict[str, Any]:
        """The API's shape of the status (plain dicts and lists)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["guard"] = dataclasses.asdict(self.guard)
        data["mechanisms"] = [m.as_json() for m in self.mechanisms]
        data["outputs"] = [dataclasses.asdict(o) for o in self.outputs]
        return data
