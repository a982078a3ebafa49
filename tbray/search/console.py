"""What a search prints: tbray's own lines, one Tune progress table a minute, the summary; the rest to files.

Left alone, a local search printed every Ray Train controller's and worker's log lines, a Tune status
table after each reported epoch, a configuration table per trial, and library INFO lines. Those logs are
kept, not dropped: Ray writes every process's output to its session's `logs/` folder, which `keep_ray_logs`
copies into the run folder (`ray-logs/`), and Tune keeps each trial's results and errors under `tune/`.
Errors still reach the console: Tune prints each trial error with the path of its error file.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import optuna
from ray import tune

from tbray.config import SearchConfig, objective
from tbray.runs.trials import PARAMS, STEPS

TABLE_EVERY_S = 60  # one progress table a minute: an epoch of the demo takes ~10 s, a real one minutes


def reporter(cfg: SearchConfig) -> tune.CLIReporter:
    """Tune's table of trials (parameters, epoch, metrics), at most once a TABLE_EVERY_S, best first.

    Tune's default output (its "new" engine) prints its table every 30 s with no setting to change
    that, plus a table per trial start and end; its classic reporter takes an interval, so the search
    asks for that one (RAY_AIR_NEW_OUTPUT=0 is the switch Tune documents for it).
    """
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    metric = f"best_{cfg.objective}"
    columns = {"epoch": "epoch", cfg.objective: cfg.objective, metric: metric}
    auroc = objective("val_auroc", cfg.selection or "pooled")  # as the selection rule measures it
    columns.setdefault(auroc, auroc)
    steps = [name for name in STEPS if getattr(cfg.space, name) != ("none",)]  # shown only when searched
    return tune.CLIReporter(metric_columns=columns, parameter_columns=PARAMS + steps, max_report_frequency=TABLE_EVERY_S,
                            print_intermediate_tables=True, sort_by_metric=True,  # by TuneConfig's metric
                            max_progress_rows=50)


def quiet_libraries() -> None:
    """Library INFO lines that repeat what the table shows or say nothing a user acts on.

    Optuna's ("A new study created", each trial's value) and Ray Tune's ("Wrote the latest version of all
    result files ..." after each table, the total run time that the last table shows too). Warnings and
    errors of both still print: a stop signal, an interrupted experiment, a trial's error file.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)


def keep_ray_logs(session_dir: str | None, run_dir: Path) -> Path | None:
    """Copy a local Ray session's logs (every worker's stdout and stderr, the raylet's) into run_dir/ray-logs.

    Copied rather than linked: Ray deletes old sessions from /tmp. None when there is nothing to copy: a
    joined cluster's logs stay on its nodes (`ray logs`, or the dashboard's Logs view).
    """
    if not session_dir or not (Path(session_dir) / "logs").is_dir():
        return None
    target = run_dir / "ray-logs"
    try:
        shutil.copytree(Path(session_dir) / "logs", target, dirs_exist_ok=True, symlinks=True,
                        ignore_dangling_symlinks=True)
    except (OSError, shutil.Error) as exc:  # a log rotated away mid-copy: keep what was copied
        print(f"tbray: some of Ray's logs were not copied to {target}: {str(exc)[:200]}")
    not_world_writable(target)
    return target


def not_world_writable(folder: Path) -> None:
    """Take group and other write permission off a folder and everything under it (Ray makes its log
    folders 777; copied into a run folder they would let any local user rewrite the run's record)."""
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        try:
            path.chmod(path.stat().st_mode & ~0o022)
        except OSError:
            pass
