"""``consul_sd_configs``: Consul's catalog, watched with few blocking queries.

Labels and ``__address__`` are those of Prometheus's consul_sd, name for name and value
for value (prometheus/prometheus ``discovery/consul/consul.go``): one target per service
instance from ``/v1/health/service/<name>``, grouped by service name. The package holds
one idea per module:

- :mod:`.config`: the options (Prometheus's, the shared HTTP client's, the load knobs);
- :mod:`.labels`: the label names and the parsers of Consul's answers;
- :mod:`.client`: the blocking-query client on the shared HTTP layer;
- :mod:`.watch`: the watcher (three long-polls, targeted reads and sweeps).
"""

from .client import Answer, ConsulClient, ThrottledError
from .config import ConsulSDConfig
from .labels import (
    ADDRESS,
    DATACENTER,
    HEALTH,
    META,
    METADATA_PREFIX,
    NAMESPACE,
    NODE,
    PARTITION,
    SERVICE,
    SERVICE_ADDRESS,
    SERVICE_ID,
    SERVICE_METADATA_PREFIX,
    SERVICE_PORT,
    TAGGED_ADDRESS_PREFIX,
    TAGS,
    GoJSONReader,
    Instance,
    aggregated_status,
    parse_catalog,
    parse_checks,
    parse_nodes,
    parse_service_nodes,
)
from .watch import ConsulDiscoverer

__all__ = [
    "ADDRESS",
    "DATACENTER",
    "HEALTH",
    "META",
    "METADATA_PREFIX",
    "NAMESPACE",
    "NODE",
    "PARTITION",
    "SERVICE",
    "SERVICE_ADDRESS",
    "SERVICE_ID",
    "SERVICE_METADATA_PREFIX",
    "SERVICE_PORT",
    "TAGGED_ADDRESS_PREFIX",
    "TAGS",
    "Answer",
    "ConsulClient",
    "ConsulDiscoverer",
    "ConsulSDConfig",
    "GoJSONReader",
    "Instance",
    "ThrottledError",
    "aggregated_status",
    "parse_catalog",
    "parse_checks",
    "parse_nodes",
    "parse_service_nodes",
]
