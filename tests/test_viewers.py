"""The run's viewers as a person sees them: MLflow's UI, optuna-dashboard and TensorBoard in headless
Chromium (tests/chromium.py). The Ray dashboard is looked at the same way in test_concurrent.py, while
a laptop search holds its trial. Screenshots land in the test's tmp folder (and in
$TBRAY_VIEWER_SCREENSHOTS when set, for a person to look at).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pandas as pd
from chromium import body
from conftest import REPO, wait_for


def _viewer_urls(ui: subprocess.Popen) -> dict[str, str]:
    """The addresses tune/ui.py prints, read until its "Ctrl-C stops them" line."""
    urls = {}
    for line in ui.stdout:
        if line.startswith("tbray: Ctrl-C"):
            return urls
        name, _, url = line.removeprefix("tbray: ").rpartition(" ")
        urls[name.strip()] = url.strip()
    raise AssertionError(f"tune/ui.py ended ({ui.wait()}) before printing its viewers")


def _exit_code(ui: subprocess.Popen, timeout: float) -> int:
    """tune/ui.py's exit code; if it is still running after `timeout`, a failure that says what it and its
    viewers were doing (then they are killed, so the suite goes on)."""
    try:
        return ui.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        import psutil
        left = [psutil.Process(ui.pid), *psutil.Process(ui.pid).children(recursive=True)]
        states = "; ".join(f"{p.pid} {p.status()} {' '.join(p.cmdline()[:3])}" for p in left if p.is_running())
        stack = subprocess.run(["py-spy", "dump", "--pid", str(ui.pid)], capture_output=True, text=True).stdout \
            if shutil.which("py-spy") else "(py-spy not installed: no stack)"
        for p in left:
            p.kill()
        raise AssertionError(f"tune/ui.py still running {timeout:.0f} s after Ctrl-C: {states}\n{stack}") from None


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
        # MLflow's address opens the experiment in the classic-ML view ("Model training": runs, models,
        # model registry), not the GenAI view (traces, judges) MLflow 3.17 starts in on a plain address.
        assert urls["MLflow"].endswith(f"#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning")
        browser.get(urls["MLflow"])
        wait_for(lambda: "Model registry" in body(browser), 90, "MLflow's classic-ML view at the printed address")
        assert "Judges" not in body(browser)
        mlflow_home = urls["MLflow"].split("#")[0]
        # A trial's own run page (the experiment's table folds the trial runs under the search's parent run),
        # in the same view: MLflow's own links carry workflowType along; without it, the page is an
        # "Evaluation run" of the GenAI view.
        pages = {"MLflow": f"{mlflow_home}#/experiments/{experiment.experiment_id}/runs/{trial_run.info.run_id}"
                           "?workflowType=machine_learning",
                 "optuna-dashboard": f"{urls['optuna-dashboard']}dashboard/studies/1/trials",
                 "TensorBoard": f"{urls['TensorBoard']}#timeseries"}
        for name, page in pages.items():
            browser.get(page)
            shot = tmp_path / f"viewer_{name}.png"
            try:
                wait_for(lambda: [t for t in trial_ids if t in body(browser)], 90, f"a trial id in {name} at {page}")
                assert name != "MLflow" or "Evaluation runs" not in body(browser)
            finally:  # what the page showed, found or not, for a person to look at
                browser.save_screenshot(str(shot))
                if os.environ.get("TBRAY_VIEWER_SCREENSHOTS"):
                    shutil.copy(shot, Path(os.environ["TBRAY_VIEWER_SCREENSHOTS"]) / shot.name)
    finally:
        ui.send_signal(signal.SIGINT)  # Ctrl-C, as a person ends it
        code = _exit_code(ui, 60)
        watchdog.cancel()
    assert code == 130
    ports = [urllib.parse.urlsplit(u).port for u in urls.values()]
    for port in ports:  # nothing listens any more: all three stopped with it
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, port
