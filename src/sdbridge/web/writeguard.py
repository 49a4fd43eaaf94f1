"""Who may write without a bearer token: no DNS rebinding, no cross-site form posts.

Writes that carry no bearer token (registry writes when ``registry.write_token_file`` is
not set, and ``/-/reload``) are accepted only when:

- the ``Host`` header names the server as it is known: an IP address, ``localhost``,
  the listen address's host, or the host of ``--web.external-url``. A DNS-rebinding page
  reaches sdbridge under the attacker's host name, which is none of these;
- the request is not cross-site: a browser's ``Sec-Fetch-Site`` must be absent,
  ``same-origin`` or ``none``, and an ``Origin`` header must name the same host and
  port as ``Host``. Scripts and ``curl`` send neither header.

A bearer token already defeats both (a browser page cannot know it), so with a token
set, remote writes through a load balancer under any name keep working.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from aiohttp import web

from ..masking import mask_text

WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """Whether a listen host is loopback only (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    if host.lower() == "localhost":
        return True
    address = _ip(host)
    return address is not None and address.is_loopback


def split_host(value: str) -> tuple[str, str]:
    """``host[:port]`` (``[v6]:port`` too) → (lower-case host without brackets, port)."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, rest.removeprefix(":")
    if value.count(":") > 1:  # a bare IPv6 address
        return value, ""
    host, _, port = value.partition(":")
    return host, port


class WriteGuard:
    """Checks token-less writes (see the module docstring)."""

    def __init__(self, listen_host: str, external_hosts: Iterable[str] = ()) -> None:
        self.listen_host = listen_host
        self.names = {"localhost", *(h.lower() for h in external_hosts)}
        if listen_host not in WILDCARD_HOSTS:
            self.names.add(listen_host.lower().strip("[]"))

    @property
    def loopback_only(self) -> bool:
        """Whether the server listens on loopback only."""
        return is_loopback(self.listen_host)

    def known_host(self, host_header: str) -> bool:
        """Whether ``Host`` names this server (an IP address, or a known name)."""
        host, _ = split_host(host_header)
        return bool(host) and (host in self.names or _ip(host) is not None)

    def refusal(self, request: web.Request) -> str | None:
        """Why a token-less write must be refused, or None if it may go ahead."""
        host_header = request.headers.get("Host", "")
        if not self.known_host(host_header):
            return (
                f"Host {mask_text(host_header[:100])!r} is not a name this server is known by "
                "(an IP address, localhost, the listen address or --web.external-url); "
                "writes without a bearer token are refused"
            )
        fetch_site = request.headers.get("Sec-Fetch-Site", "").lower()
        if fetch_site not in ("", "same-origin", "none"):
            return "cross-site writes are refused"
        origin = request.headers.get("Origin")
        if origin is not None:
            parts = urlsplit(origin)
            if origin == "null" or split_host(parts.netloc) != split_host(host_header):
                return "cross-origin writes are refused"
        return None
