"""examples/consul run with docker-compose: Consul (the double) -> sdbridge -> Prometheus.

The example's own files, copied to a temporary directory with its three loopback ports
(8500, 9099, 9090) replaced by free ones, run with Debian's docker-compose (v1) and the
image variables pointing at local images: the Consul double started like ``consul agent``
(consul_agent.py, on the sdbridge image), the root Dockerfile's image, and Debian's
prometheus binary on the local base. All containers use the host network on 127.0.0.1.
The test waits until Prometheus lists the tagged services through both file_sd and
http_sd with the example's relabel rules applied, registers and removes a service in
the double and sees Prometheus follow, then takes the stack down (volumes included).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..servers.common import free_port, require_binary, wait_until
from ..servers.dockerd import DockerEngine
from .conftest import ROOT
from .images import image_from

pytestmark = pytest.mark.slow

EXAMPLE = ROOT / "examples" / "consul"
POOLS = ("consul-file", "consul-http")

DOUBLE_DOCKERFILE = """\
FROM {base}
COPY tests /opt/consul-double/tests
COPY consul_agent.py /opt/consul-double/
ENV PYTHONPATH=/opt/consul-double
ENTRYPOINT ["/opt/sdbridge/bin/python", "/opt/consul-double/consul_agent.py"]
"""

PROMETHEUS_DOCKERFILE = """\
FROM {base}
COPY prometheus /bin/prometheus
RUN mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
ENTRYPOINT ["/bin/prometheus"]
"""


@pytest.fixture(scope="module")
def double_image(docker_engine: DockerEngine, sdbridge_image: str) -> Iterator[str]:
    doubles = ROOT / "tests" / "doubles"
    files = {
        "tests/__init__.py": ROOT / "tests" / "__init__.py",
        **{
            f"tests/doubles/{name}": doubles / name
            for name in ("__init__.py", "base.py", "consul_double.py")
        },
        "consul_agent.py": Path(__file__).with_name("consul_agent.py"),
    }
    dockerfile = DOUBLE_DOCKERFILE.format(base=sdbridge_image)
    with image_from(docker_engine, "consul-double", dockerfile, files) as tag:
        yield tag


@pytest.fixture(scope="module")
def prometheus_image(docker_engine: DockerEngine, base_image: str) -> Iterator[str]:
    files = {"prometheus": Path(require_binary("prometheus"))}
    dockerfile = PROMETHEUS_DOCKERFILE.format(base=base_image)
    with image_from(docker_engine, "prometheus", dockerfile, files) as tag:
        yield tag


class Stack:
    """The example's compose project in ``directory``; ``down`` removes all of it."""

    def __init__(self, engine: DockerEngine, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.compose = require_binary("docker-compose")
        self.env = {**os.environ, "DOCKER_HOST": engine.host, **env}

    def run(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(
            [self.compose, *args], cwd=self.directory, env=self.env,
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            pytest.fail(f"docker-compose {' '.join(args)} failed:\n{result.stderr[-3000:]}")
        return result.stdout + result.stderr


def copy_example(target: Path, ports: dict[str, int]) -> Path:
    shutil.copytree(EXAMPLE, target)
    for path in target.rglob("*"):
        if path.is_file():
            text = path.read_text()
            for old, new in ports.items():
                text = text.replace(old, str(new))
            path.write_text(text)
            path.chmod(0o644)
    (target / "consul.d").chmod(0o755)
    return target


def active(prometheus: str) -> dict[str, set[str]]:
    """Prometheus's active targets: pool -> the ``service`` labels."""
    with urllib.request.urlopen(f"{prometheus}/api/v1/targets?state=active", timeout=5) as r:
        data: dict[str, Any] = json.load(r)
    pools: dict[str, set[str]] = {pool: set() for pool in POOLS}
    for target in data["data"]["activeTargets"]:
        assert target["discoveredLabels"]["__meta_consul_service"] == target["labels"]["service"]
        pools.setdefault(target["scrapePool"], set()).add(target["labels"]["service"])
    return pools


def call_double(consul: str, method: str, **kwargs: Any) -> None:
    body = json.dumps({"method": method, "kwargs": kwargs}).encode()
    request = urllib.request.Request(f"{consul}/_double/call", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def test_the_consul_example_runs_and_prometheus_follows(
    docker_engine: DockerEngine,
    tmp_path: Path,
    sdbridge_image: str,
    double_image: str,
    prometheus_image: str,
) -> None:
    consul_port, sdbridge_port, prometheus_port = free_port(), free_port(), free_port()
    ports = {"8500": consul_port, "9099": sdbridge_port, "9090": prometheus_port}
    directory = copy_example(tmp_path / "consul", ports)
    env = {
        "CONSUL_IMAGE": double_image,
        "SDBRIDGE_IMAGE": sdbridge_image,
        "PROMETHEUS_IMAGE": prometheus_image,
        "COMPOSE_PROJECT_NAME": f"sdbt{uuid.uuid4().hex[:8]}",
    }
    stack = Stack(docker_engine, directory, env)
    prometheus = f"http://127.0.0.1:{prometheus_port}"
    consul = f"http://127.0.0.1:{consul_port}"
    try:
        stack.run("up", "-d", "--no-build")
        tagged = {"prometheus", "sdbridge"}  # "untagged" is dropped by the keep rule
        wait_until(
            lambda: all(active(prometheus)[pool] == tagged for pool in POOLS),
            timeout=120, interval=0.5, what="Prometheus to list the tagged services",
        )  # fmt: skip

        call_double(
            consul, "register_service", node="consul-dev", name="extra", port=consul_port,
            service_id="extra-1", address="127.0.0.1", tags=["prometheus"],
        )  # fmt: skip
        wait_until(
            lambda: all(active(prometheus)[pool] == tagged | {"extra"} for pool in POOLS),
            timeout=60, interval=0.5, what="Prometheus to follow a new service",
        )  # fmt: skip
        call_double(consul, "deregister_service", node="consul-dev", service_id="extra-1")
        wait_until(
            lambda: all(active(prometheus)[pool] == tagged for pool in POOLS),
            timeout=60, interval=0.5, what="Prometheus to follow a removed service",
        )  # fmt: skip
    except BaseException:
        print(stack.run("logs", "--no-color", "--tail=60", check=False))
        for url in (f"{prometheus}/api/v1/targets", f"http://127.0.0.1:{sdbridge_port}/sd/consul",
                    f"{consul}/v1/catalog/services"):  # fmt: skip
            with contextlib.suppress(OSError):
                print(url, urllib.request.urlopen(url, timeout=5).read()[:3000])
        raise
    finally:
        stack.run("down", "-v", "--remove-orphans", "--timeout", "5", check=False)
