"""Shared fixtures: one local Ray for the whole session, tiny data sets, and running the real CLI."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY = ["--model", "test_efficientnet", "--no-pretrained", "--epochs", "2", "--batch-sizes", "16",
        "--image-sizes", "32", "--min-image-size", "32", "--gpus-per-trial", "0"]


# Test tiers (README "How to test"): marked from the fixtures a test uses, directly or through other fixtures.
RAY_FIXTURES = {"ray_session"}  # the session's local Ray; ray_address and dashboard_url stand on it
SEARCH_FIXTURES = {"run_cli", "start_cli"}  # tune/search.py as a user runs it: its own Ray, or --address


def pytest_configure(config):
    """Ctrl-C as a terminal gives it. A suite started in the background by a script (`make test &`) inherits
    SIGINT ignored, and so would every command a test starts: tune/ui.py then sat through the test's Ctrl-C
    (2026-12-04). A Python handler, unlike "ignored", is not passed on to the programs the tests run."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups (it runs first otherwise)
def pytest_collection_modifyitems(items):
    """`ray`: the test starts or joins a Ray; `search`: it runs tune/search.py. `make test-fast` runs the rest.

    `make test` runs two pytest-xdist workers (`--dist loadgroup`), each with its own session Ray when its
    tests need one. A group goes to one worker whole: the tests that read the shared finished search
    (made once), and otherwise a module (its fixtures made once). The Ray tests come first, so that the
    long ones start early and the short ones fill the end.
    """
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & SEARCH_FIXTURES:
            item.add_marker(pytest.mark.search)
        if used & (SEARCH_FIXTURES | RAY_FIXTURES):
            item.add_marker(pytest.mark.ray)
        item.add_marker(pytest.mark.xdist_group("finished-run" if "finished_run" in used else item.module.__name__))
    items.sort(key=lambda item: item.get_closest_marker("ray") is None)


def built_once(tmp_path_factory, what: str) -> None:
    """Fail if another pytest-xdist worker of this run has built `what` too: its group was split, so a
    session's search would run twice. (pytest 9.2 broke xdist's groups: pytest-xdist issue 1386.)"""
    if run := os.environ.get("PYTEST_XDIST_TESTRUNUID"):
        marker = tmp_path_factory.getbasetemp().parent / f"built-{what}-{run}"
        try:
            marker.touch(exist_ok=False)
        except FileExistsError:
            raise AssertionError(f"{what} is built by two pytest-xdist workers: its tests were not kept in one "
                                 "group (--dist loadgroup; pytest<9.2, pytest-xdist issue 1386)") from None


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with its dashboard, started once for the whole test session."""
    import ray

    from tbray.rayops import cluster

    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    context = cluster.start_local(num_cpus=2)  # its processes know its address, beside any other local Ray
    # Ray's processes keep that address; the CLI runs of this session must not inherit it, or a run
    # meant to start a Ray of its own would join this one.
    for key in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT"):
        os.environ.pop(key, None)
    yield context
    ray.shutdown()


@pytest.fixture(autouse=True)
def _release_abandoned_placement_groups(request):
    """After each test on the session's Ray, what its searches left holding resources is given back.

    Ray Train can leave a placement group behind when a trial is stopped while its controller starts a
    worker group; two such groups hold both CPUs of this machine and every later test waits until its
    timeout (CI ran past 90 minutes so). A search that joins a cluster releases them too, but not the
    in-process tests; the warning names the test after which it happened.
    """
    yield
    if "ray_session" in request.fixturenames:
        from tbray.rayops import placement

        if released := placement.release_abandoned():
            warnings.warn(f"released {released} placement group(s) that ended jobs left holding resources")


@pytest.fixture(scope="session")
def ray_address(ray_session) -> str:
    """Where CLI runs join the session's Ray (--address)."""
    return ray_session.address_info["gcs_address"]


@pytest.fixture(scope="session")
def dashboard_url(ray_session) -> str:
    return f"http://{ray_session.dashboard_url}"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """72 synthetic 64 px images (60 Normal, 12 TB): enough for a stratified 70/20/10 split."""
    from tbray.data import demo

    return demo.make(tmp_path_factory.mktemp("tiny") / "TB_Chest_Radiography_Database", n_images=72, size=64)


def _run_cli(*args, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python tune/search.py ARGS` as a user runs it; output captured."""
    return subprocess.run([sys.executable, str(REPO / "tune" / "search.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def _start_cli(*args, cwd: Path = REPO, env: dict | None = None) -> subprocess.Popen:
    """The search in the background, in its own process group, as a user's terminal would run it."""
    return subprocess.Popen([sys.executable, str(REPO / "tune" / "search.py"), *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def run_cli():
    """Runs a search as a user would and waits for it (tests that ask for it are marked search and ray)."""
    return _run_cli


@pytest.fixture(scope="session")
def start_cli():
    """Starts a search in the background as a user would (tests that ask for it are marked search and ray)."""
    return _start_cli


def write_bytes_named(folder: Path, name: bytes, content: bytes) -> None:
    """A file whose name is raw bytes (not UTF-8), as a camera, an old archive or a Windows share leaves."""
    fd = os.open(os.fsencode(folder) + b"/" + name, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, content)
    os.close(fd)


@dataclass(frozen=True)
class FinishedRun:
    """A finished search that tests read (never change: copy the folder first)."""

    folder: Path  # results/<name>
    data: Path  # its --data: tiny_data's 72 images plus one TB file named b"TB-\xff.png" (skipped)
    external: Path  # its --external other=: 48 images of another synthetic site
    console: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def finished_run(run_cli, ray_address, tiny_data, tmp_path_factory) -> FinishedRun:
    """One tiny two-trial search with an external set, shared by every test that reads a finished run."""
    from tbray.data import demo

    built_once(tmp_path_factory, "finished_run")

    tmp_path = tmp_path_factory.mktemp("finished")
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    write_bytes_named(data / "Tuberculosis", b"TB-\xff.png", (data / "Normal" / "Normal-1.png").read_bytes())
    other = demo.make(tmp_path / "other" / "TB_Chest_Radiography_Database", n_images=48, size=64, seed=3)
    done = run_cli("--data", data, "--results", tmp_path, "--name", "e2e", "--num-samples", "2",
                   "--external", f"other={other}", "--address", ray_address, *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    return FinishedRun(folder=tmp_path / "e2e", data=data, external=other, console=done)


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None):
    """Poll until `condition()` is truthy; fail with `what` (and the search's output) on timeout."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := condition():
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"search exited ({proc.returncode}) before {what}:\n{proc.stdout.read()[-3000:]}")
        time.sleep(1)
    if proc is None:
        raise AssertionError(f"timed out waiting for {what}")
    os.killpg(proc.pid, signal.SIGKILL)  # its output so far says where it was; a pipe can't be read while it runs
    raise AssertionError(f"timed out waiting for {what} after {timeout:.0f} s; the search said:\n"
                         f"{proc.communicate()[0][-3000:]}")


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory) -> Path:
    """A tbray model file (test_efficientnet, 32 px) as calibrate.py writes one: threshold and both records.

    The head is set so the scores spread over (0, 1) (logits of mean 0, std 2 on demo images): a fresh
    head gives P(TB) near 0.5 for every image, and scores that all agree could not show a difference.
    """
    import numpy as np
    import torch

    from tbray.data import demo
    from tbray.model import factory as tbmodel

    torch.manual_seed(0)
    net = tbmodel.create("test_efficientnet").eval()
    images = torch.from_numpy(np.stack([demo.render(i % 2, i, size=32) for i in range(16)]))
    with torch.no_grad():
        logits = net((images.unsqueeze(1).float() / 255 - 0.5) / 0.5).squeeze(1)
        head = net.get_classifier()
        scale = 2.0 / logits.std()
        head.weight.mul_(scale)
        head.bias.fill_(float(-scale * logits.mean()))
    source = {"kind": "validation split", "method": "best specificity", "target_sensitivity": 0.9, "n": 20,
              "n_tb": 10, "sensitivity": 0.9, "sensitivity_ci": [0.6, 0.98], "specificity": 0.8,
              "specificity_ci": [0.5, 0.9]}
    calibration = {"site_data": "/site", "site_data_sha256": "ab" * 32, "date": "2026-11-26", "n": 30, "n_tb": 12,
                   "threshold": 0.4375, "sensitivity": 0.917, "specificity": 0.611, "warning": None}
    path = tmp_path_factory.mktemp("model") / "site.pt"
    torch.save({"model": net.state_dict(), "model_name": "test_efficientnet", "image_size": 32, "mean": 0.5,
                "std": 0.5, "threshold": 0.4375, "threshold_source": source, "calibration": calibration}, path)
    return path


@pytest.fixture
def browser():
    """Headless Chromium (tests/chromium.py); skips, saying what is missing, where it is not installed."""
    import chromium

    driver = chromium.start()
    yield driver
    driver.quit()
