"""``zookeeper_sd_configs``: read the registries Java frameworks keep in ZooKeeper.

Three layouts, each read exactly as its framework writes it: ``curator`` (Apache Curator
service discovery, also Spring Cloud Zookeeper and Dubbo 3 applications), ``dubbo``
(Dubbo's interface-level registry) and ``serverset`` (Twitter/Finagle, labelled like
Prometheus's ``serverset_sd_configs``). Where to look:

* :mod:`.config`: the ``zookeeper_sd_configs`` model.
* :mod:`.curator`, :mod:`.dubbo`, :mod:`.serverset`: each layout's labels and parser, and
  which znodes it reads (the :class:`~.layout.Layout` protocol).
* :mod:`.session`: the kazoo client bridged to asyncio (kazoo runs its own threads).
* :mod:`._kazoo_ext`: ``addWatch`` and ``multiRead``, built on kazoo's private internals.
* :mod:`.tree`: the watch tree mirroring the znodes, persistent or one-shot watches.
* :mod:`.mechanism`: the discoverer (registered as ``zookeeper``): resync after any
  connection loss, send only what changed, or poll with ``watch: false``.
"""

from __future__ import annotations

from .config import ZookeeperDigestAuth, ZookeeperSDConfig, ZookeeperTLSConfig
from .curator import parse_curator_instance
from .dubbo import java_url_decode, parse_dubbo_provider
from .mechanism import LAYOUTS, ZookeeperDiscoverer
from .serverset import parse_serverset_member

__all__ = [
    "LAYOUTS",
    "ZookeeperDigestAuth",
    "ZookeeperDiscoverer",
    "ZookeeperSDConfig",
    "ZookeeperTLSConfig",
    "java_url_decode",
    "parse_curator_instance",
    "parse_dubbo_provider",
    "parse_serverset_member",
]
