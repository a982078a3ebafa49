"""What the search did: one row per trial (trials.csv), one per reported epoch, and the best checkpoint."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import pyarrow.fs
from ray.tune import ExperimentAnalysis, Result, ResultGrid

from tbray.config import SearchConfig
from tbray.model import modelfile
from tbray.runs import runfolder

PARAMS = ["epochs", "batch_size", "image_size", "lr", "weight_decay"]
STEPS = ["preprocess", "crop"]  # chosen by Optuna only when searched (SearchSpace.param_space)
HISTORY = ["trial_id", "epoch", "train_loss", "val_loss", "val_accuracy", "val_auroc", "val_sensitivity",
           "val_specificity", "val_f1", "startup_s", "epoch_s", "checkpoint_path", "time_total_s", "node_id",
           "best_val_loss", "best_val_auroc", "best_val_f1", "best_val_accuracy", "best_val_sensitivity",
           "best_val_specificity", "data_path"]  # best_<metric>: the trial's best epoch so far, as Optuna saw it
UNFINISHED = {"PENDING", "RUNNING", "PAUSED"}  # Tune's words for a trial a resume must continue


def _trial_id(result: Result) -> str:
    """Tune's id of the trial: Tune sets it in every trial's last result, even one that never reported."""
    return (result.metrics or {}).get("trial_id") or Path(result.path).name


def _status(result: Result, history: pd.DataFrame) -> str:
    """completed, stopped_early (ASHA), error, or unfinished (pending or running when the search stopped).

    From the public Result only: an error; else a trial that reported its last epoch is complete (it
    ends by itself there, and Tune's `done` on that result is not kept across a resume); else Tune marks
    the last result of every trial it ended early, stopped by the scheduler, `done`; a trial without it
    had not ended.
    """
    if result.error is not None:
        return "error"
    reached = int(history["epoch"].max()) if len(history) else 0
    if reached >= (result.config or {}).get("epochs", 0) > 0:
        return "completed"
    return "stopped_early" if (result.metrics or {}).get("done") else "unfinished"


def _error(result: Result) -> str | None:
    """The last line of a trial's error: the exception's own message, not the traceback."""
    if result.error is None:
        return None
    lines = [line.strip() for line in str(result.error).splitlines() if line.strip()]
    return lines[-1][:500] if lines else type(result.error).__name__


def _history(result: Result, trial_id: str) -> pd.DataFrame:
    """The trial's reported epochs, one row each; empty (with an epoch column) before its first report."""
    h = result.metrics_dataframe
    if h is None or not len(h) or "epoch" not in h:
        return pd.DataFrame(columns=["epoch"])
    # A trial restarted by a resume reports from its checkpoint's epoch on; keep the last report of each,
    # with the checkpoint an earlier report of that epoch saved (a trial restored with no epoch left says its
    # last epoch again, without saving it again).
    if "checkpoint_path" in h:
        h = h.assign(checkpoint_path=h.groupby("epoch")["checkpoint_path"].transform(lambda s: s.ffill().bfill()))
    return h.assign(trial_id=trial_id).drop_duplicates("epoch", keep="last").sort_values("epoch")


def rebased(path, storage: str):
    """A reported checkpoint path, moved under this session's storage root (the search's, or an audit's).

    Ray records absolute paths (<root>/train/<run>/<checkpoint>); a run folder renamed or moved between
    sessions still holds the checkpoint, at the same last three parts under its new root.
    """
    if not isinstance(path, str) or not path:
        return path
    return "/".join([storage, *path.rstrip("/").split("/")[-3:]])


def collect(grid: ResultGrid, cfg: SearchConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """trials.csv rows and the per-epoch history, from the ResultGrid Tune returns (every trial, any state)."""
    rows, frames = [], []
    # <root>/tune holds the experiment and <root>/train its Train runs, wherever the folder is now; a
    # remote root comes as the filesystem's path (bucket/key), the form Ray records checkpoints in.
    root = grid.experiment_path.rstrip("/").rsplit("/", 1)[0]
    for result in grid:
        trial_id = _trial_id(result)
        h = _history(result, trial_id)
        if "checkpoint_path" in h:
            h["checkpoint_path"] = h["checkpoint_path"].map(lambda p: rebased(p, root))
        if len(h):
            frames.append(h[[c for c in HISTORY if c in h] + [c for c in h if c not in HISTORY and _by_source(c)]])
        config = result.config or {}
        row = {"trial_id": trial_id, "status": _status(result, h), **{p: config.get(p) for p in PARAMS},
               **{p: config[p] for p in STEPS if p in config},
               "epochs_done": int(h["epoch"].max()) if len(h) else 0}
        if len(h):
            top = _ranked(h, cfg).iloc[0]
            row |= {f"best_{cfg.objective}": top[cfg.objective], "best_epoch": int(top["epoch"])}
            row |= {f"last_{k}": h.iloc[-1][k] for k in h if k.startswith("val_")}
            row["checkpoint_path"] = top.get("checkpoint_path")
        paths = h["data_path"].dropna() if "data_path" in h else []
        row["data_path"] = paths.iloc[-1] if len(paths) else None  # resident on the device, or a DataLoader
        row["error"] = _error(result)
        rows.append(row)
    history = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=HISTORY)
    return pd.DataFrame(rows), history


def _ranked(history: pd.DataFrame, cfg: SearchConfig) -> pd.DataFrame:
    """Best first: the metric, then lower validation loss, then the earlier epoch."""
    tie = "val_loss" if "val_loss" in history else cfg.objective  # leave-source-out reports heldout_* only
    return history.sort_values([cfg.objective, tie, "epoch"], ascending=[cfg.mode == "min", True, True],
                               kind="stable")


def _by_source(column: str) -> bool:
    """A per-source figure (val_auroc/<source>) or one a selection rule ranks by (worst_*, heldout_*, best_*)."""
    return column.startswith(("worst_", "heldout_", "best_")) or (column.startswith("val_") and "/" in column)


def write(run_dir: Path, table: pd.DataFrame, history: pd.DataFrame) -> None:
    """trials.csv and history.csv in the run folder."""
    table.to_csv(run_dir / "trials.csv", index=False)
    history.to_csv(run_dir / "history.csv", index=False)


def data_paths(table: pd.DataFrame) -> str:
    """How the trials' training images travelled, for the console: '4 resident on the device, 1 DataLoader'."""
    counts = table["data_path"].value_counts() if "data_path" in table else {}
    words = {"resident": "resident on the device (copied once)", "loader": "through a DataLoader each epoch"}
    return ", ".join(f"{n} {words.get(path, path)}" for path, n in counts.items()) or "no trial reported one"


def interrupted(grid: ResultGrid, cfg: SearchConfig) -> bool:
    """True when the search stopped before every trial ran (Ctrl-C, SIGTERM), so it can be resumed.

    Either Optuna had not yet proposed every trial, or some trial Tune holds neither ended nor errored
    (the grid's public counts). A stop also ends the running trials, so in memory they can look
    finished; the experiment state Tune saved last keeps them unfinished, and a resume continues from it.
    """
    if len(grid) < cfg.num_samples or grid.num_terminated + grid.num_errors < len(grid):
        return True
    saved = ExperimentAnalysis(grid.experiment_path, storage_filesystem=grid.filesystem).trials
    return any(t.status in UNFINISHED for t in saved)


def checkpoint_exists(path: str, cfg: SearchConfig) -> bool:
    """Whether a reported checkpoint is still kept (Train deletes all but the best and the latest)."""
    if not isinstance(path, str) or not path:
        return False
    if (fs := runfolder.remote_filesystem(cfg)) is not None:
        return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound
    return Path(path).exists()


def best(table: pd.DataFrame, history: pd.DataFrame, cfg: SearchConfig) -> dict | None:
    """The best kept checkpoint over every trial and epoch; ties as in `_ranked`, then trial order."""
    if not len(history) or "checkpoint_path" not in history:
        return None
    kept = history[history["checkpoint_path"].map(lambda p: checkpoint_exists(p, cfg))]
    if not len(kept):
        return None
    top = _ranked(kept, cfg).iloc[0]
    params = chosen_params(table.set_index("trial_id").loc[top["trial_id"]])
    return {"trial_id": top["trial_id"], "epoch": int(top["epoch"]), "params": params,
            "checkpoint": top["checkpoint_path"], "metric": cfg.objective, "value": float(top[cfg.objective])}


def best_config(table: pd.DataFrame, history: pd.DataFrame, cfg: SearchConfig) -> dict | None:
    """Leave-source-out: the best configuration by its folds' mean (no checkpoint: it is trained again), with
    each left-out source's figures at that epoch."""
    if not len(history) or cfg.objective not in history:
        return None
    top = _ranked(history.dropna(subset=[cfg.objective]), cfg).iloc[0]
    params = chosen_params(table.set_index("trial_id").loc[top["trial_id"]])
    per_source = {c: float(top[c]) for c in history if _by_source(c) and "/" in c and pd.notna(top[c])}
    return {"trial_id": top["trial_id"], "epoch": int(top["epoch"]), "params": params, "metric": cfg.objective,
            "value": float(top[cfg.objective]), "left_out": per_source}


def chosen_params(row: pd.Series) -> dict:
    """What Optuna chose for one trial (a trials.csv row), typed as Tune's config held it."""
    params = {p: int(row[p]) if p in ("epochs", "batch_size", "image_size") else float(row[p]) for p in PARAMS}
    return params | {p: str(row[p]) for p in STEPS if p in row and pd.notna(row[p])}


def load_best(checkpoint: str, cfg: SearchConfig) -> dict:
    """The checkpoint's contents, from the run folder or from shared storage."""
    filesystem = runfolder.remote_filesystem(cfg)
    return modelfile.load_checkpoint(_local_copy(checkpoint, filesystem))


def _local_copy(path: str, filesystem) -> Path:
    """A local folder holding the checkpoint (downloaded once when it lives on S3/GCS)."""
    if filesystem is None:
        return Path(path)
    target = Path(tempfile.mkdtemp(prefix="tbray-best-"))
    pyarrow.fs.copy_files(path, str(target), source_filesystem=filesystem)
    return target


def write_refit(run_dir: Path, history: pd.DataFrame) -> None:
    """refit_history.csv: the epochs of leave-source-out's run of the chosen configuration on every source."""
    history.to_csv(run_dir / "refit_history.csv", index=False)
