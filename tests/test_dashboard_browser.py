"""The Ray dashboard and the run's viewers as a person sees them: headless Chromium, the token typed in as
docs/operations.md says.

A tiny search runs in the background against the session's Ray; the browser must find it in the Jobs
view and its Ray Train run's actors in the Actors view (filtered by class). Screenshots land in
the test's tmp folder (and in $TBRAY_DASHBOARD_SCREENSHOT when set, for a person to look at).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, TINY, wait_for

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


def _get(url: str, token: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


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
    # One trial, held after its first epoch by a test hook, so the search is still running while the browser
    # looks however fast the machine trains (a 300-epoch trial once finished first on a fast CI machine).
    held = tmp_path / "held.pid"
    search = start_cli("--data", tiny_data, "--results", tmp_path, "--name", "watched", "--num-samples", "1",
                       "--address", ray_address, *TINY, env={"TBRAY_HOLD_AFTER": f"1:{held}"})
    try:
        wait_for(held.exists, 300, "the trial, held after epoch 1", search)
        # The dashboard's HTTP API first, with the token: the trial and its Train worker, and the Train run.
        # Asked for live actors only: the session's Ray has ended many, and a plain listing stops at its limit.
        token = (Path.home() / ".ray" / "auth_token").read_text().strip()
        query = "limit=1000&filter_keys=state&filter_predicates=%3D&filter_values=ALIVE"
        actors = _get(f"{dashboard_url}/api/v0/actors?{query}", token)["data"]["result"]["result"]
        assert {a["state"] for a in actors} == {"ALIVE"}, actors
        assert {"ImplicitFunc", "RayTrainWorker"} <= {a["class_name"] for a in actors}, actors
        runs = _get(f"{dashboard_url}/api/train/v2/runs/v1", token)["train_runs"]  # the dashboard's Train tab
        assert any(run["name"].startswith("train-") for run in runs), runs
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
        if search.poll() is None:
            os.killpg(search.pid, signal.SIGTERM)  # stops like Ctrl-C: Tune saves, Ray Train's run ends
        deadline = time.time() + 120
        while search.poll() is None and time.time() < deadline:
            time.sleep(1)
        if search.poll() is None:
            os.killpg(search.pid, signal.SIGKILL)


def _viewer_urls(ui: subprocess.Popen) -> dict[str, str]:
    """The addresses tune/ui.py prints, read until its "Ctrl-C stops them" line."""
    urls = {}
    for line in ui.stdout:
        if line.startswith("tbray: Ctrl-C"):
            return urls
        name, _, url = line.removeprefix("tbray: ").rpartition(" ")
        urls[name.strip()] = url.strip()
    raise AssertionError(f"tune/ui.py ended ({ui.wait()}) before printing its viewers")


def test_the_viewers_open_from_the_install_and_show_the_runs_trials(finished_run, browser, tmp_path):
    """`make ui`'s command on a finished tiny run: MLflow's UI, optuna-dashboard and TensorBoard, each on
    loopback, each showing a Tune trial id in headless Chromium; Ctrl-C stops all three."""
    from mlflow.tracking import MlflowClient

    run = finished_run.folder
    trial_ids = set(pd.read_csv(run / "trials.csv", dtype={"trial_id": str})["trial_id"])
    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(run.name)
    trial_run = next(r for r in client.search_runs([experiment.experiment_id]) if "tune_trial_id" in r.data.tags)
    ui = subprocess.Popen([sys.executable, str(REPO / "tune" / "ui.py"), str(run)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
    watchdog = threading.Timer(300, ui.kill)  # a viewer that never answers fails the test, not the suite
    watchdog.start()
    try:
        urls = _viewer_urls(ui)
        assert set(urls) == {"MLflow", "optuna-dashboard", "TensorBoard"} and all(
            u.startswith("http://127.0.0.1:") for u in urls.values()), urls
        # A trial's own run page: the experiment's table folds the trial runs under the search's parent run.
        pages = {"MLflow": f"{urls['MLflow']}#/experiments/{experiment.experiment_id}/runs/{trial_run.info.run_id}",
                 "optuna-dashboard": f"{urls['optuna-dashboard']}dashboard/studies/1/trials",
                 "TensorBoard": f"{urls['TensorBoard']}#timeseries"}
        for name, page in pages.items():
            browser.get(page)
            body = lambda: browser.find_element(By.TAG_NAME, "body").text  # noqa: E731
            shot = tmp_path / f"viewer_{name}.png"
            try:
                wait_for(lambda: [t for t in trial_ids if t in body()], 90, f"a trial id in {name} at {page}")
            finally:  # what the page showed, found or not, for a person to look at
                browser.save_screenshot(str(shot))
                if os.environ.get("TBRAY_VIEWER_SCREENSHOTS"):
                    shutil.copy(shot, Path(os.environ["TBRAY_VIEWER_SCREENSHOTS"]) / shot.name)
    finally:
        ui.send_signal(signal.SIGINT)  # Ctrl-C, as a person ends it
        code = ui.wait(timeout=60)
        watchdog.cancel()
    assert code == 130
    ports = [int(u.rsplit(":", 1)[1].strip("/")) for u in urls.values()]
    for port in ports:  # nothing listens any more: all three stopped with it
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, port
