"""Open one run's viewers on this machine: MLflow's UI, optuna-dashboard and TensorBoard.

    python tune/ui.py results/<name>        (or: make ui NAME=<name>)

Each runs as its own process, bound to 127.0.0.1 only: none of them has a login, so none may face a
network (on a cluster head, reach them through `ssh -L`). Their addresses are printed once all three
answer; Ctrl-C (or SIGTERM) stops all three. A port in use is replaced by a free one. MLflow's
address opens the run's experiment in its "Machine learning" view: MLflow 3's UI starts in its GenAI
view whatever the experiment's tags say, unless the address asks (`workflowType`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tbray.commands import exits
from tbray.errors import UserError

HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0  # MLflow's server migrates its SQLite schema on first start (~10 s on 2 cores)
STOP_TIMEOUT_S = 15.0  # for all three to end on SIGTERM before they are killed


@dataclass(frozen=True)
class Viewer:
    """One viewer: what it shows, its preferred port, and how to start it on a port."""

    name: str
    port: int  # its usual port; a free one is used when taken
    needs: str  # the file or folder in the run folder it reads

    def command(self, run: Path, port: int) -> list[str]:
        tools = Path(sys.executable).parent  # the same environment as this tbray, so client and server agree
        if self.name == "MLflow":
            return [str(tools / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{run / 'mlflow.db'}",
                    "--host", HOST, "--port", str(port), "--workers", "1"]
        if self.name == "optuna-dashboard":
            return [str(tools / "optuna-dashboard"), f"sqlite:///{run / 'optuna.db'}", "--host", HOST,
                    "--port", str(port)]
        return [str(tools / "tensorboard"), "--logdir", str(run / "tune"), "--host", HOST, "--port", str(port)]


@dataclass
class Running:
    """A started viewer: where it answers, its process, and the file its messages go to."""

    viewer: Viewer
    url: str
    proc: subprocess.Popen
    log: object  # a temporary file, read only if it fails (a pipe could fill and stall it)


VIEWERS = (Viewer("MLflow", 5000, "mlflow.db"), Viewer("optuna-dashboard", 8080, "optuna.db"),
           Viewer("TensorBoard", 6006, "tune"))


def free_port(preferred: int) -> int:
    """`preferred` if nothing listens there, else one the OS picks."""
    with socket.socket() as probe:
        try:
            probe.bind((HOST, preferred))
            return preferred
        except OSError:
            probe.bind((HOST, 0))
            return probe.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:  # a server that answers, even with an error page, is up
        return True
    except OSError:
        return False


def mlflow_page(url: str, run: Path) -> str:
    """The run's experiment in MLflow's classic-ML view, asked of the server's REST API; `url` if it has none."""
    query = urllib.parse.urlencode({"experiment_name": run.name})
    try:
        with urllib.request.urlopen(f"{url}api/2.0/mlflow/experiments/get-by-name?{query}", timeout=10) as answer:
            experiment_id = json.load(answer)["experiment"]["experiment_id"]
    except (OSError, ValueError, KeyError):  # a search that logged under another name: the home page will do
        return f"{url}#/experiments?workflowType=machine_learning"
    return f"{url}#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def start(run: Path) -> list[Running]:
    """All three viewers of `run`, each answering on its URL; any that ends early is said in one line."""
    for viewer in VIEWERS:  # every check before any start, so a refusal leaves nothing running
        if not (run / viewer.needs).exists():
            raise UserError(f"{run / viewer.needs}: not there, so {viewer.name} has nothing to show (is {run} a "
                            "run folder that a search has written?)")
        if not Path(viewer.command(run, 0)[0]).is_file():
            raise UserError(f"{viewer.name} is not installed in {Path(sys.executable).parent.parent}: "
                            "pip install -e . (it is one of tbray's dependencies)")
    started = []
    for viewer in VIEWERS:
        port = free_port(viewer.port)
        log = tempfile.TemporaryFile("w+")
        proc = subprocess.Popen(viewer.command(run, port), stdout=log, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        started.append(Running(viewer, f"http://{HOST}:{port}/", proc, log))
    deadline = time.time() + START_TIMEOUT_S
    try:
        for running in started:
            while not answers(running.url):
                if running.proc.poll() is not None or time.time() > deadline:
                    raise UserError(f"{running.viewer.name} did not start on {running.url}: {last_line(running)}")
                time.sleep(0.5)
    except BaseException:  # a failure, Ctrl-C or SIGTERM while they start: none is left running
        stop(started)
        raise
    return started


def last_line(running: Running) -> str:
    """The last thing a viewer said (its error, when it ended), or why there is nothing."""
    if running.proc.poll() is None:
        return f"no answer within {START_TIMEOUT_S:.0f} s"
    running.log.seek(0)
    lines = [line.strip() for line in running.log.read().splitlines() if line.strip()]
    return lines[-1] if lines else f"it exited with {running.proc.returncode}"


def stop(started: list[Running]) -> None:
    """SIGTERM to each viewer's process group, then SIGKILL to any group still there after STOP_TIMEOUT_S,
    counted once for all three, so Ctrl-C returns within it. Groups, not leaders: MLflow's server runs uvicorn,
    a job runner and seven huey consumers, and TensorBoard a data server (seen with psutil, 2026-12-04)."""
    signal_groups(started, signal.SIGTERM)
    deadline = time.time() + STOP_TIMEOUT_S
    for running in started:
        try:
            running.proc.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pass
    signal_groups(started, signal.SIGKILL)  # what outlived SIGTERM, the workers of a leader gone included
    for running in started:
        running.proc.wait()
        running.log.close()


def signal_groups(started: list[Running], signum: int) -> None:
    for running in started:
        try:
            os.killpg(running.proc.pid, signum)  # each started as a session leader: its group is its pid
        except ProcessLookupError:  # that group has ended
            pass


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tune/ui.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a run folder (results/<name>)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        run = args.run.resolve()
        if not run.is_dir():
            raise UserError(f"{args.run}: no such run folder (a search writes results/<name>)")
        started = start(run)
        try:
            for running in started:
                page = mlflow_page(running.url, run) if running.viewer.name == "MLflow" else running.url
                print(f"tbray: {running.viewer.name:<17} {page}", flush=True)
            print("tbray: Ctrl-C stops them", flush=True)
            while all(running.proc.poll() is None for running in started):
                time.sleep(1)
            ended = next(r.viewer.name for r in started if r.proc.poll() is not None)
            raise UserError(f"{ended} stopped by itself; the others are stopped too")
        finally:
            stop(started)

    return exits.run(body)
