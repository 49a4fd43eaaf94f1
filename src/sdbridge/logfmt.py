"""Log output in logfmt (Prometheus's default) or JSON.

Both formatters mask secrets (:mod:`sdbridge.masking`) in the message, every field and
the traceback: a backend's error may quote a URL with its password.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

from .masking import mask_config, mask_text

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: _masked(k, v) for k, v in vars(record).items() if k not in _RESERVED}


def _masked(key: str, value: object) -> object:
    if isinstance(value, str | dict | list):
        return mask_config(value, key)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return mask_text(str(value))


def _timestamp(record: logging.LogRecord) -> str:
    ms = int(record.msecs)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{ms:03d}Z"


def _logfmt_value(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "=\n\t\\'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _fields(formatter: logging.Formatter, record: logging.LogRecord) -> dict[str, object]:
    """A record's fields in output order: ts, level, logger, msg, extras, then err."""
    fields: dict[str, object] = {
        "ts": _timestamp(record),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": mask_text(record.getMessage()),
        **_extras(record),
    }
    if record.exc_info:
        fields["err"] = mask_text(formatter.formatException(record.exc_info))
    return fields


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=info logger=... msg="..." key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        """Format one record as a logfmt line."""
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(self, record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        """Format one record as a JSON line."""
        return orjson.dumps(_fields(self, record), default=str).decode()


def setup_logging(level: str = "info", fmt: str = "logfmt") -> None:
    """Send sdbridge's logs to stderr in the given format and level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is noisy at info; sdbridge reports what matters itself.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
