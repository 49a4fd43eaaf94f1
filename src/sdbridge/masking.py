"""Secrets never leave the process: one masking function for every output path.

Logs, the ``/api/v1`` JSON, the UI, reload errors and ``sdbridge check`` all pass what
they print through :func:`mask_text` (free text: error messages, log lines) or
:func:`mask_config` (a config dumped to JSON). Configs already hide ``SecretStr``
fields; this catches what a config or an error message carries in plain text:

- the userinfo of a URL (``http://user:PASSWORD@host`` → ``http://user:<secret>@host``,
  ``https://TOKEN@host`` → ``https://<secret>@host``), in any scheme and inside sentences;
- values under secret-looking names: config keys, exec ``env`` names, ``NAME=value``
  and ``--name=value`` / ``--name value`` command arguments, ``"name": "value"`` items,
  and ``Bearer`` credentials.

A name looks secret when it contains ``password``, ``passwd``, ``secret``, ``token``,
``credential``, ``api_key``/``apikey``, ``private_key``, ``access_key`` or
``authorization`` (any case), or the word ``key``, ``auth`` or ``pwd`` on its own
(``API_KEY``, ``x-auth``, ``MYSQL_PWD``, but not ``monkey`` or ``author``).
Masking errs on the side of hiding: a harmless value under such a name is hidden too.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "<secret>"
_PYDANTIC_SECRET = "**********"  # how pydantic dumps a SecretStr

_NAME_CHARS = r"[A-Za-z0-9_.-]"
_SECRET_WORD = (
    r"(?:passw(?:or)?d|secret|token|credential|api_?key|private_?key|access_?key|"
    r"authorization|(?<![a-z])(?:auth|key|pwd)(?![a-z]))"
)
_SECRET_NAME_RE = re.compile(_SECRET_WORD, re.IGNORECASE)

# scheme://[user][:password]@. The password runs to the last "@" before a space, even
# across characters a URL may not hold there ("/"): hiding too much beats leaking a tail.
_URL_USERINFO_RE = re.compile(
    r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)(?P<user>[^/\s?#@:]*)(?::(?P<password>\S*))?@",
    re.IGNORECASE,
)
_VALUE = rf"""(?!{MASK})(?:"[^"]*"|'[^']*'|\S+)"""
# '--name=a value with spaces', as shlex.join quotes an argument.
_SHELL_QUOTED_RE = re.compile(
    rf"(?P<name>'--?{_NAME_CHARS}*{_SECRET_WORD}{_NAME_CHARS}*)(?P<sep>=)(?P<value>[^']*)'",
    re.IGNORECASE,
)
# NAME=value, --name=value, -name=value (also inside a query string: ?token=...&).
_ASSIGNMENT_RE = re.compile(
    rf"(?P<name>{_NAME_CHARS}*{_SECRET_WORD}{_NAME_CHARS}*)(?P<sep>=)(?P<value>{_VALUE})",
    re.IGNORECASE,
)
# --name value (a flag and the next argument).
_FLAG_RE = re.compile(
    rf"(?P<name>(?<![^\s'\"])--?{_NAME_CHARS}*{_SECRET_WORD}{_NAME_CHARS}*)(?P<sep>\s+)"
    rf"(?P<value>(?!-){_VALUE})",
    re.IGNORECASE,
)
# "name": "value" and 'name': 'value' (JSON, Python reprs of dicts).
_QUOTED_ITEM_RE = re.compile(
    rf"""(?P<name>(?P<q>["']){_NAME_CHARS}*{_SECRET_WORD}{_NAME_CHARS}*(?P=q))(?P<sep>\s*:\s*)"""
    r"""(?P<value>"[^"]*"|'[^']*')""",
    re.IGNORECASE,
)
# "Bearer <token>", "Basic <base64>" (not "Basic auth ...": base64 of 8 characters or more).
_BEARER_RE = re.compile(
    r"(?P<name>\b(?:Bearer|bearer|BEARER))(?P<sep>\s+)(?P<value>[^\s'\",;]+)"
    r"|(?P<name2>\b(?:Basic|basic|BASIC))(?P<sep2>\s+)(?P<value2>[A-Za-z0-9+/]{8,}={0,2})(?![^\s'\",;])"
)


def is_secret_name(name: str) -> bool:
    """Whether a config key, environment variable or flag name looks like it holds a secret."""
    return _SECRET_NAME_RE.search(name) is not None


def _userinfo(match: re.Match[str]) -> str:
    if match["password"] is None:
        return f"{match['scheme']}{MASK}@"
    return f"{match['scheme']}{match['user']}:{MASK}@"


def _named(match: re.Match[str]) -> str:
    return f"{match['name']}{match['sep']}{MASK}"


def _credential(match: re.Match[str]) -> str:
    if match["name"] is not None:
        return f"{match['name']}{match['sep']}{MASK}"
    return f"{match['name2']}{match['sep2']}{MASK}"


def _quoted(match: re.Match[str]) -> str:
    quote = match["value"][0]
    return f"{match['name']}{match['sep']}{quote}{MASK}{quote}"


def strip_userinfo(text: str) -> str:
    """``text`` with the whole userinfo of every URL removed: ``http://u:p@h/`` → ``http://h/``.

    For the places that name a URL in their own messages (an endpoint, a token URL).
    """
    return _URL_USERINFO_RE.sub(lambda m: m["scheme"], text) if "@" in text else text


def mask_text(text: str) -> str:
    """``text`` with URL userinfo and values of secret-looking names replaced by ``<secret>``."""
    if "@" in text:
        text = _URL_USERINFO_RE.sub(_userinfo, text)
    text = _QUOTED_ITEM_RE.sub(_quoted, text)
    text = _SHELL_QUOTED_RE.sub(lambda m: f"{_named(m)}'", text)
    text = _ASSIGNMENT_RE.sub(_named, text)
    text = _FLAG_RE.sub(_named, text)
    return _BEARER_RE.sub(_credential, text)


def mask_argv(argv: list[str]) -> list[str]:
    """A command line with secret arguments masked: ``--token X`` and ``--token=X`` alike."""
    masked = []
    hide_next = False
    for arg in argv:
        if hide_next:
            masked.append(MASK)
            hide_next = False
            continue
        name, equals, _ = arg.partition("=")
        if arg.startswith("-") and is_secret_name(name):
            if equals:  # the whole value, whatever characters it holds
                masked.append(f"{name}={MASK}")
                continue
            hide_next = True
        masked.append(mask_text(arg))
    return masked


def mask_config(value: Any, key: str = "") -> Any:
    """A copy of a config dumped to JSON, with every secret masked.

    Strings under a secret-looking key (``password``, ``bearer_token``, an ``env`` entry
    such as ``API_TOKEN``) become ``<secret>``; an already masked ``SecretStr``
    (``**********``) and empty strings stay as they are. Lists of strings are masked as
    command lines (``--api-key X``), every other string as free text.
    """
    if isinstance(value, dict):
        return {k: mask_config(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        if value and all(isinstance(v, str) for v in value) and not is_secret_name(key):
            return mask_argv(value)
        return [mask_config(v, key) for v in value]
    if isinstance(value, str):
        if key and is_secret_name(key) and value and value != _PYDANTIC_SECRET:
            return MASK
        return mask_text(value)
    return value
