"""Searches on a laptop: each starts its own local Ray (no --address), as two people on one machine would.

That Ray keeps to itself: every socket it listens on is a loopback address, and its dashboard answers only
to the token. (The one socket beyond loopback is torch's, not Ray's: the rendezvous store of a trial's
process group.) Two such searches run at once, each asking Ray's state API about its own cluster only; a
third that wants a run folder in use is refused in one line; `kill -9` of one takes its Ray along.
While one holds its trial, its dashboard is watched as a person would: in headless Chromium, token typed
in, the search in the Jobs view and its Ray Train run's actors in the Actors view (filtered by class).
Kept light for small machines: one trial each, one CPU each. Screenshots land in the test's tmp folder
(and beside $TBRAY_DASHBOARD_SCREENSHOT when set, for a person to look at).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import psutil
from chromium import body, get_json, page_text, sign_in
from conftest import REPO, TINY, wait_for
from test_reaper import alive

from tbray.rayops import reaper

LIGHT = [*TINY, "--batch-sizes", "8", "--num-samples", "1", "--num-cpus", "1"]


def start(*args, env: dict | None = None) -> subprocess.Popen:
    """A search in the background with its output captured."""
    return subprocess.Popen([sys.executable, str(REPO / "tune" / "search.py"), *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def listening(pids) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every listening TCP socket held by one of `pids`."""
    found = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            try:
                found.append((conn.laddr.ip, conn.laddr.port, psutil.Process(conn.pid).name()))
            except psutil.NoSuchProcess:
                continue
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


def dashboard_url(proc, seen: list[str]) -> str:
    """The dashboard address tbray prints, read from the search's output (kept in `seen`) as it comes."""
    for line in proc.stdout:
        seen.append(line)
        if found := re.search(r"Ray dashboard at (http://[^;\s]+)", line):
            return found.group(1)
    raise AssertionError(f"the search ended without naming its dashboard:\n{''.join(seen)[-3000:]}")


def status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def watch_in_the_dashboard(browser, url: str, token: str, name: str, shots: Path) -> None:
    """The dashboard of a running search: its Train run through the HTTP API, then the search and the run's
    actors as a person finds them in the browser."""
    from selenium.webdriver.common.by import By

    # Asked for live actors only: a plain listing stops at its limit on a Ray that has ended many.
    query = "limit=1000&filter_keys=state&filter_predicates=%3D&filter_values=ALIVE"
    actors = get_json(f"{url}/api/v0/actors?{query}", token)["data"]["result"]["result"]
    assert {a["state"] for a in actors} == {"ALIVE"}, actors
    assert {"ImplicitFunc", "RayTrainWorker"} <= {a["class_name"] for a in actors}, actors
    runs = get_json(f"{url}/api/train/v2/runs/v1", token)["train_runs"]  # the dashboard's Train tab
    assert any(run["name"].startswith("train-") for run in runs), runs
    sign_in(browser, url)
    jobs = page_text(browser, f"{url}/#/jobs", "tune/search.py")  # the driver's command line
    assert f"--name {name}" in jobs and "RUNNING" in jobs
    browser.save_screenshot(str(shots / "dashboard_jobs.png"))
    # Ray 2.60's open-source dashboard has no Train page: a Train run shows as its controller and worker actors,
    # found by filtering the Actors view by class.
    page_text(browser, f"{url}/#/actors", "ALIVE")
    browser.find_element(By.XPATH, "//label[normalize-space()='Class']/following-sibling::div//input").send_keys("Train")
    found = wait_for(lambda: t if "RayTrainWorker" in (t := body(browser)) and "TrainController" in t else None, 60,
                     "the Train run's actors")
    assert "ALIVE" in found
    browser.save_screenshot(str(shots / "dashboard_actors.png"))
    assert (shots / "dashboard_actors.png").stat().st_size > 10_000
    if os.environ.get("TBRAY_DASHBOARD_SCREENSHOT"):
        out = Path(os.environ["TBRAY_DASHBOARD_SCREENSHOT"])
        shutil.copy(shots / "dashboard_actors.png", out)
        shutil.copy(shots / "dashboard_jobs.png", out.with_name(f"{out.stem}_jobs.png"))


def test_two_local_searches_keep_to_loopback_both_run_a_busy_folder_is_refused_and_kill_9_takes_ray_along(
        run_cli, tiny_data, tmp_path, monkeypatch, browser):
    # As in a fresh shell: token authentication must be on because tbray asks for it, not by Ray's
    # default (which prints a warning); a Ray started earlier in this test session sets the variable.
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    # The first holds its trial after epoch 1 (a test hook), so every server of its Ray is up when looked at.
    held = tmp_path / "held.pid"
    first = start("--data", tiny_data, "--results", tmp_path, "--name", "first", *LIGHT, "--epochs", "4",
                  env={**os.environ, "TBRAY_HOLD_AFTER": f"1:{held}"})
    second = start("--data", tiny_data, "--results", tmp_path, "--name", "second", *LIGHT)
    try:
        seen: list[str] = []
        url = dashboard_url(first, seen)
        assert not [line for line in seen if "Token authentication is" in line], seen
        token = (Path.home() / ".ray" / "auth_token").read_text().strip()
        assert status(f"{url}/api/version") == 401 and status(f"{url}/api/version", token) == 200

        wait_for(held.exists, 400, "the first search's trial, held after epoch 1", first)
        # The GCS, raylet, dashboard, its agents and the Train workers all listen now.
        sockets = listening({first.pid, *reaper.descendants(first.pid)})
        names = {name for _, _, name in sockets}
        assert "gcs_server" in names and "raylet" in names, sockets  # the servers a LAN could reach
        # One exception, torch's: rank 0 of a trial's worker group holds the process group's rendezvous
        # store (TCPStore), which torch binds to every interface with no setting to change it.
        beyond = [s for s in sockets if not is_loopback(s[0])]
        assert len(beyond) <= 1 and all(name == "ray::RayTrainWorker" for _, _, name in beyond), sockets
        assert any(name == "ray::RayTrainWorker" and is_loopback(ip) for ip, _, name in sockets), sockets
        watch_in_the_dashboard(browser, url, token, "first", tmp_path)

        busy = run_cli("--resume", "--name", "first", "--results", tmp_path, timeout=300)
        assert busy.returncode == 2, busy.stderr[-3000:]
        assert busy.stderr.strip().splitlines() == [
            f"tbray: error: {tmp_path / 'first'}: another search is using this run folder now; wait for it to end "
            f"or pass another --name"]

        output = second.communicate(timeout=900)[0]
        assert second.returncode == 0, output[-4000:]
        assert (tmp_path / "second" / "report.json").is_file()
        assert pd.read_csv(tmp_path / "second" / "trials.csv", dtype={"trial_id": str})["status"].tolist() == ["completed"]

        # kill -9 of the first, held mid-trial: the Ray it started goes with it. (Ray's agents alone wait 60 s
        # on a dead GCS; with tbray's reaper everything is gone within seconds.)
        ray_processes = reaper.descendants(first.pid)
        names = " ".join(alive(ray_processes).values())  # command lines
        assert "raylet" in names and "gcs_server" in names and "DashboardAgent" in names, names
        first.send_signal(signal.SIGKILL)
        output = "".join(seen) + first.communicate(timeout=30)[0]
        deadline = time.time() + 20
        while alive(ray_processes) and time.time() < deadline:
            time.sleep(0.5)
        assert alive(ray_processes) == {}, list(alive(ray_processes).values())
        assert "Token authentication is" not in output
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.kill()
