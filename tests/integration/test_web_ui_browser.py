"""The web UI in a real headless Chromium (Debian's chromium + chromium-driver, via Selenium).

sdbridge runs as a child process with a 10,000-target job, the same targets relabeled
(a third dropped), a failing job and 10,000 registered instances. The tests open the UI,
see the jobs and targets, filter the tables, see the error state, the service-discovery
and registry pages, and a page update itself. Screenshots are written under pytest's
temporary directory (never into the repository); set SDBRIDGE_SCREENSHOT_DIR to keep
them somewhere else.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from sdbridge.registry.store import Store, db_path
from tests.servers.common import require_binary, wait_until
from tests.servers.sdbridge import Sdbridge

pytestmark = pytest.mark.browser

TARGETS = 10_000
ENVS = ("prod", "dev", "staging")


def fleet() -> list[dict[str, Any]]:
    return [
        {
            "targets": [f"127.0.{i // 250}.{1 + i % 250}:9100"],
            "labels": {"env": ENVS[i % 3], "dc": f"dc{i % 4}", "team": f"team-{i % 11}"},
        }
        for i in range(TARGETS)
    ]


async def register_instances(data_dir: Path) -> None:
    """10,000 instances in the registry's database, written before sdbridge starts."""
    store = await Store.open(db_path(data_dir))
    try:
        await asyncio.gather(
            *(
                store.put(
                    f"svc{i % 7}",
                    f"i{i}",
                    f"127.0.{i // 250}.{1 + i % 250}:8080",
                    {"env": ENVS[i % 3], "api_token": "tok-SECRET"},
                    3600,
                )
                for i in range(TARGETS)
            )
        )
    finally:
        await store.close()


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sdbridge]:
    workdir = tmp_path_factory.mktemp("ui")
    (workdir / "fleet.json").write_text(json.dumps(fleet()))
    asyncio.run(register_instances(workdir / "data"))
    config = {
        "global": {"data_dir": str(workdir / "data")},
        "jobs": [
            {"name": "fleet", "exec_sd_configs": [{"command": ["cat", "fleet.json"]}]},
            {
                "name": "relabeled",
                "exec_sd_configs": [{"command": ["cat", "fleet.json"]}],
                "relabel_configs": [
                    {"action": "drop", "source_labels": ["env"], "regex": "dev"},
                    {"source_labels": ["team"], "target_label": "owner"},
                ],
                "keep_dropped_targets": 0,
            },
            {
                "name": "payments",
                "exec_sd_configs": [
                    {
                        "command": [
                            "sh",
                            "-c",
                            "echo 'registry 127.0.0.1:1 refused the connection' >&2; exit 2",
                        ]
                    }
                ],
            },
        ],
    }
    # "payments" never syncs, so sdbridge never becomes ready: wait for the jobs instead.
    bridge = Sdbridge(workdir, config, wait_ready=False)
    try:
        wait_until(
            lambda: (
                bridge.process.alive()
                and all(bridge.request(f"/sd/{job}")[0] == 200 for job in ("fleet", "relabeled"))
            ),
            timeout=60,
            what="the fleet and relabeled jobs",
        )
        wait_until(
            lambda: b"refused the connection" in bridge.request("/api/v1/jobs/payments")[1],
            timeout=60,
            what="the payments job failing",
        )
        yield bridge
    finally:
        bridge.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    # Selenium must never fetch a driver or a browser: only the system's are used.
    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = require_binary("chromium")
    for argument in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in CI containers
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1366,768",  # a laptop screen
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(require_binary("chromedriver")))
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


def waiter(driver: webdriver.Chrome, timeout: float) -> WebDriverWait[webdriver.Chrome]:
    """Waits that survive the page swapping its elements (navigation or auto-refresh)."""
    return WebDriverWait(
        driver, timeout, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException]
    )


def screenshot(driver: webdriver.Chrome, tmp_path: Path, name: str) -> Path:
    directory = Path(os.environ.get("SDBRIDGE_SCREENSHOT_DIR", tmp_path))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    assert driver.save_screenshot(str(path))
    return path


def visible_rows(driver: webdriver.Chrome, table: str = "targets") -> list[str]:
    """The text of a table's rows on screen, read in one go (the page may navigate)."""
    rows: list[str] = driver.execute_script(
        "return Array.from(document.querySelectorAll(`#${arguments[0]} tbody tr`))"
        ".filter(r => r.offsetParent !== null).map(r => r.innerText)",
        table,
    )
    return rows


def test_jobs_targets_filter_and_errors_in_chromium(
    bridge: Sdbridge, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    wait = waiter(browser, 20)
    browser.get(f"{bridge.url}/")
    jobs = {
        row.get_attribute("data-job"): row.text
        for row in browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")
    }
    assert set(jobs) == {"fleet", "relabeled", "payments"}
    assert "10,000" in jobs["fleet"]
    assert "ok" in jobs["fleet"]
    assert "failing" in jobs["payments"]
    assert "refused the connection" in jobs["payments"]
    assert browser.find_element(By.ID, "readiness").text == "not ready"
    screenshot(browser, tmp_path, "index")

    browser.find_element(By.LINK_TEXT, "fleet").click()
    wait.until(lambda d: d.find_elements(By.ID, "target-count"))
    assert "of 10,000 target(s)" in browser.find_element(By.ID, "target-count").text
    assert len(visible_rows(browser)) == 100
    # Readable on a laptop screen: the table fits the window's width.
    width = browser.execute_script("return document.documentElement.scrollWidth")
    assert width <= browser.execute_script("return window.innerWidth")

    # Hold the page's own delayed submit, so the instant filter can be looked at however
    # slow the machine is; Enter then submits the form the ordinary way.
    browser.execute_script(
        "document.getElementById('filter').submit = () => { window.autoSubmitted = true; };"
    )
    box = browser.find_element(By.ID, "filter-input")
    box.send_keys("env=prod dc1")
    # The rows on screen filter at once ...
    wait.until(lambda d: 0 < len(visible_rows(d)) < 100)
    assert all("env=prod" in row and "dc=dc1" in row for row in visible_rows(browser))
    # ... the page asks the server after a pause ...
    wait.until(lambda d: d.execute_script("return window.autoSubmitted === true"))
    # ... and the server filters all 10,000 targets.
    box.send_keys(Keys.ENTER)
    wait.until(lambda d: "q=env%3Dprod+dc1" in d.current_url)
    wait.until(lambda d: "matching" in d.find_element(By.ID, "target-count").text)
    expected = sum(1 for i in range(TARGETS) if i % 3 == 0 and i % 4 == 1)
    assert f"of {expected:,} target(s)" in browser.find_element(By.ID, "target-count").text
    rows = visible_rows(browser)
    assert len(rows) == 100
    assert all("env=prod" in row and "dc=dc1" in row for row in rows)
    assert browser.find_element(By.ID, "filter-input").get_attribute("value") == "env=prod dc1"
    screenshot(browser, tmp_path, "fleet-filtered")

    browser.find_element(By.CSS_SELECTOR, "nav.pager a[rel=next]").click()
    wait.until(lambda d: "page=2" in d.current_url)
    assert "Showing 101" in browser.find_element(By.ID, "target-count").text

    browser.get(f"{bridge.url}/jobs/payments")
    errors = browser.find_element(By.ID, "job-errors").text
    assert "exec_sd_configs[0]" in errors
    assert "refused the connection" in errors
    assert "failing" in browser.find_element(By.CSS_SELECTOR, "#mechanisms tbody tr").text
    screenshot(browser, tmp_path, "payments-failing")


def test_service_discovery_page_in_chromium(
    bridge: Sdbridge, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    wait = waiter(browser, 20)
    dropped = sum(1 for i in range(TARGETS) if ENVS[i % 3] == "dev")
    browser.get(f"{bridge.url}/jobs/relabeled")
    browser.find_element(By.ID, "sd-link").click()
    wait.until(lambda d: d.find_elements(By.ID, "sd-summary"))
    summary = browser.find_element(By.ID, "sd-summary").text
    assert f"{TARGETS - dropped:,} active target(s); {dropped:,} dropped by relabeling" in summary
    rows = visible_rows(browser, "sd-targets")
    assert len(rows) == 100
    width = browser.execute_script("return document.documentElement.scrollWidth")
    assert width <= browser.execute_script("return window.innerWidth")
    screenshot(browser, tmp_path, "service-discovery")

    browser.find_element(By.ID, "show-dropped").click()
    wait.until(lambda d: "show=dropped" in d.current_url)
    rows = visible_rows(browser, "sd-targets")
    assert len(rows) == 100
    assert all("env=dev" in row and "Dropped by relabel_configs[0]" in row for row in rows)
    assert f"of {dropped:,} dropped target(s)" in browser.find_element(By.ID, "sd-count").text

    browser.find_element(By.ID, "show-active").click()
    wait.until(lambda d: "show=active" in d.current_url)
    box = browser.find_element(By.ID, "filter-input")
    box.send_keys("owner=team-3 dc2", Keys.ENTER)
    wait.until(lambda d: "q=owner%3Dteam-3+dc2" in d.current_url)
    expected = sum(1 for i in range(TARGETS) if ENVS[i % 3] != "dev" and i % 11 == 3 and i % 4 == 2)
    count = browser.find_element(By.ID, "sd-count").text
    assert f"of {expected:,} active target(s)" in count
    assert all("owner=team-3" in row for row in visible_rows(browser, "sd-targets"))
    screenshot(browser, tmp_path, "service-discovery-filtered")


def register(bridge: Sdbridge, service: str, instance: str, address: str) -> None:
    body = json.dumps({"address": address, "labels": {"env": "canary"}, "ttl": "90s"}).encode()
    request = urllib.request.Request(
        f"{bridge.url}/api/v1/registry/{service}/{instance}",
        data=body,
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status in (200, 201)


def test_registry_page_refreshes_itself_in_chromium(
    bridge: Sdbridge, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    wait = waiter(browser, 30)
    browser.get(f"{bridge.url}/")
    browser.find_element(By.LINK_TEXT, "Registry").click()
    wait.until(lambda d: d.find_elements(By.ID, "registry-count"))
    count = browser.find_element(By.ID, "registry-count").text
    assert f"of {TARGETS:,} instance(s)" in count
    assert "in 7 service(s)" in count
    assert "tok-SECRET" not in browser.page_source
    assert "api_token=<secret>" in browser.find_element(By.ID, "registry").text
    screenshot(browser, tmp_path, "registry")

    # The page updates itself: a new registration appears, and the page never navigated.
    browser.execute_script("window.sameDocument = true;")
    register(bridge, "zzz-canary", "c1", "127.0.0.9:9")
    wait.until(
        lambda d: f"of {TARGETS + 1:,} instance(s)" in d.find_element(By.ID, "registry-count").text
    )
    assert browser.execute_script("return window.sameDocument === true")
    assert browser.execute_script("return document.body.hasAttribute('data-refreshed')")

    # The filter finds it among 10,001 at the server.
    box = browser.find_element(By.ID, "filter-input")
    box.send_keys("env=canary", Keys.ENTER)
    wait.until(lambda d: "q=env%3Dcanary" in d.current_url)
    assert "of 1 instance(s)" in browser.find_element(By.ID, "registry-count").text
    assert "zzz-canary" in browser.find_element(By.ID, "registry").text
    # Relative times move without a reload: its expiry counts down second by second.
    browser.execute_script("window.sameDocument = true;")
    first = browser.find_element(By.CSS_SELECTOR, "#registry time[data-until]").text
    assert first.startswith("in ")
    wait.until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#registry time[data-until]").text != first
    )
    assert browser.execute_script("return window.sameDocument === true")
    screenshot(browser, tmp_path, "registry-filtered")
