"""The option blocks of Prometheus's common HTTP client config, as pydantic models.

``tls_config``, ``basic_auth``, ``authorization``, ``oauth2`` and the proxy and redirect
options have Prometheus's field names and rules, so values from a scrape config can be
copied over. Each block resolves its own files against the config file's directory and
builds what a client needs (an SSL context, an ``Authorization`` header value);
:class:`HTTPClientConfig` gathers them for a mechanism's config to inherit.
"""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Self, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from ...errors import BackendError
from ..base import MechanismConfig, resolve_path

_Model = TypeVar("_Model", bound=MechanismConfig)


def read_secret(path: Path, what: str) -> str:
    """The stripped content of a secret file; a BackendError naming ``what`` otherwise."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise BackendError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def resolve_files(model: _Model, names: tuple[str, ...], base_dir: Path) -> _Model:
    """A copy of ``model`` whose file fields ``names`` are resolved against ``base_dir``."""
    update = {
        name: resolve_path(path, base_dir)
        for name in names
        if (path := getattr(model, name)) is not None
    }
    return model.model_copy(update=update) if update else model


def url_path_prefix(value: str) -> str:
    """A configured URL path prefix as ``/a/b``: no trailing slash, a leading one added."""
    value = value.strip().rstrip("/")
    return value if not value or value.startswith("/") else "/" + value


class TLSFiles(MechanismConfig):
    """The certificate files of a ``tls_config`` and whether to verify the server."""

    ca_file: Path | None = Field(None, description="CA certificate(s) to verify the server")
    cert_file: Path | None = Field(None, description="client certificate (with key_file)")
    key_file: Path | None = Field(None, description="client key (with cert_file)")
    insecure_skip_verify: bool = Field(False, description="do not verify the certificate")

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self

    def resolve_paths(self, base_dir: Path) -> Self:
        """Resolve the certificate files against the config file's directory."""
        return resolve_files(self, ("ca_file", "cert_file", "key_file"), base_dir)


class TLSConfig(TLSFiles):
    """``tls_config``: how to verify the server and present a client certificate."""

    server_name: str | None = Field(None, description="name to verify the certificate against")

    def ssl_context(self) -> ssl.SSLContext:
        """An SSL context for these settings; raises OSError/SSLError for bad files."""
        context = ssl.create_default_context(
            cafile=str(self.ca_file) if self.ca_file is not None else None
        )
        if self.cert_file is not None and self.key_file is not None:
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        if self.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


class BasicAuthConfig(MechanismConfig):
    """``basic_auth``: a username and a password (inline or from a file)."""

    username: str
    password: SecretStr | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _one_password(self) -> Self:
        if self.password is not None and self.password_file is not None:
            raise ValueError("basic_auth: set password or password_file, not both")
        return self

    def resolve_paths(self, base_dir: Path) -> Self:
        """Resolve password_file against the config file's directory."""
        return resolve_files(self, ("password_file",), base_dir)

    def header(self) -> str:
        """The ``Authorization`` header value; reads password_file on every call."""
        if self.password_file is not None:
            password = read_secret(self.password_file, "basic_auth.password_file")
        else:
            password = self.password.get_secret_value() if self.password else ""
        # Encoded here: aiohttp.BasicAuth is deprecated, and Go (Prometheus) sends UTF-8.
        token = base64.b64encode(f"{self.username}:{password}".encode())
        return "Basic " + token.decode("ascii")


class Authorization(MechanismConfig):
    """``authorization``: an ``Authorization: <type> <credentials>`` header."""

    type: str = "Bearer"
    credentials: SecretStr | None = None
    credentials_file: Path | None = None

    @model_validator(mode="after")
    def _one_credential(self) -> Self:
        if self.credentials is not None and self.credentials_file is not None:
            raise ValueError("authorization: set credentials or credentials_file, not both")
        # As Prometheus's common HTTP client config: Basic has its own block.
        if self.type.strip().lower() == "basic":
            raise ValueError("authorization type cannot be Basic; use basic_auth")
        return self

    def resolve_paths(self, base_dir: Path) -> Self:
        """Resolve credentials_file against the config file's directory."""
        return resolve_files(self, ("credentials_file",), base_dir)

    def header(self) -> str:
        """The ``Authorization`` header value; reads credentials_file on every call."""
        if self.credentials_file is not None:
            secret = read_secret(self.credentials_file, "authorization.credentials_file")
        else:
            secret = self.credentials.get_secret_value() if self.credentials else ""
        return f"{self.type} {secret}"


BasicAuth = BasicAuthConfig
"""The old name of :class:`BasicAuthConfig` (kept: plugins import it from sdbridge.sdk)."""


def auth_headers(
    basic_auth: BasicAuthConfig | None, authorization: Authorization | None
) -> dict[str, str]:
    """The ``Authorization`` header for whichever of the two blocks is set (or none)."""
    if basic_auth is not None:
        return {"Authorization": basic_auth.header()}
    if authorization is not None:
        return {"Authorization": authorization.header()}
    return {}


class OAuth2(MechanismConfig):
    """``oauth2``: OAuth 2.0 client credentials; the token is sent as ``Bearer``."""

    client_id: str = Field(min_length=1, description="the client's id")
    client_secret: SecretStr | None = Field(None, description="the client's secret")
    client_secret_file: Path | None = Field(None, description="file holding the secret")
    scopes: list[str] = Field(default_factory=list, description="scopes to ask for")
    token_url: str = Field(description="the token endpoint, e.g. https://idp/oauth2/token")
    endpoint_params: dict[str, str] = Field(
        default_factory=dict, description="extra form parameters of the token request"
    )
    tls_config: TLSConfig | None = Field(None, description="TLS to the token endpoint")

    @field_validator("token_url")
    @classmethod
    def _token_url(cls, value: str) -> str:
        return _http_url(value, "token_url")

    @model_validator(mode="after")
    def _one_secret(self) -> Self:
        if self.client_secret is not None and self.client_secret_file is not None:
            raise ValueError("oauth2: set client_secret or client_secret_file, not both")
        return self

    def resolve_paths(self, base_dir: Path) -> Self:
        """Resolve client_secret_file and the token endpoint's TLS files."""
        resolved = resolve_files(self, ("client_secret_file",), base_dir)
        if resolved.tls_config is not None:
            resolved = resolved.model_copy(
                update={"tls_config": resolved.tls_config.resolve_paths(base_dir)}
            )
        return resolved

    def secret(self) -> str:
        """The client secret; reads client_secret_file on every call."""
        if self.client_secret_file is not None:
            return read_secret(self.client_secret_file, "oauth2.client_secret_file")
        return self.client_secret.get_secret_value() if self.client_secret else ""


def _http_url(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # The value itself may hold a password: name the option, not the value.
        raise ValueError(f"{what} must be an http:// or https:// URL with a host")
    return value


class HTTPClientConfig(MechanismConfig):
    """Prometheus's common HTTP client options, for a mechanism's config to inherit.

    A config that inherits this gets ``tls_config``, ``basic_auth``, ``authorization``,
    ``oauth2``, ``proxy_url``, ``no_proxy``, ``proxy_from_environment`` and
    ``follow_redirects`` with Prometheus's rules; :class:`HTTPClient` takes it as is.
    """

    tls_config: TLSConfig | None = Field(None, description="TLS to the server")
    basic_auth: BasicAuthConfig | None = Field(None, description="HTTP basic auth")
    authorization: Authorization | None = Field(None, description="Authorization header")
    oauth2: OAuth2 | None = Field(None, description="OAuth 2.0 client credentials")
    proxy_url: str | None = Field(None, description="HTTP proxy, e.g. http://proxy:3128")
    no_proxy: str | None = Field(
        None, description="comma-separated hosts, domains and CIDRs reached without the proxy"
    )
    proxy_from_environment: bool = Field(
        False, description="use HTTP_PROXY, HTTPS_PROXY and NO_PROXY from the environment"
    )
    follow_redirects: bool = Field(True, description="follow HTTP 3xx redirects")

    @field_validator("proxy_url")
    @classmethod
    def _proxy_url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value, "proxy_url")

    @model_validator(mode="after")
    def _one_auth_one_proxy(self) -> Self:
        # The same exclusions as Prometheus's HTTPClientConfig.Validate.
        if self.basic_auth is not None and self.authorization is not None:
            raise ValueError("at most one of basic_auth and authorization can be configured")
        if self.oauth2 is not None and (
            self.basic_auth is not None or self.authorization is not None
        ):
            raise ValueError(
                "at most one of basic_auth, authorization and oauth2 can be configured"
            )
        if self.no_proxy and not self.proxy_url:
            raise ValueError("if no_proxy is configured, proxy_url must also be configured")
        if self.proxy_from_environment and (self.proxy_url or self.no_proxy):
            raise ValueError(
                "if proxy_from_environment is configured, proxy_url and no_proxy must not be"
            )
        return self
