"""Nothing lost: a search killed, interrupted or stopped resumes, a killed worker restarts from its
checkpoint, a failing trial is recorded while the others finish. All through the real command line on the session's local Ray."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import optuna
import pandas as pd
from conftest import TINY, wait_for
from test_resume import error_line

from tbray.model import modelfile

# How long a step of a search may take before the test calls it hung. `make test` runs two pytest workers on
# two cores, each with its own Ray: the whole test takes 215 s beside one other test, yet its final-evaluation
# step ran past 300 s in a full run (2026-12-04).
PATIENCE_S = 600


def finished_trials(run: Path) -> dict[str, dict]:
    """Tune's last result line of every trial that reported its final epoch."""
    done = {}
    for result in (run / "tune").glob("*/result.json"):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if lines and lines[-1].get("epoch") == lines[-1]["config"]["epochs"]:
            done[lines[-1]["trial_id"]] = lines[-1]
    return done


def optuna_states(run: Path) -> list[str]:
    """The states of the search's Optuna trials ('COMPLETE', ...), read while the search runs: read-only, since
    optuna.load_study would create the tables itself, racing the search that is creating them."""
    try:
        with closing(sqlite3.connect(f"file:{run / 'optuna.db'}?mode=ro", uri=True)) as db:
            return [state for (state,) in db.execute("SELECT state FROM trials")]
    except sqlite3.OperationalError:  # no file yet, or no trials table yet
        return []


def final_checkpoints(run: Path) -> dict[str, tuple[dict, Path]]:
    """Trials whose Train run has checkpointed its last epoch: the epoch's report (kept in the checkpoint) and
    the checkpoint file, by Tune trial id. Tune's own result.json is flushed too late to tell."""
    found = {}
    for folder in (run / "train").glob("train-*"):
        for model in folder.glob("checkpoint_*/model.pt"):
            saved = modelfile.load_checkpoint(model.parent)
            if saved["epoch"] == saved["params"]["epochs"]:
                found[folder.name.removeprefix("train-")] = (saved["row"], model)
    return found


def tune_saved_status(run: Path) -> dict[str, str]:
    """Each trial's status in the experiment state Tune saved last (what a resume starts from)."""
    saved = max((run / "tune").glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    trials = [json.loads(state) for state, _ in json.loads(saved.read_text())["trial_data"]]
    return {t["trial_id"]: t["status"] for t in trials}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_search_killed_interrupted_and_stopped_resumes_each_time_without_losing_finished_trials(
        run_cli, start_cli, ray_address, tiny_data, tmp_path):
    """One search of two trials, one at a time, stopped each way a search is stopped and resumed each time:
    `kill -9` of the driver at the worst moment; Ctrl-C while the second trial trains (130); SIGTERM, as a
    batch scheduler sends it, in the final evaluation of the printed resume, run from another folder (143);
    then the folder is renamed and resumes under its new name to the end. The finished trial is never
    retrained and nothing is counted twice. (One search for the three, as they share every step but the signal.)"""
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir()
    elsewhere.mkdir()
    # Paths as typed relative to where the search starts; the printed resume runs from another folder.
    args = ["--data", os.path.relpath(tiny_data, start), "--results", "results", "--name", "killed",
            "--address", ray_address, *TINY, "--epochs", "20", "--num-samples", "2", "--max-concurrent", "1"]
    run = start / "results" / "killed"
    # 1. The worst moment, on purpose: Optuna has recorded a trial's end, Tune's saved state still has it
    # running (Tune saves its state only at start-up under this period; by default every 10 s or more). The
    # resume used to restart it, get no result, and stop on a traceback with the study's trial RUNNING for good.
    proc = start_cli(*args, cwd=start, env={"TUNE_GLOBAL_CHECKPOINT_S": "3600"})
    wait_for(lambda: "COMPLETE" in optuna_states(run), PATIENCE_S, "a trial Optuna has recorded as COMPLETE", proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and anything it started, mid-search
    proc.wait()
    (trial_id, (before, checkpoint)), = final_checkpoints(run).items()
    assert tune_saved_status(run).get(trial_id) != "TERMINATED"  # the moment was the worst one
    checkpoint, checkpoint_sha = checkpoint.relative_to(run), sha(checkpoint)
    saved = json.loads((run / "search.json").read_text())
    assert [Path(p) for p in saved["data"].values()] == [Path(os.path.abspath(tiny_data))]  # one source, by folder
    assert Path(saved["results"]) == start / "results"

    # Without the Optuna study its searcher was using, the resume is refused, and leaves the folder as it was.
    backup = tmp_path / "optuna.db.backup"
    shutil.move(run / "optuna.db", backup)
    resume = ["--resume", "--name", "killed", "--results", start / "results", "--address", ray_address]
    missing = error_line(run_cli(*resume))
    assert "optuna.db is missing" in missing and "--name" in missing, missing
    assert not (run / "optuna.db").exists()  # no empty study left behind for the next try to trip on
    garbage = b"not a database\n" * 100
    (run / "optuna.db").write_bytes(garbage)
    corrupt = error_line(run_cli(*resume))
    assert "can't be read" in corrupt, corrupt
    assert (run / "optuna.db").read_bytes() == garbage  # the user's file untouched

    # 2. Put back from the backup, as the refusal says; repeating the original options with --resume works
    # too. Ctrl-C once the trial killed mid-run has checkpointed again under its new Train run.
    shutil.move(backup, run / "optuna.db")
    checkpoints = set(run.glob("train/*/checkpoint_*"))  # the finished trial may write its last one again
    proc = start_cli(*args, "--resume", cwd=start)
    wait_for(lambda: [c for c in set(run.glob("train/*/checkpoint_*")) - checkpoints
                      if c.parent.name != f"train-{trial_id}"],
             PATIENCE_S, "an epoch of the trial killed mid-run", proc)
    proc.send_signal(signal.SIGINT)  # Ctrl-C in training
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, output[-3000:]
    assert "resuming with" not in output  # nothing differed, so nothing to say
    assert "Aborted" not in output and (run / "trials.csv").is_file(), output[-3000:]
    command = shlex.split(output.split("continue with: ")[-1].splitlines()[0])
    assert command[0] == "python" and Path(command[1]).is_absolute(), command

    # 3. The printed resume, from another folder, stopped in the final evaluation: trials.csv is rewritten just
    # before it begins. (Tune used to leave its own SIGINT handler behind, which SIGTERM is handed to, and
    # the signal was ignored there: the search went on and exited 0, 24 s later.)
    written = (run / "trials.csv").stat().st_mtime_ns
    proc = subprocess.Popen([sys.executable, *command[1:]], cwd=elsewhere, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    wait_for(lambda: (run / "trials.csv").stat().st_mtime_ns != written, PATIENCE_S, "the final evaluation", proc)
    proc.send_signal(signal.SIGTERM)  # what kill, a batch scheduler or systemd sends to the driver
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 143, output[-3000:]
    assert "SIGTERM received" not in output and "Aborted" not in output, output[-3000:]
    assert "--resume --name killed" in output and not (run / "report.json").exists(), output[-3000:]
    assert not list(run.glob(".*.tmp")), list(run.glob(".*.tmp"))  # no half-written file left behind

    # 4. The user renames the stopped run's folder; it resumes by its new name, where it now is, to the end.
    renamed = run.with_name("renamed")
    run.rename(renamed)
    resumed = run_cli("--resume", "--name", "renamed", "--results", start / "results", "--address", ray_address)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert not run.exists() and not list(elsewhere.iterdir())  # nothing written relative to the folder it ran in
    assert (renamed / "report.json").is_file()
    trials = pd.read_csv(renamed / "trials.csv", dtype={"trial_id": str}).set_index("trial_id")
    assert len(trials) == 2 and (trials["status"] == "completed").all(), trials
    assert trials.loc[trial_id, "last_val_auroc"] == before["val_auroc"]  # its results kept as they were
    assert trials.loc[trial_id, "epochs_done"] == before["epoch"]
    # The first resume restarted the finished trial's Train run under its name, with no epoch left: it reported
    # its last epoch again from the checkpoint (Tune ends a search on a trial that reports nothing) and ended.
    assert sha(renamed / checkpoint) == checkpoint_sha  # the finished trial was not retrained
    history = pd.read_csv(renamed / "history.csv", dtype={"trial_id": str})
    assert not history.duplicated(["trial_id", "epoch"]).any()

    study = optuna.load_study(study_name=None, storage=f"sqlite:///{renamed / 'optuna.db'}")
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    # A trial stopped mid-run was restarted under a new Optuna trial; the old one is FAIL, not RUNNING forever.
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states, states
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2, states
    orphans = study.user_attrs.get("tbray_orphaned_trials", {"numbers": []})["numbers"]
    assert states.count(optuna.trial.TrialState.FAIL) == len(orphans)

    again = run_cli("--resume", "--name", "renamed", "--results", start / "results", "--address", ray_address)
    assert again.returncode == 0 and "already finished" in again.stdout


def test_a_killed_worker_restarts_from_its_checkpoint_while_a_failing_trial_is_recorded(start_cli, ray_address,
                                                                                        tiny_data, tmp_path):
    """One search of two trials (test hooks, read by the worker): batch size 8 raises in its first epoch, each
    time it is tried; batch size 16 trains 4 epochs, and its worker is killed once it has reported epoch 2's
    checkpoint. The failing trial is recorded with its error while the search goes on; the other restarts
    from its checkpoint and finishes."""
    held = tmp_path / "worker.pid"
    # The worker waits after epoch 2's checkpoint, so the kill lands there every time. Found by polling, it
    # once landed after the trial had ended, three times in all.
    proc = start_cli("--data", tiny_data, "--results", tmp_path, "--name", "faults", "--address", ray_address,
                     *TINY, "--epochs", "4", "--batch-sizes", "8,16", "--num-samples", "2", "--seed", "1",
                     "--max-failures", "1", env={"TBRAY_FAIL_AT": "1:8", "TBRAY_HOLD_AFTER": f"2:{held}"})

    def recorded_by_tune() -> bool:  # Tune has the held epoch, so the kill can't lose it on the way
        if not held.exists():
            return False
        epoch = int(held.read_text().split()[1])
        return any(json.loads(line)["epoch"] == epoch for result in (tmp_path / "faults" / "tune")
                   .glob("*/result.json") for line in result.read_text().splitlines() if line)

    wait_for(recorded_by_tune, PATIENCE_S, "a worker holding after epoch 2's checkpoint", proc)
    os.kill(int(held.read_text().split()[0]), signal.SIGKILL)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]

    trials = pd.read_csv(tmp_path / "faults" / "trials.csv", dtype={"trial_id": str})
    failing, healthy = trials[trials["batch_size"] == 8], trials[trials["batch_size"] == 16]
    assert len(failing) == 1 and len(healthy) == 1, "seed 1 should sample both batch sizes; pick another seed"
    assert failing["status"].tolist() == ["error"] and failing["error"].str.contains("injected failure").all()
    assert "errored" in output.lower() or "error" in (tmp_path / "faults" / "report.md").read_text().lower()
    assert healthy["status"].tolist() == ["completed"]
    history = pd.read_csv(tmp_path / "faults" / "history.csv", dtype={"trial_id": str})
    history = history[history["trial_id"] == healthy["trial_id"].iloc[0]]
    assert history["epoch"].tolist() == [1, 2, 3, 4]  # no gap, no repeat after the restart
    # The restarted worker reported its own start-up from the epoch it resumed at.
    held_at = int(held.read_text().split()[1])
    before, after = history[history["epoch"] <= held_at], history[history["epoch"] > held_at]
    assert len(after), f"held at epoch {held_at}, the last: nothing was left to restart"
    assert before["startup_s"].nunique() == 1 and after["startup_s"].nunique() == 1, history["startup_s"].tolist()
    assert set(before["startup_s"]).isdisjoint(after["startup_s"])


def test_every_trial_failing_exits_nonzero_with_first_error(run_cli, ray_address, tiny_data, tmp_path):
    done = run_cli("--data", tiny_data, "--results", tmp_path, "--name", "allfail", "--address", ray_address,
                   *TINY, "--batch-sizes", "8", "--num-samples", "1", "--max-failures", "0",
                   env={"TBRAY_FAIL_AT": "1:8"})
    assert done.returncode == 1
    assert "every trial failed" in done.stderr and "injected failure" in done.stderr
    assert "Traceback" not in done.stderr.splitlines()[-1]
