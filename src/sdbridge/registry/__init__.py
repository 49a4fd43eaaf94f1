"""sdbridge's built-in registry: services register over HTTP, jobs publish them.

- :mod:`.store`: SQLite (WAL) in ``data_dir``, mirrored in memory, TTL expiry, change
  notifications;
- :mod:`.client`: ``sdbridge register``, which registers and heartbeats until stopped;
- :mod:`.config`: the ``registry:`` config section.

Its HTTP API, ``/api/v1/registry``, is part of the web server
(:mod:`sdbridge.web.registry_api`); the ``registry_sd_configs`` mechanism that
publishes the instances is :mod:`sdbridge.discovery.registry`. The daemon owns the
one store (:class:`.store.StoreHandle`) and passes it to both.
"""
