"""sdbridge's error hierarchy.

Every error a user can cause derives from :class:`SdbridgeError` and names the place
it comes from (a config path, a backend object, a file)::

    SdbridgeError
    ├── ConfigError            the config file is missing, unparsable or invalid
    ├── InvalidTargetError     a backend returned data that is not a valid target group
    ├── DiscoveryError         a mechanism could not complete a refresh (the last good set stays)
    │   └── BackendError       the backend answered with an error or could not be reached
    └── OutputError            an output (file, state store) could not be written

Mechanisms wrap their client library's exceptions at the boundary with
``raise BackendError(...) from exc`` so callers only ever handle these types.
"""

from __future__ import annotations


class SdbridgeError(Exception):
    """Base class of every error sdbridge raises on purpose."""


class ConfigError(SdbridgeError):
    """The configuration is missing, unparsable or invalid."""

    def __init__(self, message: str, *, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors if errors is not None else [message]


class InvalidTargetError(SdbridgeError):
    """Backend data that cannot become a target group; names the source and the value."""


class DiscoveryError(SdbridgeError):
    """A refresh could not complete; nothing is sent and the last good targets stay."""


class BackendError(DiscoveryError):
    """The backend answered with an error or could not be reached."""


class OutputError(SdbridgeError):
    """An output could not be written; the previous content stays in place."""
