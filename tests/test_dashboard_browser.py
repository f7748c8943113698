"""The dashboard in a real browser: headless Chromium (Debian's package) against a real 4-peer testnet.

The page is opened at one peer; a question is asked through its box; the
answer and the verification of its certificate must appear, and the weight
chart, drawn by uPlot from the snapshots the server-sent events bring, must
grow by the decided heights without a reload.

Chromium and its driver come from Debian (``chromium``, ``chromium-driver``).
When they are missing, the set-up installs them with apt-get if it runs as
root with apt-get available (``.ci/run`` does the same before ``make
test``); the test is skipped, saying why, only where that is impossible.
Selenium is given ``/usr/bin/chromedriver`` explicitly, so Selenium Manager
never downloads a browser or a driver.

``MULTILLMN_SCREENSHOT=docs/img/dashboard.png`` saves the page after two
questions (how the README's screenshot is made).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from testnet.launcher import PeerStatus, down, status, up
from testnet.manifest import Manifest

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,2200"]
WEIGHTS = (4, 3, 2, 1)
ANSWER_TIMEOUT_S = 600  # two small CPU models on a shared machine; usually a few seconds


def _install_chromium() -> str | None:
    """Why Chromium cannot be used here, or None once it is installed."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return (f"{CHROMIUM} or {CHROMEDRIVER} is missing and cannot be installed here "
                "(needs root and apt-get: apt-get install -y chromium chromium-driver)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "chromium", "chromium-driver"]
    done = subprocess.run(install, capture_output=True, text=True, timeout=900, env=env)
    if done.returncode != 0:  # a fresh machine may not have the package lists yet
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, timeout=900, env=env)
        done = subprocess.run(install, capture_output=True, text=True, timeout=900, env=env)
    if done.returncode != 0 or not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        return f"apt-get install chromium chromium-driver failed: {done.stderr.strip()[-500:]}"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    reason = _install_chromium()
    if reason is not None:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def testnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[PeerStatus]]:
    directory = tmp_path_factory.mktemp("testnet")
    try:
        plain = Manifest.from_args(4, ["smollm2", "gemma3"])
        # unequal weights: the chart's four lines are apart, so a wrong series would show
        manifest = replace(plain, peers=tuple(replace(p, weight=w) for p, w in zip(plain.peers, WEIGHTS)))
        up(manifest.validate(), directory, ready_timeout_s=900)
        yield status(directory)
    finally:
        down(directory)


def _ask(driver: Any, question: str) -> tuple[str, str]:
    """Ask through the page's box; the answer and the verification line once both are shown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    box = driver.find_element(By.ID, "question")
    box.clear()
    box.send_keys(question)
    driver.find_element(By.ID, "ask").click()
    wait = WebDriverWait(driver, ANSWER_TIMEOUT_S, poll_frequency=0.5)
    wait.until(lambda d: d.find_element(By.ID, "verification").get_attribute("data-valid") is not None
               or d.find_element(By.ID, "ask-error").is_displayed())
    error = driver.find_element(By.ID, "ask-error")
    assert not error.is_displayed(), error.text
    return driver.find_element(By.ID, "answer").text, driver.find_element(By.ID, "verification").text


def _chart(driver: Any) -> dict[str, Any]:
    result: dict[str, Any] = driver.execute_script("""
        const box = document.getElementById('weights-chart'), s = window.multillmnDashboard;
        return {last: Number(box.dataset.lastHeight), updates: Number(box.dataset.updates || 0),
                canvas: box.querySelectorAll('canvas').length,
                series: s.chart ? s.chart.series.length - 1 : 0,
                heights: s.chart ? Array.from(s.chart.data[0]) : [],
                live: document.getElementById('live').textContent};""")
    return result


def test_ask_through_the_page_see_the_verified_answer_and_the_weight_chart_grow(
        browser: Any, testnet: list[PeerStatus]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    peer = testnet[0]
    browser.get(peer.api_url + "/")  # redirects to /dashboard
    WebDriverWait(browser, 60).until(lambda d: _chart(d)["live"] == "live" and _chart(d)["canvas"] > 0)
    before = _chart(browser)
    assert before["series"] == 4 and before["heights"] == [1]  # a new network: only the current height
    assert sorted(browser.execute_script(
        "return window.multillmnDashboard.chart.data.slice(1).map((s) => s[0])")) == sorted(WEIGHTS)
    rows = browser.find_elements(By.CSS_SELECTOR, "#peers tbody tr")
    assert len(rows) == 4 and any("this peer" in r.text for r in rows)
    browser.execute_script("window.sameDocument = 'yes'")  # gone if the page ever reloads

    answer, verification = _ask(browser, "What is the capital of France?")
    assert "paris" in answer.lower()
    assert verification.startswith("Certificate verified"), verification
    assert browser.find_element(By.ID, "verification").get_attribute("data-valid") == "true"

    # the chart follows the decision through the event stream, not a reload
    WebDriverWait(browser, 60).until(lambda d: _chart(d)["last"] >= 2)
    after = _chart(browser)
    assert after["heights"][:2] == [1, 2] and after["updates"] > before["updates"] and after["series"] == 4
    decision = browser.find_element(By.CSS_SELECTOR, "#decisions .decision")
    assert decision.get_attribute("data-height") == "1" and "capital of France" in decision.text
    assert "agreed" in decision.text

    answer, verification = _ask(browser, "What is the largest planet in the solar system?")
    assert "jupiter" in answer.lower() and verification.startswith("Certificate verified"), verification
    WebDriverWait(browser, 60).until(lambda d: _chart(d)["last"] >= 3)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#decisions .decision")) == 2
    ledger = browser.find_element(By.ID, "ledger-state").text
    assert "entries" in ledger
    assert browser.execute_script("return window.sameDocument") == "yes"
    shot = os.environ.get("MULTILLMN_SCREENSHOT")
    if shot:
        WebDriverWait(browser, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#ledger tbody tr")) >= 2)
        height = browser.execute_script("return document.querySelector('main').getBoundingClientRect().bottom")
        browser.set_window_size(1280, int(height) + 160)  # the window's frame is not the page
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(shot)
