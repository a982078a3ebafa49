"""Two searches on one machine: each with its own local Ray (no --address), as two people would start them.

Each search asks Ray's state API about its own cluster only; a third search that wants a run folder in use
is refused in one line. Kept light for small machines: one trial each, one CPU each.
"""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
from conftest import REPO, TINY
from test_fault_tolerance import wait_for

LIGHT = [*TINY, "--batch-sizes", "8", "--num-samples", "1", "--num-cpus", "1"]


def start(*args) -> subprocess.Popen:
    """A search in the background with its output captured."""
    return subprocess.Popen([sys.executable, str(REPO / "tune" / "search.py"), *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_local_searches_at_once_both_finish_and_a_busy_run_folder_is_refused(run_cli, tiny_data, tmp_path):
    first = start("--data", tiny_data, "--results", tmp_path, "--name", "first", *LIGHT)
    second = start("--data", tiny_data, "--results", tmp_path, "--name", "second", *LIGHT)
    try:
        # Once Tune writes its experiment, "first" holds its run folder; a resume of it must wait its turn.
        wait_for(lambda: (tmp_path / "first" / "tune").is_dir(), 400, "the first search's trials", first)
        busy = run_cli("--resume", "--name", "first", "--results", tmp_path, timeout=300)
        outputs = [proc.communicate(timeout=900)[0] for proc in (first, second)]
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.kill()
    assert busy.returncode == 2, busy.stderr[-3000:]
    assert busy.stderr.strip().splitlines() == [
        f"tbray: error: {tmp_path / 'first'}: another search is using this run folder now; wait for it to end or "
        f"pass another --name"]
    for proc, output, name in zip((first, second), outputs, ("first", "second")):
        assert proc.returncode == 0, output[-4000:]
        assert (tmp_path / name / "report.json").is_file()
        assert pd.read_csv(tmp_path / name / "trials.csv")["status"].tolist() == ["completed"]
