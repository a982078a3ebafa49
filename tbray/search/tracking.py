"""MLflow: each search one experiment (named after the run), each trial one run, a parent run with the result.

Logged with MLflow's client from the driver once every trial has ended, from the same tables as
trials.csv and history.csv. So no trial ever waits on a tracking server; a resumed search still gets
exactly one run per trial (Ray's MLflowLoggerCallback keeps its trial-to-run map outside Tune's saved
state, so a resume would open a second run for every trial it restarts); and MLflow's numbers agree
with trials.csv by construction. Live curves during a search are in the Ray dashboard and TensorBoard.

The default store is SQLite in the run folder (`mlflow.db`, artifacts under `mlruns/`): MLflow 3
refuses its old plain-folder store unless MLFLOW_ALLOW_FILE_STORE is set, as it is in maintenance mode.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import pandas as pd

from tbray.config import SearchConfig
from tbray.errors import UserError
from tbray.runs import runfolder

PARAMS = ["epochs", "batch_size", "image_size", "lr", "weight_decay", "preprocess", "crop"]  # what Optuna chose (trials.PARAMS, STEPS)
NOT_METRICS = {"trial_id", "epoch", "checkpoint_path", "node_id"}  # history columns that are no measurements
_starting: dict[str, Future] = {}  # the run folder's new SQLite store, being made while the search runs
ARTIFACTS = ["report.md", "report.json", "model_card.md", "trials.csv", "history.csv", "classification_report.txt"]


def uri(cfg: SearchConfig) -> str:
    """--mlflow-uri, else SQLite in the run folder (`mlflow ui --backend-store-uri` takes the same string)."""
    return cfg.mlflow_uri or f"sqlite:///{runfolder.path(cfg).resolve() / 'mlflow.db'}"


@contextmanager
def _quiet():
    """MLflow announces its database migrations and new experiments at INFO on the console; keep its warnings."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _client(cfg: SearchConfig):
    from mlflow.tracking import MlflowClient  # only the driver imports MLflow, and only when it logs

    return MlflowClient(tracking_uri=uri(cfg))


def experiment(cfg: SearchConfig) -> str:
    """The search's experiment id, made if new; checked before any trial, so a wrong --mlflow-uri costs nothing."""
    from mlflow.exceptions import MlflowException

    try:
        with _quiet():
            client = _client(cfg)
            found = client.get_experiment_by_name(cfg.name)
            if found is not None:
                return found.experiment_id
            # Artifacts beside the store in the run folder; a server keeps its own artifact location.
            local = (runfolder.path(cfg).resolve() / "mlruns").as_uri() if cfg.mlflow_uri is None else None
            return client.create_experiment(cfg.name, artifact_location=local)
    except (MlflowException, OSError) as exc:
        raise UserError(f"--mlflow-uri {uri(cfg)}: cannot use this MLflow tracking store ({str(exc).splitlines()[0]})")


def start(cfg: SearchConfig) -> None:
    """Before any trial: a tracking server is checked now, so a wrong --mlflow-uri costs nothing; the run
    folder's own SQLite store is made in a background thread, as creating MLflow's schema takes ~7 s here."""
    if cfg.mlflow_uri:
        experiment(cfg)
    else:
        _starting[uri(cfg)] = ThreadPoolExecutor(1, thread_name_prefix="tbray-mlflow").submit(experiment, cfg)


def _flat(prefix: str, value) -> dict[str, float]:
    """Numeric leaves of a nested report as MLflow metric names: test_auroc, test_auroc_ci_low, ..."""
    if isinstance(value, bool):
        return {prefix: float(value)}
    if isinstance(value, (int, float)):
        return {prefix: float(value)} if math.isfinite(value) else {}
    if isinstance(value, dict):  # {"value": v, "ci_low": ...} under "auroc" gives test_auroc, test_auroc_ci_low
        return {k: v for key, item in value.items()
                for k, v in _flat(prefix if key == "value" else f"{prefix}_{key}", item).items()}
    if isinstance(value, (list, tuple)) and len(value) == 2:  # [low, high] intervals
        return {**_flat(f"{prefix}_low", value[0]), **_flat(f"{prefix}_high", value[1])}
    return {}


def _log(client, run_id: str, params: dict, metrics: list) -> None:
    """Params and metrics in batches (the server takes at most 100 params and 1000 metrics per call)."""
    from mlflow.entities import Param

    items = [Param(k, str(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])


def _trial_run(client, experiment_id: str, parent: str, row: pd.Series, epochs: pd.DataFrame) -> str:
    """One trial: its parameters, every reported epoch (step = epoch), its status; a child of the search's run."""
    from mlflow.entities import Metric

    status = str(row["status"])
    run = client.create_run(experiment_id, run_name=str(row["trial_id"]), tags={
        "mlflow.parentRunId": parent, "tune_trial_id": str(row["trial_id"]), "tune_status": status})
    now = int(time.time() * 1000)
    # Numbers only: a history also holds words (data_path: how the trial's images travelled).
    measured = [c for c in epochs.columns if c not in NOT_METRICS and pd.api.types.is_numeric_dtype(epochs[c])]
    metrics = [Metric(name, float(value), now, int(epoch)) for epoch, values in zip(epochs["epoch"], epochs[measured].to_numpy())
               for name, value in zip(measured, values) if pd.notna(value)]
    _log(client, run.info.run_id, {p: row[p] for p in PARAMS if p in row and pd.notna(row[p])}, metrics)
    if isinstance(row.get("error"), str):
        client.set_tag(run.info.run_id, "error", row["error"][:5000])
    client.set_terminated(run.info.run_id, "FAILED" if status == "error" else "FINISHED")
    return run.info.run_id


def record(cfg: SearchConfig, table: pd.DataFrame, history: pd.DataFrame, result: dict | None) -> str:
    """Log the finished search: one run per trial under a parent run holding the best configuration, the test
    and external metrics and the report's files (result: the report; None when every trial failed)."""
    from mlflow.entities import Metric

    if pending := _starting.pop(uri(cfg), None):
        pending.result()
    with _quiet():
        client, experiment_id = _client(cfg), experiment(cfg)
        parent = client.create_run(experiment_id, run_name=cfg.name, tags={"tbray_run_folder": str(runfolder.path(cfg).resolve())})
        parent_id = parent.info.run_id
        for _, row in table.iterrows():
            epochs = history[history["trial_id"] == row["trial_id"]] if len(history) else history
            _trial_run(client, experiment_id, parent_id, row, epochs.sort_values("epoch") if len(epochs) else epochs)
        settings = {"model": cfg.model, "metric": cfg.objective, "selection": cfg.selection, "mode": cfg.mode, "num_samples": cfg.num_samples,
                    "target_sensitivity": cfg.target_sensitivity, "seed": cfg.seed}
        if result is None:
            _log(client, parent_id, settings, [])
            client.set_terminated(parent_id, "FAILED")
            return parent_id
        best = result["best"]
        params = {**settings, **best["params"], "best_trial_id": best["trial_id"], "best_epoch": best["epoch"]}
        now = int(time.time() * 1000)
        values = {**_flat("test", result["evaluation"]), f"best_{best['metric']}": best["value"],
                  **{k: v for name, ext in (result.get("external") or {}).items()
                     for k, v in _flat(f"external_{name}", ext).items()}}
        _log(client, parent_id, params, [Metric(k, v, now, 0) for k, v in values.items()])
        run_dir = runfolder.path(cfg)
        for path in [run_dir / name for name in ARTIFACTS] + sorted(run_dir.glob("*.png")):
            if path.is_file():
                client.log_artifact(parent_id, str(path))
        client.set_terminated(parent_id, "FINISHED")
    return parent_id


def where(cfg: SearchConfig) -> str:
    """One line for the console: where the runs are and how to look at them."""
    if cfg.mlflow_uri:
        return f"tbray: MLflow experiment {cfg.name!r} at {cfg.mlflow_uri}"
    return f"tbray: MLflow experiment {cfg.name!r}: mlflow ui --backend-store-uri {uri(cfg)}"
