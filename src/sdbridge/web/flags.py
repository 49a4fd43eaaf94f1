"""``sdbridge run``'s web flags, named and meaning what Prometheus's own do.

=============================  ========  ====================================================
``--web.read-timeout``         5m        closes idle keep-alive connections and requests
                                         whose head or body arrive slower than this
``--web.read-header-timeout``  10s       closes connections that send no request head this
                                         long after they open (sdbridge's own flag)
``--web.max-connections``      512       connections beyond it are closed at once
``--web.enable-lifecycle``     off       enables ``POST|PUT /-/reload`` (SIGHUP always works)
``--web.external-url``         none      the URL users reach sdbridge at; its host is
                                         accepted in ``Host`` for writes without a token
=============================  ========  ====================================================
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..durations import format_duration, parse_duration
from .limits import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_READ_HEADER_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
    ConnectionLimits,
)


@dataclass(frozen=True)
class WebFlags:
    """The parsed web flags."""

    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    enable_lifecycle: bool = False
    external_url: str | None = None

    @property
    def external_hosts(self) -> frozenset[str]:
        """Host names (lower case) of ``--web.external-url``, for the Host check."""
        if not self.external_url:
            return frozenset()
        host = urlsplit(self.external_url).hostname
        return frozenset({host.lower()}) if host else frozenset()


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _connections(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{text!r} must be a number from 0 to 1000000")
    return int(text)


def _url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} must be an http:// or https:// URL")
    return text


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add the web flags to ``sdbridge run``'s parser."""
    parser.add_argument(
        "--web.read-timeout",
        dest="web_read_timeout",
        metavar="DURATION",
        type=_duration,
        default=DEFAULT_READ_TIMEOUT,
        help="close idle keep-alive connections and slow requests after this long "
        f"(default {format_duration(DEFAULT_READ_TIMEOUT)}; 0 turns it off)",
    )
    parser.add_argument(
        "--web.read-header-timeout",
        dest="web_read_header_timeout",
        metavar="DURATION",
        type=_duration,
        default=DEFAULT_READ_HEADER_TIMEOUT,
        help="close a connection that sends no request head this long after it opens "
        f"(default {format_duration(DEFAULT_READ_HEADER_TIMEOUT)}; 0 turns it off)",
    )
    parser.add_argument(
        "--web.max-connections",
        dest="web_max_connections",
        metavar="N",
        type=_connections,
        default=DEFAULT_MAX_CONNECTIONS,
        help=f"most simultaneous connections (default {DEFAULT_MAX_CONNECTIONS}; 0: no limit)",
    )
    parser.add_argument(
        "--web.enable-lifecycle",
        dest="web_enable_lifecycle",
        action="store_true",
        help="enable reloading over HTTP (POST /-/reload); SIGHUP always reloads",
    )
    parser.add_argument(
        "--web.external-url",
        dest="web_external_url",
        metavar="URL",
        type=_url,
        help="the URL sdbridge is reached at (e.g. behind a proxy); its host is accepted "
        "for writes without a token",
    )


def from_args(args: argparse.Namespace) -> WebFlags:
    """The web flags of parsed arguments."""
    return WebFlags(
        limits=ConnectionLimits(
            read_timeout=args.web_read_timeout,
            read_header_timeout=args.web_read_header_timeout,
            max_connections=args.web_max_connections,
        ),
        enable_lifecycle=args.web_enable_lifecycle,
        external_url=args.web_external_url,
    )
