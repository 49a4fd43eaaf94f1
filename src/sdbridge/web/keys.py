"""The keys under which the web app keeps its shared objects."""

from __future__ import annotations

from aiohttp import web

from ..daemon import Daemon
from .auth import AUTH_EXEMPT_KEY, BasicAuth
from .sd import ClientTracker, SDCache
from .status import TargetIndex
from .webconfig import WebSettings

DAEMON_KEY = web.AppKey("daemon", Daemon)
SD_CACHE_KEY = web.AppKey("sd_cache", SDCache)
SD_CLIENTS_KEY = web.AppKey("sd_clients", ClientTracker)
TARGET_INDEX_KEY = web.AppKey("target_index", TargetIndex)
SETTINGS_KEY = web.AppKey("web_settings", WebSettings)
AUTH_KEY = web.AppKey("basic_auth", BasicAuth)
HEADERS_KEY = web.AppKey("extra_headers", dict[str, str])

__all__ = [
    "AUTH_EXEMPT_KEY",
    "AUTH_KEY",
    "DAEMON_KEY",
    "HEADERS_KEY",
    "SD_CACHE_KEY",
    "SD_CLIENTS_KEY",
    "SETTINGS_KEY",
    "TARGET_INDEX_KEY",
]
