"""Nothing lost: a killed driver resumes, a killed worker restarts from its checkpoint, a failing trial
is recorded while the others finish. All through the real command line on the session's local Ray."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
from conftest import TINY, wait_for
from ray.util.state import list_actors, list_jobs


def finished_trials(run: Path) -> dict[str, dict]:
    """Tune's last result line of every trial that reported its final epoch."""
    done = {}
    for result in (run / "tune").glob("*/result.json"):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if lines and lines[-1].get("epoch") == lines[-1]["config"]["epochs"]:
            done[lines[-1]["trial_id"]] = lines[-1]
    return done


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_killed_driver_resumes_without_losing_finished_trials(run_cli, start_cli, ray_address, tiny_data, tmp_path):
    args = ["--data", tiny_data, "--results", tmp_path, "--name", "killed", "--address", ray_address, *TINY]
    proc = start_cli(*args, "--num-samples", "3", "--max-concurrent", "1")
    done = wait_for(lambda: finished_trials(tmp_path / "killed"), 300, "a finished trial", proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and anything it started, mid-search
    proc.wait()
    trial_id, before = next(iter(done.items()))
    checkpoint = Path(before["checkpoint_path"]) / "model.pt"
    checkpoint_sha = sha(checkpoint)

    resumed = run_cli("--resume", "--name", "killed", "--results", tmp_path, "--address", ray_address)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    run = tmp_path / "killed"
    assert (run / "report.json").is_file()
    trials = pd.read_csv(run / "trials.csv").set_index("trial_id")
    assert len(trials) == 3
    assert trials.loc[trial_id, "last_val_auroc"] == before["val_auroc"]  # its results kept as they were
    assert trials.loc[trial_id, "epochs_done"] == before["epoch"]
    assert sha(checkpoint) == checkpoint_sha  # the finished trial was not retrained
    history = pd.read_csv(run / "history.csv")
    assert not history.duplicated(["trial_id", "epoch"]).any()

    study = optuna.load_study(study_name="tbray", storage=f"sqlite:///{run / 'optuna.db'}")
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    # The trial killed mid-run was restarted under a new Optuna trial; the old one is FAIL, not RUNNING forever.
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states, states
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3, states
    orphans = study.user_attrs.get("tbray_orphaned_trials", {"numbers": []})["numbers"]
    assert states.count(optuna.trial.TrialState.FAIL) == len(orphans)

    again = run_cli("--resume", "--name", "killed", "--results", tmp_path, "--address", ray_address)
    assert again.returncode == 0 and "already finished" in again.stdout


def test_killed_worker_restarts_from_checkpoint(start_cli, ray_address, tiny_data, tmp_path):
    args = ["--data", tiny_data, "--results", tmp_path, "--name", "worker", "--address", ray_address, *TINY]
    # 10 epochs: a 4-epoch trial of the tiny data once ended before a poll found its worker after a checkpoint.
    proc = start_cli(*args, "--epochs", "10", "--num-samples", "1", "--max-failures", "2")

    def worker_after_first_epoch():
        reported = list((tmp_path / "worker" / "train").glob("*/checkpoint_*"))
        # This search's own worker: the shared Ray may still hold a worker of an earlier test's killed search.
        jobs = [j.job_id for j in list_jobs(address=ray_address)
                if j.driver_info is not None and int(j.driver_info.pid) == proc.pid]
        # This session's Ray by address: with another local Ray on the machine, none would be ambiguous.
        alive = list_actors(address=ray_address, filters=[("class_name", "=", "RayTrainWorker"),
                                                          ("state", "=", "ALIVE")])
        alive = [a for a in alive if a.job_id in jobs]
        return alive[0] if reported and alive else None

    worker = wait_for(worker_after_first_epoch, 300, "a worker that has reported an epoch", proc)
    os.kill(worker.pid, signal.SIGKILL)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    history = pd.read_csv(tmp_path / "worker" / "history.csv")
    assert history["epoch"].tolist() == list(range(1, 11))  # no gap, no repeat after the restart
    # The kill landed mid-trial: the restarted worker reported its own start-up from the epoch it resumed at.
    assert history["startup_s"].nunique() == 2, history["startup_s"].tolist()
    assert pd.read_csv(tmp_path / "worker" / "trials.csv")["status"].tolist() == ["completed"]


def test_failing_trial_is_recorded_and_search_goes_on(run_cli, ray_address, tiny_data, tmp_path):
    done = run_cli("--data", tiny_data, "--results", tmp_path, "--name", "fail", "--address", ray_address,
                   *TINY, "--batch-sizes", "8,16", "--num-samples", "4", "--max-failures", "0",
                   env={"TBRAY_FAIL_AT": "1:8"})
    assert done.returncode == 0, done.stderr[-3000:]
    trials = pd.read_csv(tmp_path / "fail" / "trials.csv")
    failing, healthy = trials[trials["batch_size"] == 8], trials[trials["batch_size"] == 16]
    assert len(failing) and len(healthy), "seed 0 should sample both batch sizes; pick another seed"
    assert (failing["status"] == "error").all()
    assert failing["error"].str.contains("injected failure").all()
    assert (healthy["status"] != "error").all()
    assert "errored" in done.stdout.lower() or "error" in (tmp_path / "fail" / "report.md").read_text().lower()


def test_every_trial_failing_exits_nonzero_with_first_error(run_cli, ray_address, tiny_data, tmp_path):
    done = run_cli("--data", tiny_data, "--results", tmp_path, "--name", "allfail", "--address", ray_address,
                   *TINY, "--batch-sizes", "8", "--num-samples", "1", "--max-failures", "0",
                   env={"TBRAY_FAIL_AT": "1:8"})
    assert done.returncode == 1
    assert "every trial failed" in done.stderr and "injected failure" in done.stderr
    assert "Traceback" not in done.stderr.splitlines()[-1]


# While every trial runs: Tune then ends them as if they had finished, so only its saved state tells. (Ctrl-C
# before the second trial exists is test_resume.py's study test, which stops a two-trial search so.)
def test_ctrl_c_stops_cleanly_and_resume_finishes(run_cli, start_cli, ray_address, tiny_data, tmp_path):
    args = ["--data", tiny_data, "--results", tmp_path, "--name", "ctrlc", "--address", ray_address, *TINY]
    proc = start_cli(*args, "--epochs", "20", "--num-samples", "1")
    wait_for(lambda: list((tmp_path / "ctrlc" / "train").glob("*/checkpoint_*")), 300, "a first epoch", proc)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, output[-3000:]
    assert "--resume --name ctrlc" in output
    # The user renames the stopped run's folder; it resumes by its new name, where it now is.
    (tmp_path / "ctrlc").rename(tmp_path / "renamed")
    resumed = run_cli("--resume", "--name", "renamed", "--results", tmp_path, "--address", ray_address)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (pd.read_csv(tmp_path / "renamed" / "trials.csv")["status"] != "error").sum() == 1
    assert (tmp_path / "renamed" / "report.json").is_file() and not (tmp_path / "ctrlc").exists()


def test_sigterm_in_training_and_in_the_final_evaluation_stops_cleanly_and_resumes_from_elsewhere(start_cli, ray_address, tiny_data, tmp_path):
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir()
    elsewhere.mkdir()
    # Paths as typed relative to where the search starts; the resume runs from another folder.
    proc = start_cli("--data", os.path.relpath(tiny_data, start), "--results", "results", "--name", "term",
                     "--address", ray_address, *TINY, "--epochs", "20", "--num-samples", "1", cwd=start)
    run = start / "results" / "term"
    wait_for(lambda: list((run / "train").glob("*/checkpoint_*")), 300, "a first epoch", proc)
    # Every trial exists and runs (one of one): Tune ends it as if finished, so only the signal tells.
    proc.send_signal(signal.SIGTERM)  # what kill, a batch scheduler or systemd sends to the driver
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 143, output[-3000:]
    assert "SIGTERM received" not in output and "Aborted" not in output, output[-3000:]
    assert (run / "trials.csv").is_file()
    saved = json.loads((run / "search.json").read_text())
    assert [Path(p) for p in saved["data"].values()] == [Path(os.path.abspath(tiny_data))]  # one source, by folder
    assert Path(saved["results"]) == start / "results"

    command = shlex.split(output.split("continue with: ")[-1].splitlines()[0])
    assert command[0] == "python" and Path(command[1]).is_absolute(), command

    # The resume stopped again, in the final evaluation: trials.csv is rewritten just before it begins.
    # (Tune used to leave its own SIGINT handler behind, and this SIGTERM was ignored: exit 0, 24 s later.)
    written = (run / "trials.csv").stat().st_mtime_ns
    proc = subprocess.Popen([sys.executable, *command[1:]], cwd=elsewhere, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    wait_for(lambda: (run / "trials.csv").stat().st_mtime_ns != written, 300, "the final evaluation", proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 143, output[-3000:]
    assert "continue with: " in output and not (run / "report.json").exists(), output[-3000:]
    assert not list(run.glob(".*.tmp")), list(run.glob(".*.tmp"))  # no half-written file left behind

    resumed = subprocess.run([sys.executable, *command[1:]], cwd=elsewhere, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert pd.read_csv(run / "trials.csv")["status"].tolist() == ["completed"] and (run / "report.json").is_file()
    assert not list(elsewhere.iterdir())  # nothing written relative to the folder the resume ran in
