"""The Consul double (tests/doubles) started the way examples/consul starts Consul.

It takes the arguments of ``consul agent -dev`` that the example's compose file passes
(``-http-port`` and ``-config-dir``; the others are accepted and ignored), registers the
services of the ``*.json`` service definitions in the config directory on a node
``consul-dev`` at 127.0.0.1 (checks passing), and serves the double's API, control
endpoints included (``POST /_double/call``), on 127.0.0.1. The test image of the
``consul`` service runs this file.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from tests.doubles.consul_double import ConsulDouble

NODE = "consul-dev"


def options(argv: list[str]) -> dict[str, str]:
    """``-name=value`` arguments after ``agent``; flags without a value map to ""."""
    if not argv or argv[0] != "agent":
        raise SystemExit(f"usage: agent [-dev] -http-port=N -config-dir=DIR (got {argv})")
    parsed = {}
    for arg in argv[1:]:
        name, _, value = arg.lstrip("-").partition("=")
        parsed[name] = value
    return parsed


def definitions(config_dir: Path) -> list[dict[str, Any]]:
    services: list[dict[str, Any]] = []
    for path in sorted(config_dir.glob("*.json")):
        document = json.loads(path.read_text())
        services.extend(document.get("services", []))
        if "service" in document:
            services.append(document["service"])
    return services


def register(double: ConsulDouble, services: list[dict[str, Any]]) -> None:
    double.register_node(NODE, "127.0.0.1")
    for service in services:
        check = service.get("check")
        double.register_service(
            NODE,
            service["name"],
            service["port"],
            service_id=service.get("id", service["name"]),
            address=service.get("address", ""),
            tags=service.get("tags", []),
            meta=service.get("meta", {}),
            checks=[{"id": check["id"], "status": "passing"}] if check else None,
        )


def main() -> None:
    opts = options(sys.argv[1:])
    double = ConsulDouble(port=int(opts.get("http-port", "8500")))
    services = definitions(Path(opts.get("config-dir", "/consul/config")))

    async def serve() -> None:
        await double.start_async()
        register(double, services)
        print(f"consul double listening on {double.url}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
