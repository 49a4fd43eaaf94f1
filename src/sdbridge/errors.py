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
``raise BackendError(...) from exc`` so callers only ever handle these types, and
:func:`describe` turns any exception into the one line that logs and the API show.
"""

from __future__ import annotations

from .masking import strip_userinfo


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


def redact_url(text: str) -> str:
    """``text`` with the userinfo (``user:password@``) of every URL in it removed.

    The same rule as the masking of every output (:mod:`sdbridge.masking`), which keeps
    the user name and masks the password instead.
    """
    return strip_userinfo(text)


def describe(error: BaseException) -> str:
    """One line saying what went wrong, without URL userinfo.

    sdbridge's own errors and Python's built-in ones read as they are (an OS error as its
    ``strerror``, e.g. "Connection refused"); a client library's exception is prefixed
    with its type, since its text alone often does not say what kind of failure it is
    (``ServerDisconnectedError: Server disconnected``). An error without text is its type.
    """
    name = type(error).__name__
    builtin = type(error).__module__ == "builtins"
    if builtin and isinstance(error, OSError) and error.strerror:
        text = error.strerror
        if error.filename is not None:
            text = f"{text}: {error.filename}"
    else:
        text = redact_url(str(error))
    if not text:
        return name
    if builtin or isinstance(error, SdbridgeError):
        return text
    return f"{name}: {text}"
