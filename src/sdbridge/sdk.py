"""The public SDK for writing discovery mechanisms.

A mechanism is one class::

    from sdbridge.sdk import RefreshConfig, RefreshDiscoverer, TargetGroup, register

    class MySDConfig(RefreshConfig):
        url: str

    @register("my", MySDConfig)          # configured as `my_sd_configs` in a job
    class MyDiscoverer(RefreshDiscoverer[MySDConfig]):
        async def refresh(self) -> list[TargetGroup]:
            ...                           # return the full set, or raise

Third-party packages expose their module in the ``sdbridge.discoverers`` entry-point
group. Everything importable from here is stable API.
"""

from .discovery import ENTRY_POINT_GROUP, register
from .discovery._http import Authorization, BasicAuth, TLSConfig, auth_headers
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
from .errors import BackendError, DiscoveryError, InvalidTargetError, SdbridgeError
from .model import (
    ADDRESS_LABEL,
    TargetGroup,
    is_valid_address,
    is_valid_label_name,
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
    "Discoverer",
    "DiscoveryContext",
    "DiscoveryError",
    "Duration",
    "GroupDiff",
    "InvalidTargetError",
    "MechanismConfig",
    "RefreshConfig",
    "RefreshDiscoverer",
    "SdbridgeError",
    "Send",
    "TLSConfig",
    "TargetGroup",
    "auth_headers",
    "is_valid_address",
    "is_valid_label_name",
    "join_list",
    "register",
    "resolve_path",
    "sanitize_label_name",
]
