"""The ``__meta_etcd_*`` label names, declared once (see the table in docs/mechanisms/etcd.md)."""

# Every layout:
KEY_LABEL = "__meta_etcd_key"  # the etcd key the instance was read from
PREFIX_LABEL = "__meta_etcd_prefix"  # the configured prefix
LEASE_LABEL = "__meta_etcd_lease"  # the key's lease ID in decimal, when it has one
# Per layout (see the table in docs/mechanisms/etcd.md):
SERVICE_LABEL = "__meta_etcd_service"  # service name, naming target or DNS name
INSTANCE_ID_LABEL = "__meta_etcd_instance_id"  # instance, node or lease ID
VERSION_LABEL = "__meta_etcd_version"  # kratos / go-micro version
METADATA_LABEL_PREFIX = "__meta_etcd_metadata_"  # one per metadata key, sanitized
METADATA_LABEL = "__meta_etcd_metadata"  # endpoints: Metadata that is not an object, as JSON
ENDPOINT_LABEL = "__meta_etcd_endpoint"  # kratos: the endpoint URL as registered
ENDPOINT_SCHEME_LABEL = "__meta_etcd_endpoint_scheme"  # kratos: grpc, http, grpcs, https
DNS_LABEL_PREFIX = "__meta_etcd_dns_"  # coredns: priority, weight, ttl, text, group
JSON_LABEL_PREFIX = "__meta_etcd_json_"  # json: one per configured label
