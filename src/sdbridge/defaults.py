"""The built-in default config: what ``sdbridge run`` does without ``--config.file``.

One job, ``registry``, publishes every instance registered with sdbridge's own
registry to ``./targets/registry.json`` and ``/sd/registry``; the registry keeps its
data in ``./data``; and sdbridge registers its own ``/metrics``, so the job has a
target from the first second. Paths are relative to the current directory.

The same config as YAML (``sdbridge run --config.file`` with it behaves the same)::

    global:
      data_dir: data
    registry:
      register_self: true
    jobs:
      - name: registry
        registry_sd_configs: [{}]
        guard: {enabled: false}
        output: {file: targets/registry.json}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import ConfigBase, parse_config

ORIGIN = "built-in default config"
# What ``sdbridge register --url`` defaults to.
DEFAULT_URL = "http://127.0.0.1:9099"
JOB = "registry"

DEFAULT_CONFIG: dict[str, Any] = {
    "global": {"data_dir": "data"},
    "registry": {"register_self": True},
    "jobs": [
        {
            "name": JOB,
            "registry_sd_configs": [{}],
            # Deregistrations and expiries are deliberate, not a backend glitch: publish them.
            "guard": {"enabled": False},
            "output": {"file": f"targets/{JOB}.json"},
        }
    ],
}


def default_config(base_dir: Path | None = None) -> ConfigBase:
    """The built-in default, with paths relative to ``base_dir`` (default: the cwd)."""
    return parse_config(DEFAULT_CONFIG, origin=ORIGIN, base_dir=base_dir or Path.cwd())


def banner(config: ConfigBase, url: str, command: str = "sdbridge") -> str:
    """What to tell a newcomer: where the targets are, and a scrape config to paste.

    ``url`` is the web server's base URL, e.g. ``http://127.0.0.1:9099``; ``command``
    is how the user started sdbridge (e.g. ``.venv/bin/sdbridge``), so the ``register``
    line can be pasted as it is.
    """
    scheme, _, address = url.partition("://")
    base = f"{scheme}://{reachable_address(address)}"
    job = config.jobs[0]
    target_file = job.output.file
    url_flag = "" if base == DEFAULT_URL else f" --url {base}"
    relabel = """\
    relabel_configs:
      - source_labels: [__meta_registry_service]
        target_label: service"""
    return f"""\
sdbridge is running its built-in default config (no --config.file given):
  job {job.name!r}: everything registered with sdbridge's registry, sdbridge itself included
  targets file:  {target_file}
  http_sd:       {base}/sd/{job.name}
  registry API:  {base}/api/v1/registry
  data:          {config.global_.data_dir}

Register a target (keeps it registered until you press Ctrl-C):
  {command} register myapp 127.0.0.1:8080 --label env=dev{url_flag}

Paste ONE of these into prometheus.yml under scrape_configs:
  - job_name: sdbridge-registry          # reads the file sdbridge writes
    file_sd_configs:
      - files: ['{target_file}']
{relabel}
  - job_name: sdbridge-registry          # or asks sdbridge over HTTP (Prometheus 2.28+)
    http_sd_configs:
      - url: '{base}/sd/{job.name}'
{relabel}
"""


def reachable_address(address: str) -> str:
    """A listen address as a scrape address: a wildcard host becomes loopback."""
    host, _, port = address.rpartition(":")
    if host in ("", "0.0.0.0"):
        return f"127.0.0.1:{port}"
    if host in ("[::]", "::"):
        return f"[::1]:{port}"
    return address
