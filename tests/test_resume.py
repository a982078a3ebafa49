"""What --resume continues: the search as it started (options that would change it are refused), and only
with the Optuna study its searcher was using (a missing or unreadable one: test_fault_tolerance.py's
killed-driver test, where it follows a real kill). All through the real command line on the session's Ray."""

from __future__ import annotations

import pickle
import shutil

from conftest import TINY


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
