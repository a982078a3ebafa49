"""Headless Chromium for the tests that look at pages as a person does: the Ray dashboard (the token typed
in as docs/operations.md says) and the run's viewers. `.ci/run` installs Chromium and its driver; where
they are missing, the `browser` fixture (conftest.py) skips with that reason."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import pytest
from conftest import wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
MISSING = "Chromium or chromedriver missing (apt-get install chromium chromium-driver)"


def start():
    """A headless Chromium under selenium, or a skip naming what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM and DRIVER):
        pytest.skip(MISSING)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(DRIVER))


def body(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def get_json(url: str, token: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def sign_in(driver, url: str) -> None:
    """Open the dashboard and, as docs/operations.md says, paste the token from ~/.ray/auth_token into its box."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    token = Path.home() / ".ray" / "auth_token"
    driver.get(url)
    if not token.exists():  # token authentication off: nothing to type
        return
    box = "input[placeholder='Enter your authentication token']"  # in the "Authentication Token Required" dialog
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, box), 60, "the dashboard to ask for the token")
    driver.find_element(By.CSS_SELECTOR, box).send_keys(token.read_text().strip(), Keys.ENTER)
    wait_for(lambda: not driver.find_elements(By.CSS_SELECTOR, box), 30, "the dashboard to accept the token")


def page_text(driver, url: str, wanted: str, timeout: float = 90) -> str:
    """Open `url` and wait until the page shows `wanted` (the views poll the cluster every few seconds)."""
    driver.get(url)
    return wait_for(lambda: t if wanted in (t := body(driver)) else None, timeout, f"{wanted!r} on {url}")
