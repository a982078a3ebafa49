"""The Ray dashboard as a person sees it: headless Chromium, the token typed in as docs/operations.md says.

A tiny search runs in the background against the session's Ray; the browser must find it in the Jobs
view and its Ray Train run's actors in the Actors view (filtered by class). Screenshots land in
the test's tmp folder (and in $TBRAY_DASHBOARD_SCREENSHOT when set, for a person to look at).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from conftest import TINY, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
from selenium.webdriver.common.by import By  # noqa: E402  (after the skip above)

pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="Chromium or chromedriver missing (apt-get install chromium chromium-driver)")


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    yield driver
    driver.quit()


def _sign_in(driver, url: str) -> None:
    """Open the dashboard and, as docs/operations.md says, paste the token from ~/.ray/auth_token into its box."""
    from selenium.webdriver.common.keys import Keys

    token = Path.home() / ".ray" / "auth_token"
    driver.get(url)
    if not token.exists():  # token authentication off: nothing to type
        return
    box = "input[placeholder='Enter your authentication token']"  # in the "Authentication Token Required" dialog
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, box), 60, "the dashboard to ask for the token")
    driver.find_element(By.CSS_SELECTOR, box).send_keys(token.read_text().strip(), Keys.ENTER)
    wait_for(lambda: not driver.find_elements(By.CSS_SELECTOR, box), 30, "the dashboard to accept the token")


def _page_text(driver, url: str, wanted: str, timeout: float = 90) -> str:
    """Open `url` and wait until the page shows `wanted` (the views poll the cluster every few seconds)."""
    driver.get(url)
    body = lambda: driver.find_element(By.TAG_NAME, "body").text  # noqa: E731
    return wait_for(lambda: t if wanted in (t := body()) else None, timeout, f"{wanted!r} on {url}")


def test_dashboard_lists_the_running_search_and_its_train_run(start_cli, browser, dashboard_url, ray_address, tiny_data,
                                                               tmp_path):
    # One trial with many epochs, so the search is still running while the browser looks.
    search = start_cli("--data", tiny_data, "--results", tmp_path, "--name", "watched", "--num-samples", "1",
                       "--address", ray_address, *TINY, "--epochs", "300")
    try:
        wait_for(lambda: list((tmp_path / "watched" / "train").glob("train-*")), 240, "the trial's Train run", search)
        _sign_in(browser, dashboard_url)
        jobs = _page_text(browser, f"{dashboard_url}/#/jobs", "tune/search.py")  # the driver's command line
        assert "--name watched" in jobs and "RUNNING" in jobs
        browser.save_screenshot(str(tmp_path / "dashboard_jobs.png"))
        # Ray 2.60's open-source dashboard has no Train page: a Train run shows as its controller and
        # worker actors.
        actors = _page_text(browser, f"{dashboard_url}/#/actors", "ALIVE")
        # Filtered by class, as a person looks for the Train run among the cluster's actors.
        by_class = "//label[normalize-space()='Class']/following-sibling::div//input"
        browser.find_element(By.XPATH, by_class).send_keys("Train")
        body = lambda: browser.find_element(By.TAG_NAME, "body").text  # noqa: E731
        actors = wait_for(lambda: t if "RayTrainWorker" in (t := body()) and "TrainController" in t else None, 60,
                          "the Train run's actors")
        assert "ALIVE" in actors
        shot = tmp_path / "dashboard_actors.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("TBRAY_DASHBOARD_SCREENSHOT"):
            out = Path(os.environ["TBRAY_DASHBOARD_SCREENSHOT"])
            shutil.copy(shot, out)
            shutil.copy(tmp_path / "dashboard_jobs.png", out.with_name(f"{out.stem}_jobs.png"))
    finally:
        os.killpg(search.pid, signal.SIGTERM)  # stops like Ctrl-C: Tune saves, Ray Train's run ends
        deadline = time.time() + 120
        while search.poll() is None and time.time() < deadline:
            time.sleep(1)
        if search.poll() is None:
            os.killpg(search.pid, signal.SIGKILL)
