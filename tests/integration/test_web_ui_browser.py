"""The web UI in a real headless Chromium (Debian's chromium + chromium-driver, via Selenium).

sdbridge runs as a child process with a 10,000-target job and a failing one. The test
opens the UI, sees the jobs and targets, filters the table, and sees the error state.
A screenshot is written under pytest's temporary directory (never into the repository);
set SDBRIDGE_SCREENSHOT_DIR to keep them somewhere else.
"""

from __future__ import annotations

import json
import os
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


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sdbridge]:
    workdir = tmp_path_factory.mktemp("ui")
    (workdir / "fleet.json").write_text(json.dumps(fleet()))
    config = {
        "jobs": [
            {"name": "fleet", "exec_sd_configs": [{"command": ["cat", "fleet.json"]}]},
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
        ]
    }
    # "payments" never syncs, so sdbridge never becomes ready: wait for the jobs instead.
    bridge = Sdbridge(workdir, config, wait_ready=False)
    try:
        wait_until(
            lambda: bridge.process.alive() and bridge.request("/sd/fleet")[0] == 200,
            timeout=60,
            what="the fleet job",
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


def screenshot(driver: webdriver.Chrome, tmp_path: Path, name: str) -> Path:
    directory = Path(os.environ.get("SDBRIDGE_SCREENSHOT_DIR", tmp_path))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    assert driver.save_screenshot(str(path))
    return path


def visible_rows(driver: webdriver.Chrome) -> list[str]:
    """The text of the target rows on screen, read in one go (the page may navigate)."""
    rows: list[str] = driver.execute_script(
        "return Array.from(document.querySelectorAll('#targets tbody tr'))"
        ".filter(r => r.offsetParent !== null).map(r => r.innerText)"
    )
    return rows


def test_jobs_targets_filter_and_errors_in_chromium(
    bridge: Sdbridge, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    wait = WebDriverWait(
        browser, 20, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException]
    )
    browser.get(f"{bridge.url}/")
    jobs = {
        row.get_attribute("data-job"): row.text
        for row in browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")
    }
    assert set(jobs) == {"fleet", "payments"}
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
