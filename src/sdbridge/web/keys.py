"""The keys under which the web app keeps its shared objects."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from ..daemon import Daemon
from .sd import SDCache
from .status import TargetIndex
from .webconfig import WebSettings

DAEMON_KEY = web.AppKey("daemon", Daemon)
SD_CACHE_KEY = web.AppKey("sd_cache", SDCache)
TARGET_INDEX_KEY = web.AppKey("target_index", TargetIndex)
SETTINGS_KEY = web.AppKey("web_settings", WebSettings)
# Predicates a route hook may append to: a request any of them accepts skips basic auth
# (e.g. registry writes that carry their own bearer token).
AUTH_EXEMPT_KEY = web.AppKey("auth_exempt", list[Callable[[web.Request], bool]])
