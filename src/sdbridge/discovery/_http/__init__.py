"""sdbridge's HTTP client layer: every mechanism that speaks HTTP is built on it.

- :mod:`.options`: Prometheus's common HTTP client options as config models
  (``tls_config``, ``basic_auth``, ``authorization``, ``oauth2``, ``proxy_url``,
  ``no_proxy``, ``proxy_from_environment``, ``follow_redirects``), gathered in
  :class:`HTTPClientConfig` for a mechanism's config to inherit;
- :mod:`.client`: :class:`HTTPClient`, the session those options build, and the mapping
  of transport failures and HTTP statuses to :class:`~sdbridge.errors.BackendError`;
- :mod:`.stream`: :func:`read_lines`, a JSON-lines / chunked stream reader without
  aiohttp's line-length limit.

Plugin authors import these names from :mod:`sdbridge.sdk`.
"""

from .client import (
    DEFAULT,
    TRANSPORT_ERRORS,
    Explain,
    HTTPClient,
    HTTPStatusError,
    Response,
    body_message,
    os_error,
    request_error,
    status_error,
)
from .options import (
    Authorization,
    BasicAuth,
    BasicAuthConfig,
    HTTPClientConfig,
    OAuth2,
    TLSConfig,
    TLSFiles,
    auth_headers,
    read_secret,
    resolve_files,
    url_path_prefix,
)
from .stream import enable_tcp_keepalive, read_lines

__all__ = [
    "DEFAULT",
    "TRANSPORT_ERRORS",
    "Authorization",
    "BasicAuth",
    "BasicAuthConfig",
    "Explain",
    "HTTPClient",
    "HTTPClientConfig",
    "HTTPStatusError",
    "OAuth2",
    "Response",
    "TLSConfig",
    "TLSFiles",
    "auth_headers",
    "body_message",
    "enable_tcp_keepalive",
    "os_error",
    "read_lines",
    "read_secret",
    "request_error",
    "resolve_files",
    "status_error",
    "url_path_prefix",
]
