"""MLflow: each search one experiment (named after the run), each trial one run, a parent run with the result.

Live: `LiveRuns`, a Tune callback on the driver, opens a trial's run when Tune starts it, logs every
reported epoch with the time it arrived, and closes the run when the trial ends, so `mlflow ui` shows
the search as it goes. Runs are found again by their tags (the parent by `tbray_search`, a trial by
`tune_trial_id`), never from a map in memory: a resumed search continues the runs it had rather than
opening a second run per restarted trial (the reason Ray's MLflowLoggerCallback is not used). Tracking
never stops a search: a store that fails mid-search is said once, and `record` fills in at the end.

At the end, `record` gives each trial run its final status (trials.csv's words) and the parent the best
configuration, the test and external metrics and the report's files; a trial the live logger never saw
is logged then from history.csv, as a whole.

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
from ray import tune

from tbray.config import SearchConfig
from tbray.errors import UserError
from tbray.runs import runfolder

PARAMS = ["epochs", "batch_size", "image_size", "lr", "weight_decay", "preprocess", "crop"]  # what Optuna chose (trials.PARAMS, STEPS)
NOT_METRICS = {"trial_id", "epoch", "checkpoint_path", "node_id"}  # history columns that are no measurements
_starting: dict[str, Future] = {}  # the run folder's new SQLite store, being made while the search runs
TUNE_KEYS = {"timestamp", "training_iteration", "time_this_iter_s", "time_total_s", "pid", "time_since_restore",
             "iterations_since_restore", "done", "epoch"}  # Tune's own numbers in a result, not the trial's
SKIPPED = TUNE_KEYS | NOT_METRICS | {"reported_at"}  # what a live result holds that is not a trial's measurement
# Classic ML, not GenAI; MLflow 3.17's UI reads its view from the address too (?workflowType: tune/ui.py).
KIND = {"mlflow.experimentKind": "custom_model_development"}
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
            return client.create_experiment(cfg.name, artifact_location=local, tags=KIND)
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


def _parent(client, experiment_id: str, cfg: SearchConfig) -> str:
    """The search's parent run: made by the first session, found again by its tag after a resume."""
    found = client.search_runs([experiment_id], filter_string="tags.tbray_search = 'parent'", max_results=1,
                               order_by=["attributes.start_time ASC"])
    if found:
        return found[0].info.run_id
    return client.create_run(experiment_id, run_name=cfg.name, tags={
        "tbray_search": "parent", "tbray_run_folder": str(runfolder.path(cfg).resolve())}).info.run_id


def _children(client, experiment_id: str, parent: str) -> dict[str, str]:
    """Tune trial id -> its MLflow run, for the trial runs already under the parent."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'", max_results=50000)
    return {r.data.tags["tune_trial_id"]: r.info.run_id for r in runs if "tune_trial_id" in r.data.tags}


def _ready(cfg: SearchConfig):
    """The client and experiment id, once the run folder's store (made in the background) is there."""
    if pending := _starting.pop(uri(cfg), None):
        pending.result()
    return _client(cfg), experiment(cfg)


def record(cfg: SearchConfig, table: pd.DataFrame, history: pd.DataFrame, result: dict | None) -> str:
    """Close the finished search: every trial run its status (one is logged whole if the live logger never
    saw it), and the parent run the best configuration, the test and external metrics and the report's
    files (result: the report; None when every trial failed)."""
    from mlflow.entities import Metric

    with _quiet():
        client, experiment_id = _ready(cfg)
        parent_id = _parent(client, experiment_id, cfg)
        live = _children(client, experiment_id, parent_id)
        for _, row in table.iterrows():
            if (run_id := live.get(str(row["trial_id"]))) is None:
                epochs = history[history["trial_id"] == row["trial_id"]] if len(history) else history
                _trial_run(client, experiment_id, parent_id, row, epochs.sort_values("epoch") if len(epochs) else epochs)
                continue
            client.set_tag(run_id, "tune_status", str(row["status"]))
            if isinstance(row.get("error"), str):
                client.set_tag(run_id, "error", row["error"][:5000])
            client.set_terminated(run_id, "FAILED" if row["status"] == "error" else "FINISHED")
        settings = {"model": cfg.model, "metric": cfg.objective, "selection": cfg.selection, "mode": cfg.mode,
                    "num_samples": cfg.num_samples, "target_sensitivity": cfg.target_sensitivity,
                    "threshold_rule": cfg.threshold_rule, "seed": cfg.seed}
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


class LiveRuns(tune.Callback):
    """Each trial's MLflow run while it trains (see the module's docstring). Tune pickles its callbacks with
    the experiment, so only the config travels; the client is made again where it is used."""

    def __init__(self, cfg: SearchConfig):
        self.cfg = cfg
        self._session: dict | None = None  # client, experiment, parent and trial runs; rebuilt after a resume

    def __getstate__(self) -> dict:
        return {"cfg": self.cfg, "_session": None}

    def _runs(self) -> dict | None:
        """This session's client, parent run and trial runs; None once tracking has failed (said once)."""
        if self._session is None:
            try:
                with _quiet():
                    client, experiment_id = _ready(self.cfg)
                    parent = _parent(client, experiment_id, self.cfg)
                    self._session = {"client": client, "experiment": experiment_id, "parent": parent,
                                     "trials": _children(client, experiment_id, parent), "failed": False}
            except Exception as exc:  # MLflow, SQLAlchemy and the OS raise many types; none may stop a search
                return self._failed(exc)
        return None if self._session["failed"] else self._session

    def _failed(self, exc: Exception) -> None:
        print(f"tbray: WARNING MLflow stopped logging live ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
              "the runs are written when the search ends")
        self._session = {"failed": True}
        return None

    def _trial(self, trial) -> str | None:
        """The trial's run: found after a resume, else opened now with its parameters."""
        if (session := self._runs()) is None:
            return None
        if (run_id := session["trials"].get(trial.trial_id)) is None:
            client = session["client"]
            run_id = client.create_run(session["experiment"], run_name=trial.trial_id, tags={
                "mlflow.parentRunId": session["parent"], "tune_trial_id": trial.trial_id}).info.run_id
            _log(client, run_id, {p: trial.config[p] for p in PARAMS if p in trial.config}, [])
            session["trials"][trial.trial_id] = run_id
        return run_id

    def _safely(self, action) -> None:
        try:
            with _quiet():
                action()
        except Exception as exc:  # as in _runs: tracking never stops a search
            self._failed(exc)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._safely(lambda: self._trial(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        from mlflow.entities import Metric

        def log() -> None:
            if (run_id := self._trial(trial)) is None:
                return
            # When the worker reported it, in ms: Tune's own "timestamp" is in whole seconds, too coarse for short
            # epochs, and the time it arrived bunches epochs whenever the driver takes two results at once.
            when, step = int(result.get("reported_at", time.time()) * 1000), int(result.get("epoch", 0))
            metrics = [Metric(k, float(v), when, step) for k, v in result.items() if k not in SKIPPED
                       and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
            _log(self._session["client"], run_id, {}, metrics)
        self._safely(log)

    def _end(self, trial, status: str) -> None:
        def close() -> None:
            if (run_id := self._trial(trial)) is not None:
                self._session["client"].set_terminated(run_id, status)
        self._safely(close)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._end(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._end(trial, "FAILED")


def where(cfg: SearchConfig) -> str:
    """One line for the console: where the runs are and how to look at them."""
    if cfg.mlflow_uri:
        return f"tbray: MLflow experiment {cfg.name!r} at {cfg.mlflow_uri}"
    return f"tbray: MLflow experiment {cfg.name!r}: mlflow ui --backend-store-uri {uri(cfg)}"
