"""``nacos_sd_configs``: Nacos naming (1.x, 2.x, 3.x) with few requests and fast pushes.

Labels are vmagent's nacos_sd_configs names (``__meta_nacos_service_*``,
``__meta_nacos_metadata_<key>``) plus ``__meta_nacos_service_weight`` and
``__meta_nacos_service_instance_id``; one target per enabled instance, one group per
service. The package holds one idea per module:

- :mod:`.config`: the options;
- :mod:`.labels`: the label names and the parsers of Nacos's instance shapes;
- :mod:`.client`: servers in turn, version detection, login and token renewal;
- :mod:`.listing`: a full listing, bulk where the server allows, per service otherwise;
- :mod:`.push`: the 2.x/3.x gRPC subscription (needs ``sdbridge[nacos]``);
- :mod:`.discoverer`: the discoverer that ties them together.
"""

from .client import NacosClient, Server
from .config import NacosSDConfig
from .discoverer import NacosDiscoverer
from .labels import (
    METADATA_PREFIX,
    SERVICE,
    SERVICE_ADDRESS,
    SERVICE_CLUSTER,
    SERVICE_ENABLED,
    SERVICE_EPHEMERAL,
    SERVICE_GROUP,
    SERVICE_HEALTHY,
    SERVICE_INSTANCE_ID,
    SERVICE_NAMESPACE,
    SERVICE_PORT,
    SERVICE_WEIGHT,
    ServiceKey,
)
from .listing import Lister

__all__ = [
    "METADATA_PREFIX",
    "SERVICE",
    "SERVICE_ADDRESS",
    "SERVICE_CLUSTER",
    "SERVICE_ENABLED",
    "SERVICE_EPHEMERAL",
    "SERVICE_GROUP",
    "SERVICE_HEALTHY",
    "SERVICE_INSTANCE_ID",
    "SERVICE_NAMESPACE",
    "SERVICE_PORT",
    "SERVICE_WEIGHT",
    "Lister",
    "NacosClient",
    "NacosDiscoverer",
    "NacosSDConfig",
    "Server",
    "ServiceKey",
]
