"""What --resume continues: the search as it started (options that would change it are refused), and only
with the Optuna study its searcher was using. All through the real command line on the session's Ray."""

from __future__ import annotations

import pickle
import shutil
import signal

import pandas as pd
from conftest import TINY, wait_for


def error_line(done, before_ray: bool = True) -> str:
    """The line a refusal ends with; before Ray starts (and logs), the only line, with no traceback."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and lines[-1].startswith("tbray: error: "), done.stderr[-3000:]
    assert len(lines) == 1 or not before_ray, done.stderr[-3000:]
    return lines[-1]


def test_resume_refuses_options_and_data_that_change_the_search(run_cli, ray_address, tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    # A run folder with its options written, stopped before its first trial: a trial asks for a GPU the
    # cluster never has, which ends the search at once (a trial waiting forever would hit the timeout).
    first = run_cli("--data", data, "--results", tmp_path, "--name", "opts", "--address", ray_address,
                    *TINY, "--gpus-per-trial", "1", timeout=120)
    assert first.returncode == 2 and (tmp_path / "opts" / "search.json").is_file()
    assert error_line(first, before_ray=False).startswith("tbray: error: a trial asks for 1 GPU(s)")
    assert "Traceback" not in first.stderr
    resume = ["--resume", "--name", "opts", "--results", tmp_path, "--address", ray_address]
    # Both typed with argparse's default values: typed, so compared with what the search started with.
    changed = run_cli(*resume, "--epochs", "10,20,30", "--model", "tf_efficientnet_lite0", "--seed", "0")
    line = error_line(changed)
    assert "--epochs" in line and "--model" in line and "--seed" not in line, line
    # Options about how trials run are kept as saved, and said so; this one then stops for want of a GPU.
    kept = run_cli(*resume, "--max-failures", "5", "--model", "test_efficientnet")
    assert "--max-failures ignored" in kept.stdout and "--model" not in kept.stdout, kept.stdout[-2000:]
    assert "GPU" in error_line(kept, before_ray=False)
    # Data changed since the split was made: refused by name (the study check comes first, so it stays last).
    victim = next((data / "Tuberculosis").glob("*.png"))
    original = victim.read_bytes()
    victim.write_bytes((data / "Normal" / "Normal-1.png").read_bytes())  # same name, other picture
    changed = run_cli(*resume)
    assert changed.returncode == 2
    assert "changed since the split was made" in changed.stderr and victim.name in changed.stderr
    victim.write_bytes(original)
    # No trial has run, so there is no Tune state to check the study against; a corrupt one is still refused.
    (tmp_path / "opts" / "optuna.db").write_bytes(b"not a database\n" * 100)
    corrupt = error_line(run_cli(*resume))
    assert "optuna.db can't be read" in corrupt and "no trial has run yet" in corrupt, corrupt


def test_resume_without_its_optuna_study_is_refused_and_leaves_the_folder_as_it_was(run_cli, start_cli, ray_address, tiny_data,
                                                                                      tmp_path):
    args = ["--data", tiny_data, "--results", tmp_path, "--name", "study", "--address", ray_address, *TINY]
    proc = start_cli(*args, "--num-samples", "2", "--max-concurrent", "1")
    run = tmp_path / "study"
    wait_for(lambda: list((run / "train").glob("*/checkpoint_*")), 300, "a first epoch", proc)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, output[-3000:]
    assert "--resume --name study" in output  # the hint, printed before the second trial existed
    backup = tmp_path / "optuna.db.backup"
    shutil.move(run / "optuna.db", backup)
    resume = ["--resume", "--name", "study", "--results", tmp_path, "--address", ray_address]

    missing = error_line(run_cli(*resume))
    assert "optuna.db is missing" in missing and "--name" in missing, missing
    assert not (run / "optuna.db").exists()  # no empty study left behind for the next try to trip on

    garbage = b"not a database\n" * 100
    (run / "optuna.db").write_bytes(garbage)
    corrupt = error_line(run_cli(*resume))
    assert "can't be read" in corrupt, corrupt
    assert (run / "optuna.db").read_bytes() == garbage  # the user's file untouched

    # Put back from the backup, as the refusal says; repeating the original options with --resume works too.
    shutil.move(backup, run / "optuna.db")
    resumed = run_cli(*args, "--num-samples", "2", "--max-concurrent", "1", "--resume")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "resuming with" not in resumed.stdout  # nothing differed, so nothing to say
    assert (pd.read_csv(run / "trials.csv")["status"] != "error").sum() == 2
    assert (run / "report.json").is_file()


def test_tune_state_saved_under_the_older_module_paths_unpickles():
    """A search interrupted before tbray's subpackages saved its searcher and callbacks under the flat
    module names (tbray.study, tbray.placement); its resume must still unpickle them."""
    from tbray.rayops import placement
    from tbray.search import run
    from tbray.search.study import LabelledOptunaSearch, RunFolderStorage

    run.accept_older_state()
    assert pickle.loads(b"ctbray.study\nRunFolderStorage\n.") is RunFolderStorage
    assert pickle.loads(b"ctbray.study\nLabelledOptunaSearch\n.") is LabelledOptunaSearch
    assert pickle.loads(b"ctbray.placement\nReleaseUnused\n.") is placement.ReleaseUnused
