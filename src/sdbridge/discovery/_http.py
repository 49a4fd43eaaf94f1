"""HTTP client options shared by the mechanisms that speak HTTP (docker, etcd, ...).

The blocks are Prometheus's own ``tls_config``, ``basic_auth`` and ``authorization``
(same field names, same rules), so values from a scrape config can be copied over. Each
block resolves its own files against the config file's directory and builds what a
client needs (an SSL context, an ``Authorization`` header value); the mechanism wraps
errors with the name of the backend it was talking to.
"""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Self, TypeVar

from pydantic import Field, SecretStr, model_validator

from ..errors import BackendError
from .base import MechanismConfig, resolve_path

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


class BasicAuth(MechanismConfig):
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


def auth_headers(
    basic_auth: BasicAuth | None, authorization: Authorization | None
) -> dict[str, str]:
    """The ``Authorization`` header for whichever of the two blocks is set (or none)."""
    if basic_auth is not None:
        return {"Authorization": basic_auth.header()}
    if authorization is not None:
        return {"Authorization": authorization.header()}
    return {}
