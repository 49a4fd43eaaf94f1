"""The keys under which the web app keeps its shared objects."""

from __future__ import annotations

from aiohttp import web

from ..daemon import Daemon
from .auth import AUTH_EXEMPT_KEY, CredentialChecker
from .flags import WebFlags
from .sd import ClientTracker, SDCache
from .status import TargetIndex
from .writeguard import WriteGuard

DAEMON_KEY = web.AppKey("daemon", Daemon)
SD_CACHE_KEY = web.AppKey("sd_cache", SDCache)
SD_CLIENTS_KEY = web.AppKey("sd_clients", ClientTracker)
TARGET_INDEX_KEY = web.AppKey("target_index", TargetIndex)
AUTH_KEY = web.AppKey("basic_auth", CredentialChecker)
HEADERS_KEY = web.AppKey("extra_headers", dict[str, str])
FLAGS_KEY = web.AppKey("web_flags", WebFlags)
WRITE_GUARD_KEY = web.AppKey("write_guard", WriteGuard)

__all__ = [
    "AUTH_EXEMPT_KEY",
    "AUTH_KEY",
    "DAEMON_KEY",
    "FLAGS_KEY",
    "HEADERS_KEY",
    "SD_CACHE_KEY",
    "SD_CLIENTS_KEY",
    "TARGET_INDEX_KEY",
    "WRITE_GUARD_KEY",
]
