"""The etcd_sd watcher: list a prefix, then watch it from the listed revision.

Prometheus has no etcd SD because "there is no standard layout". There are a few layouts
in wide use, though, and each is read here exactly as its framework writes it:

- ``endpoints``: etcd's own naming/endpoints manager (the gRPC resolver), a key
  ``<target>/<anything>`` holding ``{"Op":0,"Addr":"host:port","Metadata":...}``;
  ``Op`` 1 (gRPC naming's Delete) counts as no instance.
  https://github.com/etcd-io/etcd/blob/main/client/v3/naming/endpoints/internal/update.go
- ``kratos``: ``<namespace>/<name>/<id>`` holding a ServiceInstance
  ``{"id","name","version","metadata","endpoints":["grpc://h:p","http://h:p?isSecure=false"]}``,
  one target per endpoint.
  https://github.com/go-kratos/kratos/blob/main/contrib/registry/etcd/registry.go
- ``go-zero``: ``<key>/<lease id>`` holding a plain ``host:port``.
  https://github.com/zeromicro/go-zero/blob/master/core/discov/publisher.go
- ``go-micro``: ``/micro/registry/<service>/<node id>`` holding a Service
  ``{"name","version","metadata","endpoints","nodes":[{"id","address","metadata"}]}``.
  https://github.com/micro/go-micro/blob/master/registry/etcd/etcd.go
- ``coredns``: SkyDNS records ``{"host","port","priority","weight","text","ttl",...}``
  under the reversed domain, ``/skydns/local/skydns/staging/service``.
  https://github.com/coredns/coredns/blob/master/plugin/etcd/msg/service.go
- ``json``: any JSON value, with configured field paths for the address and labels.

The package holds one idea per module: :mod:`.config` (the options), :mod:`.labels`
and :mod:`.layouts` (how each framework's values become targets), :mod:`.gateway` (the
v3 JSON gateway client on the shared HTTP layer) and :mod:`.watch` (the list-then-watch
loop).
"""

from .config import (
    MISSING,
    EtcdSDConfig,
    JSONFields,
    Layout,
    get_field,
    parse_field_path,
)
from .gateway import (
    Gateway,
    KeyValue,
    WatchCompacted,
    WatchStream,
    kv_from_json,
    prefix_range_end,
)
from .labels import (
    DNS_LABEL_PREFIX,
    ENDPOINT_LABEL,
    ENDPOINT_SCHEME_LABEL,
    INSTANCE_ID_LABEL,
    JSON_LABEL_PREFIX,
    KEY_LABEL,
    LEASE_LABEL,
    METADATA_LABEL,
    METADATA_LABEL_PREFIX,
    PREFIX_LABEL,
    SERVICE_LABEL,
    VERSION_LABEL,
)
from .layouts import (
    coredns_domain,
    layout_parser,
    metadata_labels,
    parse_coredns,
    parse_endpoints,
    parse_go_micro,
    parse_go_zero,
    parse_json,
    parse_kratos,
)
from .watch import EtcdDiscoverer

__all__ = [
    "DNS_LABEL_PREFIX",
    "ENDPOINT_LABEL",
    "ENDPOINT_SCHEME_LABEL",
    "INSTANCE_ID_LABEL",
    "JSON_LABEL_PREFIX",
    "KEY_LABEL",
    "LEASE_LABEL",
    "METADATA_LABEL",
    "METADATA_LABEL_PREFIX",
    "MISSING",
    "PREFIX_LABEL",
    "SERVICE_LABEL",
    "VERSION_LABEL",
    "EtcdDiscoverer",
    "EtcdSDConfig",
    "Gateway",
    "JSONFields",
    "KeyValue",
    "Layout",
    "WatchCompacted",
    "WatchStream",
    "coredns_domain",
    "get_field",
    "kv_from_json",
    "layout_parser",
    "metadata_labels",
    "parse_coredns",
    "parse_endpoints",
    "parse_field_path",
    "parse_go_micro",
    "parse_go_zero",
    "parse_json",
    "parse_kratos",
    "prefix_range_end",
]
