"""sdbridge's own metrics, declared once.

All live in prometheus_client's default registry, next to the process and Python
collectors. They are updated directly from the event loop: they are cheap and locked.
"""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

from .buildinfo import build_labels

_JOB = ("job",)
_MECHANISM = ("job", "mechanism")

# Per job.
JOB_TARGETS = Gauge("sdbridge_job_targets", "Targets currently published by the job.", _JOB)
JOB_GROUPS = Gauge("sdbridge_job_groups", "Target groups currently merged in the job.", _JOB)
JOB_SYNCED = Gauge(
    "sdbridge_job_synced", "1 once every mechanism of the job completed its first sync.", _JOB
)
JOB_STALE = Gauge(
    "sdbridge_job_stale",
    "1 while the job serves last-known-good state loaded from disk, not a fresh sync.",
    _JOB,
)
LAST_SUCCESS = Gauge(
    "sdbridge_last_success_timestamp_seconds",
    "Unix time of the job's last successful publish.",
    _JOB,
)
PUBLISH_TOTAL = Counter(
    "sdbridge_publish_total", "Snapshots published, by output.", ("job", "output")
)
PUBLISH_FAILURES = Counter(
    "sdbridge_publish_failures_total", "Failed output writes, by output.", ("job", "output")
)
PUBLISH_DURATION = Histogram(
    "sdbridge_publish_duration_seconds",
    "Time to relabel, render and hand a snapshot to the outputs.",
    _JOB,
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
INVALID_TARGETS = Counter(
    "sdbridge_invalid_targets_total",
    "Backend objects rejected as invalid targets.",
    _MECHANISM,
)

# Per mechanism.
REFRESH_TOTAL = Counter("sdbridge_refresh_total", "Refreshes attempted.", _MECHANISM)
REFRESH_FAILURES = Counter(
    "sdbridge_refresh_failures_total", "Refreshes that failed and sent nothing.", _MECHANISM
)
REFRESH_DURATION = Histogram(
    "sdbridge_refresh_duration_seconds",
    "Duration of refreshes, successful or not.",
    _MECHANISM,
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BACKEND_REQUESTS = Counter(
    "sdbridge_backend_requests_total", "Requests sent to the backend.", _MECHANISM
)
MECHANISM_UP = Gauge(
    "sdbridge_mechanism_up",
    "1 if the mechanism's last refresh succeeded, 0 if it failed.",
    _MECHANISM,
)

# Guard (mass-deletion protection).
GUARD_HOLDING = Gauge(
    "sdbridge_guard_holding",
    "1 while the guard holds the previous targets back from a large drop.",
    _JOB,
)
GUARD_HOLDS = Counter(
    "sdbridge_guard_holds_total", "Updates held back by the mass-deletion guard.", _JOB
)

# Last-known-good state.
STATE_LOAD_FAILURES = Counter(
    "sdbridge_state_load_failures_total",
    "Last-known-good state files found unreadable or corrupt at start, and ignored.",
    _JOB,
)

# Configuration.
CONFIG_RELOAD_SUCCESS = Gauge(
    "sdbridge_config_last_reload_successful", "Whether the last configuration reload succeeded."
)
CONFIG_RELOAD_TIMESTAMP = Gauge(
    "sdbridge_config_last_reload_success_timestamp_seconds",
    "Unix time of the last successful configuration reload.",
)
CONFIG_RELOADS = Counter(
    "sdbridge_config_reloads_total", "Configuration reloads attempted, by result.", ("result",)
)

# Web.
HTTP_SD_REQUESTS = Counter(
    "sdbridge_http_sd_requests_total",
    "Requests to /sd/<job>, by job (empty for unknown jobs) and status code.",
    ("job", "code"),
)
WEB_AUTH_FAILURES = Counter(
    "sdbridge_web_auth_failures_total", "Requests refused for missing or wrong basic auth."
)
WEB_CONNECTIONS_REFUSED = Counter(
    "sdbridge_web_connections_refused_total",
    "Connections closed at once because --web.max-connections were open.",
)
WEB_CONNECTIONS_TIMED_OUT = Counter(
    "sdbridge_web_connections_timed_out_total",
    "Connections closed for not sending a request head within --web.read-header-timeout.",
)
WEB_ACCEPT_ERRORS = Counter(
    "sdbridge_web_accept_errors_total",
    "Failed accept() calls, e.g. out of file descriptors.",
)

# Built-in registry (sdbridge.registry).
REGISTRY_INSTANCES = Gauge(
    "sdbridge_registry_instances", "Instances registered with the built-in registry."
)
REGISTRY_EXPIRED = Counter(
    "sdbridge_registry_expired_total", "Registry instances removed because their TTL ran out."
)
REGISTRY_WRITABLE = Gauge(
    "sdbridge_registry_writable",
    "1 while the registry's backend commits writes, 0 after a write (or health check) failed.",
)
REGISTRY_INVALID_KEYS = Gauge(
    "sdbridge_registry_invalid_keys",
    "Keys under the etcd registry prefix skipped because they hold no sdbridge registration.",
)
REGISTRY_ETCD_REQUESTS = Counter(
    "sdbridge_registry_etcd_requests_total",
    "Requests the registry's etcd backend sent to etcd (writes, keep-alives, lists, watches).",
)
REGISTRY_REQUESTS = Counter(
    "sdbridge_registry_requests_total",
    "Requests to /api/v1/registry, by operation (put, heartbeat, delete, get) and status code.",
    ("operation", "code"),
)


def forget_job(job: str) -> None:
    """Drop a removed job's per-job series so /metrics does not report ghosts."""
    for gauge in (JOB_TARGETS, JOB_GROUPS, JOB_SYNCED, JOB_STALE, LAST_SUCCESS, GUARD_HOLDING):
        with contextlib.suppress(KeyError):
            gauge.remove(job)


# Which build this is, as Prometheus's own *_build_info: always 1, the labels say it.
BUILD_INFO = Gauge(
    "sdbridge_build_info",
    "A metric with a constant '1' value labeled by version, revision and python_version.",
    ("version", "revision", "python_version"),
)
BUILD_INFO.labels(**build_labels()).set(1)
