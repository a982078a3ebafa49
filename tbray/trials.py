"""What the search did: one row per trial (trials.csv), one per reported epoch, and the best checkpoint."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.fs
from ray.tune import ExperimentAnalysis

from tbray.config import SearchConfig

PARAMS = ["epochs", "batch_size", "image_size", "lr", "weight_decay"]
HISTORY = ["trial_id", "epoch", "train_loss", "val_loss", "val_accuracy", "val_auroc", "val_sensitivity",
           "val_specificity", "val_f1", "startup_s", "epoch_s", "checkpoint_path", "time_total_s", "node_id",
           "best_val_loss", "best_val_auroc", "best_val_f1", "best_val_accuracy", "best_val_sensitivity",
           "best_val_specificity"]  # best_<metric>: the trial's best epoch so far, as Optuna saw it
UNFINISHED = {"PENDING", "RUNNING", "PAUSED"}


def _status(trial, history: pd.DataFrame) -> str:
    """completed, stopped_early (ASHA), error, or Tune's own word for an unfinished trial."""
    if trial.status == "ERROR":
        return "error"
    if trial.status in UNFINISHED:
        return trial.status.lower()
    done = int(history["epoch"].max()) if len(history) else 0
    return "completed" if done >= trial.config["epochs"] else "stopped_early"


def _error(trial) -> str | None:
    """The last line of a trial's error: the exception's own message, not the traceback."""
    text = trial.get_error() or ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else (None if trial.status != "ERROR" else "unknown error")


def collect(grid, cfg: SearchConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """trials.csv rows and the per-epoch history, from Tune's own records of every trial."""
    rows, frames = [], []
    for t in grid._experiment_analysis.trials:
        h = grid._experiment_analysis.trial_dataframes.get(t.trial_id, pd.DataFrame())
        if len(h) and "epoch" in h:
            # A trial restarted by a resume reports from its checkpoint's epoch on; keep the last report of each.
            h = h.assign(trial_id=t.trial_id).drop_duplicates("epoch", keep="last").sort_values("epoch")
            frames.append(h[[c for c in HISTORY if c in h]])
        else:
            h = pd.DataFrame(columns=["epoch"])
        row = {"trial_id": t.trial_id, "status": _status(t, h), **{p: t.config.get(p) for p in PARAMS},
               "epochs_done": int(h["epoch"].max()) if len(h) else 0}
        if len(h):
            top = _ranked(h, cfg).iloc[0]
            row |= {f"best_{cfg.metric}": top[cfg.metric], "best_epoch": int(top["epoch"])}
            row |= {f"last_{k}": h.iloc[-1][k] for k in h if k.startswith("val_")}
            row["checkpoint_path"] = top.get("checkpoint_path")
        row["error"] = _error(t)
        rows.append(row)
    history = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=HISTORY)
    return pd.DataFrame(rows), history


def _ranked(history: pd.DataFrame, cfg: SearchConfig) -> pd.DataFrame:
    """Best first: the metric, then lower validation loss, then the earlier epoch."""
    return history.sort_values([cfg.metric, "val_loss", "epoch"], ascending=[cfg.mode == "min", True, True],
                               kind="stable")


def write(run_dir: Path, table: pd.DataFrame, history: pd.DataFrame) -> None:
    """trials.csv and history.csv in the run folder."""
    table.to_csv(run_dir / "trials.csv", index=False)
    history.to_csv(run_dir / "history.csv", index=False)


def interrupted(grid, cfg: SearchConfig) -> bool:
    """True when the search stopped before every trial ran (Ctrl-C, SIGTERM), so it can be resumed.

    A stop ends the running trials, so in memory they look finished; the experiment state Tune saved
    last keeps them unfinished, and that state is what a resume continues from.
    """
    trials = grid._experiment_analysis.trials
    if len(trials) < cfg.num_samples or any(t.status in UNFINISHED for t in trials):
        return True
    saved = ExperimentAnalysis(grid.experiment_path, storage_filesystem=grid.filesystem).trials
    return any(t.status in UNFINISHED for t in saved)


def checkpoint_exists(path: str, cfg: SearchConfig) -> bool:
    """Whether a reported checkpoint is still kept (Train deletes all but the best and the latest)."""
    if not isinstance(path, str) or not path:
        return False
    if cfg.storage and "://" in cfg.storage:
        fs, _ = pyarrow.fs.FileSystem.from_uri(cfg.storage)
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
    row = table.set_index("trial_id").loc[top["trial_id"]]
    params = {p: int(row[p]) if p in ("epochs", "batch_size", "image_size") else float(row[p]) for p in PARAMS}
    return {"trial_id": top["trial_id"], "epoch": int(top["epoch"]), "params": params,
            "checkpoint": top["checkpoint_path"], "metric": cfg.metric, "value": float(top[cfg.metric])}
