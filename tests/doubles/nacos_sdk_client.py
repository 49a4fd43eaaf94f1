"""Drives nacos-sdk-python (Nacos's official Python client) against a Nacos server.

Runs in the SDK's own venv (see tests/servers/nacos_sdk.py), not sdbridge's: it
registers an instance, subscribes to a service and prints one JSON line per event, so
that a test can check the double answers the official client as a real server would.
Usage: python nacos_sdk_client.py HOST:PORT USERNAME PASSWORD LOG_DIR
"""

import asyncio
import json
import sys

from v2.nacos import (
    ClientConfigBuilder,
    NacosNamingService,
    RegisterInstanceParam,
    SubscribeServiceParam,
)
from v2.nacos.naming.model.naming_param import ListInstanceParam


def say(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


async def main():
    address, username, password, log_dir = sys.argv[1:5]
    builder = ClientConfigBuilder().server_address(address).log_dir(log_dir).cache_dir(log_dir)
    if username:
        builder = builder.username(username).password(password)
    naming = await NacosNamingService.create_naming_service(builder.build())
    registered = await naming.register_instance(
        RegisterInstanceParam(
            service_name="sdk-app",
            ip="127.0.0.31",
            port=8031,
            metadata={"prometheus.path": "/metrics"},
        )
    )
    say("registered", ok=registered)

    async def changed(instances):
        say("pushed", addresses=sorted(f"{i.ip}:{i.port}" for i in instances))

    await naming.subscribe(
        SubscribeServiceParam(service_name="watched", subscribe_callback=changed)
    )
    listed = await naming.list_instances(
        ListInstanceParam(service_name="watched", healthy_only=None, subscribe=True)
    )
    say("subscribed", addresses=sorted(f"{i.ip}:{i.port}" for i in listed))
    # Wait for the test: it registers into "watched" and then closes stdin.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await naming.shutdown()
    say("done")


asyncio.run(main())
