"""Shared fixtures, and the test tiers built on the per-server markers.

Every test that needs a real server carries that server's marker (``prometheus``,
``docker``, ``etcd``, ``zookeeper``, ``postgres``, ``mariadb``, ``vmagent``), a test that
needs root carries ``root``, one that drives Debian's chromium ``browser``, and one that
builds the release packages ``release``. Tests that use a server's
fixture get its marker here, so a fixture cannot be used without it. The fast tier
(``./scripts/test --fast``, or ``pytest -m "not server"``: ``server`` is added to every
one of those tests) deselects them all, and in that tier :func:`require_binary
<tests.servers.common.require_binary>` refuses to start a server at all, so an unmarked
test fails loudly instead of slipping in.

In every tier a skipped test is a failed one: a missing server must never pass quietly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.servers.common import FAST_TIER_ENV

# CI machines are small (2 cores) and busy; examples are counted, not timed.
settings.register_profile(
    "sdbridge", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "sdbridge"))

# The markers that take a test out of the fast tier; each one implies ``server``.
SERVER_MARKERS = (
    "prometheus", "docker", "etcd", "zookeeper", "postgres", "mariadb", "vmagent", "root",
    "browser", "release",
)  # fmt: skip

# Fixtures that start (or borrow) a real server or need root, and the marker they imply.
FIXTURE_MARKERS = {
    "docker_engine": "docker",
    "private_dockerd": "docker",
    "private_dockerd_tls": "docker",
    "etcd": "etcd",
    "etcd_private": "etcd",
    "etcd_tls": "etcd",
    "zookeeper": "zookeeper",
    "postgres": "postgres",
    "mariadb": "mariadb",
    "tiny_tmpfs": "root",
}


def pytest_configure(config: pytest.Config) -> None:
    if "not server" in (config.option.markexpr or ""):
        os.environ[FAST_TIER_ENV] = "1"  # read by require_binary


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        for fixture, marker in FIXTURE_MARKERS.items():
            if fixture in fixtures and item.get_closest_marker(marker) is None:
                item.add_marker(marker)
        if any(item.get_closest_marker(m) for m in SERVER_MARKERS):
            item.add_marker("server")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (
            f"skipped tests fail in this suite (a missing server must never pass): {reason}"
        )
