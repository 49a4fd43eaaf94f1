"""The web config file (``--web.config.file``) in Prometheus exporter-toolkit format.

::

    tls_server_config:
      cert_file: server.crt          # both or neither
      key_file: server.key
      client_auth_type: NoClientCert # or RequireAndVerifyClientCert, VerifyClientCertIfGiven
      client_ca_file: ca.crt         # needed to verify client certificates
      min_version: TLS12             # TLS10 .. TLS13
      max_version: TLS13
    http_server_config:
      headers: {X-Frame-Options: deny}
    basic_auth_users:
      alice: $2y$10$...              # bcrypt hash, e.g. from `htpasswd -nBC 10 ""`

Relative file names are resolved against the web config file's directory, as the
exporter-toolkit does. Unknown keys, unreadable files, bad certificates and hashes that
are not bcrypt are refused at start with an error that names the key.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..config import DEFAULT_MAX_CONFIG_SIZE, read_config_text, validation_messages
from ..errors import ConfigError
from ..yamlload import YAMLProblem, load_yaml

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Python's ssl cannot ask for a client certificate without verifying it, so the
# exporter-toolkit's RequestClientCert and RequireAnyClientCert are not offered.
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLSVersionName = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
ClientAuthType = Literal["NoClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"]
_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSServerConfig(_Strict):
    """``tls_server_config``: the server certificate and client verification."""

    cert_file: Path | None = None
    key_file: Path | None = None
    client_auth_type: ClientAuthType = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: TLSVersionName = "TLS12"
    max_version: TLSVersionName = "TLS13"


class HTTPServerConfig(_Strict):
    """``http_server_config``: extra response headers."""

    headers: dict[str, str] = Field(default_factory=dict)
    http2: bool = True  # accepted for compatibility; aiohttp serves HTTP/1.1 only


class WebConfigFile(_Strict):
    """The whole web config file."""

    tls_server_config: TLSServerConfig | None = None
    http_server_config: HTTPServerConfig = HTTPServerConfig()
    basic_auth_users: dict[str, str] = Field(default_factory=dict)

    @field_validator("basic_auth_users")
    @classmethod
    def _bcrypt_hashes(cls, users: dict[str, str]) -> dict[str, str]:
        for user, hashed in users.items():
            if not hashed.startswith(_BCRYPT_PREFIXES) or len(hashed) != 60:
                raise ValueError(
                    f"the password of user {user!r} is not a bcrypt hash "
                    "(expected $2y$/$2b$/$2a$ and 60 characters, e.g. from htpasswd -nBC 10)"
                )
        return users


class WebSettings:
    """A loaded, checked web config: an SSL context (or None) and the users."""

    def __init__(self, config: WebConfigFile, ssl_context: ssl.SSLContext | None) -> None:
        self.config = config
        self.ssl_context = ssl_context
        self.users: dict[str, bytes] = {
            user: hashed.encode("ascii") for user, hashed in config.basic_auth_users.items()
        }
        self.headers = dict(config.http_server_config.headers)

    @property
    def scheme(self) -> str:
        """``https`` when TLS is on, else ``http``."""
        return "https" if self.ssl_context is not None else "http"


NO_WEB_CONFIG = WebSettings(WebConfigFile(), None)


def load_web_config(path: Path | None, *, max_size: int = DEFAULT_MAX_CONFIG_SIZE) -> WebSettings:
    """Read and check a web config file; None means plain HTTP without auth.

    Raises ConfigError naming the file and key on any problem.
    """
    if path is None:
        return NO_WEB_CONFIG
    origin = str(path)
    text = read_config_text(path, max_size=max_size, what="web config file")
    try:
        data = load_yaml(text)
    except YAMLProblem as exc:
        messages = [f"{origin}: {message}" for message in exc.messages]
        raise ConfigError("\n".join(messages), errors=messages) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the web config must be a mapping, got {type(data).__name__}")
    try:
        config = WebConfigFile.model_validate(data)
    except ValidationError as exc:
        messages = validation_messages(exc, origin, WebConfigFile)
        raise ConfigError("\n".join(messages), errors=messages) from None
    base = path.parent.absolute()
    return WebSettings(config, _ssl_context(config.tls_server_config, base, origin))


def _ssl_context(tls: TLSServerConfig | None, base: Path, origin: str) -> ssl.SSLContext | None:
    if tls is None:
        return None
    where = f"{origin}: tls_server_config"
    if tls.cert_file is None or tls.key_file is None:
        missing = "cert_file" if tls.cert_file is None else "key_file"
        raise ConfigError(f"{where}.{missing}: missing; cert_file and key_file are both required")
    cert = tls.cert_file if tls.cert_file.is_absolute() else base / tls.cert_file
    key = tls.key_file if tls.key_file.is_absolute() else base / tls.key_file
    for name, file in (("cert_file", cert), ("key_file", key)):
        if not file.is_file():
            raise ConfigError(f"{where}.{name}: {file}: file not found")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.minimum_version = _TLS_VERSIONS[tls.min_version]
        context.maximum_version = _TLS_VERSIONS[tls.max_version]
    except ValueError as exc:
        raise ConfigError(f"{where}: min_version/max_version: {exc}") from None
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{where}: cannot load cert_file {cert} with key_file {key}: {exc}"
        ) from None
    context.verify_mode = _CLIENT_AUTH[tls.client_auth_type]
    if tls.client_ca_file is not None:
        ca = tls.client_ca_file if tls.client_ca_file.is_absolute() else base / tls.client_ca_file
        try:
            context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{where}: client_ca_file {ca}: {exc}") from None
    elif tls.client_auth_type != "NoClientCert":
        raise ConfigError(f"{where}: client_auth_type {tls.client_auth_type} needs client_ca_file")
    return context
