"""The Ray dashboard as a person sees it: headless Chromium, the token typed in as the README says.

A tiny search runs in the background against the session's Ray; the browser must find it in the Jobs
view, its Ray Train run's actors in the Actors view, and the run in the Train API. Screenshots land in
the test's tmp folder (and in $TBRAY_DASHBOARD_SCREENSHOT when set, for a person to look at).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from conftest import TINY, start_cli, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
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
    """Open the dashboard; when it asks for the token (Ray's token auth), type ~/.ray/auth_token's content."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(url)
    asks = lambda d: d.find_elements(By.XPATH, "//input[@type='password' or @type='text']")  # noqa: E731
    fields = wait_for(lambda: asks(driver) or "Cluster" in driver.find_element(By.TAG_NAME, "body").text, 60,
                      "the dashboard to load")
    if isinstance(fields, list):
        token = (Path.home() / ".ray" / "auth_token").read_text().strip()
        fields[0].send_keys(token, Keys.ENTER)
        wait_for(lambda: not asks(driver), 30, "the dashboard to accept the token")


def _page_text(driver, url: str, wanted: str, timeout: float = 90) -> str:
    """Open `url` and wait until the page shows `wanted` (the views poll the cluster every few seconds)."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    return wait_for(lambda: (t := driver.find_element(By.TAG_NAME, "body").text) if wanted in t else None, timeout,
                    f"{wanted!r} on {url}")


def test_dashboard_lists_the_running_search_in_jobs_and_train(browser, dashboard_url, ray_address, tiny_data,
                                                               tmp_path):
    # One trial with many epochs, so the search is still running while the browser looks.
    search = start_cli("--data", tiny_data, "--results", tmp_path, "--name", "watched", "--num-samples", "1",
                       "--address", ray_address, *TINY, "--epochs", "300")
    try:
        wait_for(lambda: list((tmp_path / "watched" / "train").glob("train-*")), 240, "the trial's Train run", search)
        run_name = next((tmp_path / "watched" / "train").glob("train-*")).name
        _sign_in(browser, dashboard_url)
        jobs = _page_text(browser, f"{dashboard_url}/#/jobs", "tune/search.py")
        assert "RUNNING" in jobs
        browser.save_screenshot(str(tmp_path / "dashboard_jobs.png"))
        # Ray 2.60's open-source dashboard has no Train page: a Train run shows as its controller and
        # worker actors, and its state in the Train API that the dashboard serves (the browser's cookie
        # from the sign-in authorises it).
        actors = _page_text(browser, f"{dashboard_url}/#/actors", "RayTrainWorker")
        assert "TrainController" in actors and "ALIVE" in actors
        shot = tmp_path / "dashboard_actors.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        runs = _page_text(browser, f"{dashboard_url}/api/train/v2/runs", run_name)
        assert '"RUNNING"' in runs or "RUNNING" in runs
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
