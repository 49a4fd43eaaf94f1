"""The public SDK for writing discovery mechanisms.

A mechanism is one class::

    from sdbridge.sdk import RefreshConfig, RefreshDiscoverer, TargetGroup, register

    class MySDConfig(RefreshConfig):
        url: str

    @register("my", MySDConfig)          # configured as `my_sd_configs` in a job
    class MyDiscoverer(RefreshDiscoverer[MySDConfig]):
        async def refresh(self) -> list[TargetGroup]:
            ...                           # return the full set, or raise

A mechanism whose backend speaks HTTP inherits :class:`HTTPClientConfig` in its config
(Prometheus's tls_config, basic_auth, authorization, oauth2, proxy and redirect options)
and talks through :class:`HTTPClient`, which maps every failure to :class:`BackendError`
(docs/writing-a-mechanism.md, "Talking HTTP").

Third-party packages expose their module in the ``sdbridge.discoverers`` entry-point
group. Everything importable from here is stable API; ``BasicAuth`` is the old name of
``BasicAuthConfig``.
"""

from .discovery import ENTRY_POINT_GROUP, register
from .discovery._http import (
    Authorization,
    BasicAuth,
    BasicAuthConfig,
    HTTPClient,
    HTTPClientConfig,
    HTTPStatusError,
    OAuth2,
    Response,
    TLSConfig,
    auth_headers,
    read_lines,
)
from .discovery.base import (
    Backoff,
    BaseDiscoverer,
    Discoverer,
    DiscoveryContext,
    GroupDiff,
    MechanismConfig,
    RefreshConfig,
    RefreshDiscoverer,
    Send,
    resolve_path,
)
from .durations import Duration
from .errors import BackendError, DiscoveryError, InvalidTargetError, SdbridgeError, describe
from .model import (
    ADDRESS_LABEL,
    TargetGroup,
    is_valid_address,
    is_valid_label_name,
    join_host_port,
    join_list,
    sanitize_label_name,
)

__all__ = [
    "ADDRESS_LABEL",
    "ENTRY_POINT_GROUP",
    "Authorization",
    "BackendError",
    "Backoff",
    "BaseDiscoverer",
    "BasicAuth",
    "BasicAuthConfig",
    "Discoverer",
    "DiscoveryContext",
    "DiscoveryError",
    "Duration",
    "GroupDiff",
    "HTTPClient",
    "HTTPClientConfig",
    "HTTPStatusError",
    "InvalidTargetError",
    "MechanismConfig",
    "OAuth2",
    "RefreshConfig",
    "RefreshDiscoverer",
    "Response",
    "SdbridgeError",
    "Send",
    "TLSConfig",
    "TargetGroup",
    "auth_headers",
    "describe",
    "is_valid_address",
    "is_valid_label_name",
    "join_host_port",
    "join_list",
    "read_lines",
    "register",
    "resolve_path",
    "sanitize_label_name",
]
