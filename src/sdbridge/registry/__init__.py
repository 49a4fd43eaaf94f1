"""sdbridge's built-in registry: services register over HTTP, jobs publish them.

- :mod:`.store`: SQLite (WAL) in ``data_dir``, mirrored in memory, TTL expiry, change
  notifications;
- :mod:`.api`: ``/api/v1/registry`` on sdbridge's web server;
- :mod:`.client`: ``sdbridge register``, which registers and heartbeats until stopped;
- :mod:`.config`: the ``registry:`` config section.

The ``registry_sd_configs`` mechanism that publishes the instances is
:mod:`sdbridge.discovery.registry`.
"""
