"""The ``dubbo`` layout: Dubbo's interface-level ``ZookeeperRegistry``.

The provider URL is the znode *name*, encoded with ``URL.encode`` (Java's form encoding),
under ``<root>/<URL-encoded interface>/providers/``; ``<root>`` is ``/dubbo`` unless the
registry sets a group. Source: apache/dubbo ``ZookeeperRegistry#toUrlPath``. A provider
costs no data read, and ``consumers``, ``routers`` and ``configurators`` are never read.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from urllib.parse import unquote_to_bytes

from ...errors import InvalidTargetError
from ...model import ADDRESS_LABEL, LabelSet, join_host_port, sanitize_label_name
from .layout import META, PATH_LABEL

# Label names, from the provider URL (and PATH_LABEL from .layout).
DUBBO = META + "dubbo_"
DUBBO_PROTOCOL = DUBBO + "protocol"  # URL scheme: dubbo, tri, rest, ...
DUBBO_PATH = DUBBO + "path"  # URL path, usually the interface name
DUBBO_INTERFACE = DUBBO + "interface"  # interface= parameter, else the URL path
DUBBO_APPLICATION = DUBBO + "application"  # application= parameter, else ""
DUBBO_VERSION = DUBBO + "version"  # version= parameter, else ""
DUBBO_GROUP = DUBBO + "group"  # group= parameter, else ""
DUBBO_SIDE = DUBBO + "side"  # side= parameter ("provider"), else ""
DUBBO_PARAM_PREFIX = DUBBO + "param_"  # every URL parameter, name sanitized

_PERCENT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def java_url_decode(text: str, what: str) -> str:
    """Decode like Java's ``URLDecoder.decode(s, "UTF-8")`` (Dubbo's ``URL.decode``).

    ``+`` is a space; a malformed ``%`` escape or bytes that are not UTF-8 are errors, as
    in Java (which throws), instead of being passed through as Python's ``unquote`` does.
    """
    if _PERCENT_RE.search(text):
        raise InvalidTargetError(f"{what}: malformed %-escape in {text!r}")
    raw = unquote_to_bytes(text.replace("+", " "))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidTargetError(f"{what}: %-escapes that are not UTF-8 in {text!r}") from None


def _maybe_decode_value(value: str) -> str:
    # dubbo-go query-escapes parameter values before it escapes the whole URL, so they
    # arrive escaped once more; Java Dubbo writes them raw. Decode only clean escapes.
    if "%" not in value or _PERCENT_RE.search(value):
        return value
    try:
        return unquote_to_bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return value


def parse_dubbo_provider(name: str, path: str) -> LabelSet:
    """Labels of a Dubbo provider from its znode name (a URL-encoded provider URL)."""
    what = f"znode {path}"
    url = java_url_decode(name, what)
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise InvalidTargetError(f"{what}: not a Dubbo provider URL: {url!r}")
    rest, _, query = rest.partition("?")
    hostport, _, url_path = rest.partition("/")
    hostport = hostport.rpartition("@")[2]  # drop user:password@
    host, port = _split_host_port(hostport, what)
    params: dict[str, str] = {}
    for part in query.split("&"):
        if not part:
            continue
        key, eq, value = part.partition("=")
        key = key.strip()
        if not key:
            continue
        # Dubbo's URL.valueOf reads a bare "key" as key=key.
        params[key] = _maybe_decode_value(value) if eq else key
    labels = {
        ADDRESS_LABEL: join_host_port(host, port),
        PATH_LABEL: path,
        DUBBO_PROTOCOL: scheme,
        DUBBO_PATH: url_path,
        DUBBO_INTERFACE: params.get("interface", url_path),
        DUBBO_APPLICATION: params.get("application", ""),
        DUBBO_VERSION: params.get("version", ""),
        DUBBO_GROUP: params.get("group", ""),
        DUBBO_SIDE: params.get("side", ""),
    }
    for key in sorted(params):
        labels[DUBBO_PARAM_PREFIX + sanitize_label_name(key)] = params[key]
    return labels


def _split_host_port(hostport: str, what: str) -> tuple[str, int]:
    if hostport.startswith("["):
        host, bracket, port_text = hostport[1:].partition("]")
        port_text = port_text.removeprefix(":") if bracket else ""
    else:
        host, _, port_text = hostport.rpartition(":")
        if ":" in host:  # a bare IPv6 address: the port is after the last colon
            with contextlib.suppress(ValueError):
                ipaddress.IPv6Address(hostport)
                host, port_text = hostport, ""
    if not host or not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise InvalidTargetError(f"{what}: provider address {hostport!r} is not host:port")
    return host, int(port_text)


class DubboLayout:
    """``<root>/<interface>/providers/<url>``: depth 0, 1, 2, 3; no data is read."""

    def lists_children(self, depth: int) -> bool:
        """Everything above the providers is listed."""
        return depth < 3

    def descends_into(self, depth: int, name: str) -> bool:
        """Under an interface, only ``providers``."""
        return depth != 2 or name == "providers"

    def reads_data(self, depth: int) -> bool:
        """The provider URL is the znode's name."""
        return False

    def parse(self, path: str, depth: int, data: bytes | None) -> LabelSet | None:
        """A provider znode is a target."""
        if depth != 3:
            return None
        return parse_dubbo_provider(path.rpartition("/")[2], path)
