"""Reading decoded JSON answers field by field, with errors that say where and what.

Each mechanism's reader (Consul's :class:`~.consul.labels.GoJSONReader`, Nacos's
:class:`~.nacos.labels.Reader`) adds the rules of its server's types on this base.
"""

from __future__ import annotations

from typing import Any

from ..errors import BackendError


class JSONReader:
    """Reads fields of one answer; a wrong type is a BackendError naming ``where``."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, what: str) -> BackendError:
        return BackendError(f"{self.where}: {what}")

    def obj(self, value: Any, what: str) -> dict[str, Any]:
        """An object; null is an empty one."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(f"{what} is not an object: {value!r:.100}")
        return value
