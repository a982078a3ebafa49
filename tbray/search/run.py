"""The one wiring place: Ray Tune + Optuna + ASHA over trials that each run a Ray Train TorchTrainer.

    run(config)
      prepare the run folder: data found and checked, split.csv, skipped.csv
      connect to Ray, check the cluster can hold a trial, decode the images once
      Tuner(trial, OptunaSearch, ASHAScheduler).fit()      (or .restore() with --resume, if optuna.db reads)
        trial (tbray.train.driver): one TorchTrainer per trial, named by the trial id
          worker_loop (tbray.train.worker): on each Ray Train worker, DDP, reports every epoch, checkpoints when due
      trials.csv, the best checkpoint evaluated once on the test split, the report
"""

from __future__ import annotations

import sys

import numpy as np
import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.util.state.exception import RayStateApiException

from tbray.config import SearchConfig
from tbray.data import cache, confound
from tbray.data.preprocess import Input
from tbray.errors import SearchFailed, UserError
from tbray.external import sets
from tbray.model import factory as tbmodel
from tbray.rayops import cluster, interrupt, placement
from tbray.report import page
from tbray.runs import runfolder, trials
from tbray.search import console, final, refit, start, tracking
from tbray.search import study as studies
from tbray.search.study import LabelledOptunaSearch, RunFolderStorage
from tbray.train import trainable as trainables


class LastEpochFinishes(ASHAScheduler):
    """ASHA, except that a trial reporting its last epoch is never stopped: it ends by itself there.

    Stopping it would save no training, and a trial Tune stops is killed with its Train run before the run
    withdraws its request for nodes, which then keeps idle GPU nodes for Ray Train's 180 s (ASHA stops every
    trial at max_t, and at a rung that falls on a trial's last epoch). Its result still counts at that rung.
    """

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if result.get("epoch", 0) >= trial.config.get("epochs", float("inf")):  # time_attr="epoch", below
            return TrialScheduler.CONTINUE
        return decision


def make_tuner(cfg: SearchConfig, trainable, tune_storage: str, max_concurrent: int) -> tune.Tuner:
    """Optuna's TPE proposes, ASHA stops weak trials at epoch rungs, the study lives in SQLite."""
    storage = RunFolderStorage(f"sqlite:///{runfolder.study_path(cfg)}")
    # Optuna, ASHA and the best-trial choice all see the trial's best epoch so far (best_<metric>), so the
    # value Optuna learns from is the value the final choice ranks by, not whatever the last epoch gave.
    metric = f"best_{cfg.objective}"
    name = studies.create(runfolder.study_path(cfg), cfg.name, metric, cfg.mode)
    searcher = LabelledOptunaSearch(metric=metric, mode=cfg.mode, storage=storage, study_name=name, seed=cfg.seed)
    max_t = max(cfg.space.epochs)
    scheduler = LastEpochFinishes(time_attr="epoch", max_t=max_t, grace_period=min(cfg.grace_period, max_t),
                                  reduction_factor=cfg.reduction_factor)
    return tune.Tuner(
        trainable,
        param_space=cfg.space.param_space(),
        tune_config=tune.TuneConfig(metric=metric, mode=cfg.mode, search_alg=searcher, scheduler=scheduler,
                                    num_samples=cfg.num_samples, max_concurrent_trials=max_concurrent),
        run_config=tune.RunConfig(name="tune", storage_path=tune_storage, verbose=1, progress_reporter=console.reporter(cfg),
                                  callbacks=[placement.ReleaseUnused(), tracking.LiveRuns(cfg)]),
    )


def close_orphaned_trials(cfg: SearchConfig) -> int:
    """Mark FAIL the Optuna trials still RUNNING once every Tune trial has ended; returns how many.

    A driver killed mid-trial leaves that trial RUNNING in optuna.db; on resume Tune restarts the trial
    and its searcher asks Optuna for a new one, so the old one would show as running forever (in
    optuna-dashboard too). Called only when the search has finished, so no live trial is touched.
    """
    study = studies.load(runfolder.study_path(cfg), cfg.name)
    orphans = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))]
    for number in orphans:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
    if orphans:
        study.set_user_attr("tbray_orphaned_trials", {"numbers": orphans, "note": "RUNNING when a session was "
                            "interrupted; its Tune trial was restarted under a new Optuna trial"})
    return len(orphans)


def search(cfg: SearchConfig, checked: start.Checked) -> int:
    """The whole search, once `start.check` has passed; returns the process exit code."""
    console.quiet_libraries()
    run_dir = runfolder.path(cfg)
    tune_path = f"{runfolder.storage_root(cfg)}/tune"
    state, source = checked.weights, checked.weights_source
    prepared = runfolder.prepare(cfg, checked.data)  # the split fixed, the run folder written
    tracking.start(cfg)  # a wrong --mlflow-uri stops the search before any trial, not after
    externals = [sets.without_copies(name, found, prepared.split) for name, found in checked.external.items()]
    n_train = int((prepared.split["split"] == "train").sum())
    if max(cfg.space.batch_sizes) > n_train:
        raise UserError(f"batch size {max(cfg.space.batch_sizes)} is larger than the {n_train} training images; "
                        f"lower --batch-sizes")

    info = cluster.connect(cfg)
    plan = cluster.plan(cfg, info)
    if not info["session_dir"] and (released := placement.release_abandoned()):  # a cluster others used before
        print(f"tbray: released {released} placement group(s) that ended searches had left holding resources")
    if info["session_dir"]:
        print(f"tbray: Ray's own logs go to {run_dir / 'ray-logs'} when the search ends")
    interrupt.install()  # over the handlers ray.init and Ray's core put on SIGTERM, which abort the driver

    # Decode once: one uint8 array per image size, shared with every trial through the object store.
    arrays = cache.build(prepared.files(), prepared.split, inputs(cfg), runfolder.cache_dir(cfg))
    prepared.confound = check_confounds(cfg, prepared, arrays)
    print(f"tbray: weights from {source}; {plan.describe()}")
    print(f"tbray: {refit.describe(cfg, prepared.names)}")
    try:
        refs = object_refs(prepared, arrays, state)
        grid = fit(cfg, plan, refs, tune_path)
        return finish(cfg, grid, prepared, arrays, plan, externals, refs)
    finally:
        console.keep_ray_logs(info["session_dir"], run_dir)


def inputs(cfg: SearchConfig) -> list[Input]:
    """Every (image size, steps) a trial may ask for, each decoded once; plus the smallest size with no steps,
    which the confound check reads (it measures the films as they come)."""
    space = cfg.space
    wanted = [Input(size, how, crop) for size in space.image_sizes for how in space.preprocess for crop in space.crop]
    return list(dict.fromkeys(wanted + [Input(min(space.image_sizes))]))


def check_confounds(cfg: SearchConfig, prepared: runfolder.Prepared, arrays: dict) -> dict:
    """What acquisition alone tells apart, before any trial (tbray.data.confound), from the smallest cached size."""
    split = prepared.split
    record = confound.check(np.asarray(cache.load(arrays[Input(min(cfg.space.image_sizes))])), prepared.files(),
                            split["label"].to_numpy(), split["source"].to_numpy(), cfg.seed)
    print(f"tbray: {confound.sentence(record)}")
    if text := confound.warning(record):
        print(f"tbray: WARNING {text}")
    return record


# Module paths of objects Tune pickles with a search's state (its searcher and study storage, the progress
# reporter, the callbacks), as tbray named them before its subpackages (7831f69): a search interrupted then
# still resumes, since Tune unpickles them by these names.
OLDER_MODULES = {"tbray.study": sys.modules[RunFolderStorage.__module__], "tbray.console": console,
                 "tbray.placement": placement}


def accept_older_state() -> None:
    """Let Tune find, under their older names, the tbray modules whose objects it saved with a search."""
    for name, module in OLDER_MODULES.items():
        sys.modules.setdefault(name, module)


def object_refs(prepared: runfolder.Prepared, arrays: dict, state: dict | None) -> dict:
    """The training and validation images of each size (with their sources) and the pretrained weights, put
    in Ray's object store once: every trial's workers read the one copy on their node."""
    data = {size: ray.put({part: cache.subset_by_source(prepared.split, cache.load(p), part, prepared.names)
                           for part in ("train", "val")}) for size, p in arrays.items()}
    return {"data": data, "weights": ray.put(state) if state is not None else None}


def fit(cfg: SearchConfig, plan: cluster.Plan, refs: dict, tune_path: str):
    """Every trial, through Tune (new, or restored on --resume); the ResultGrid."""
    storage = runfolder.storage_root(cfg)
    trainable = trainables.build(trainables.for_selection(cfg.selection), settings=trainables.train_settings(cfg, plan),
                                 refs=refs, storage=f"{storage}/train", metric=cfg.objective, mode=cfg.mode,
                                 max_failures=cfg.max_failures)
    if cfg.resume and tune.Tuner.can_restore(tune_path):
        RunFolderStorage.resumed_at = f"sqlite:///{runfolder.study_path(cfg)}"  # the folder may have moved
        accept_older_state()
        try:
            tuner = tune.Tuner.restore(tune_path, trainable=trainable, resume_unfinished=True, resume_errored=False)
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("tbray"):
                raise
            raise UserError(f"{tune_path}: Tune's saved state names {exc.name}, which this tbray does not have: the "
                            "search was started by another tbray version; resume it with that version") from None
    else:
        tuner = make_tuner(cfg, trainable, storage, plan.max_concurrent)
    grid = tuner.fit()
    interrupt.after_tune()
    try:
        if released := placement.release_leftover():
            print(f"tbray: released {released} placement group(s) that finished trials still held")
    except RayStateApiException as exc:
        # Ctrl-C in a terminal reaches the whole process group, a local Ray's dashboard included: the search
        # still ends as an interrupted one, with its resume line, not a traceback.
        print(f"tbray: WARNING placement groups not checked: Ray's state API did not answer ({type(exc).__name__})")
    return grid


def finish(cfg: SearchConfig, grid, prepared: runfolder.Prepared, arrays: dict, plan: cluster.Plan,
           externals: list, refs: dict) -> int:
    """What the trials did, then (unless interrupted) the one evaluation of the best checkpoint."""
    table, history = trials.collect(grid, cfg)
    trials.write(runfolder.path(cfg), table, history)
    print(f"tbray: trials' training images: {trials.data_paths(table)}")
    if trials.interrupted(grid, cfg) or interrupt.requested():
        print(f"tbray: search {interrupt.reason()}; continue with: {runfolder.resume_command(cfg)}")
        return interrupt.exit_code()
    if orphans := close_orphaned_trials(cfg):
        print(f"tbray: {orphans} Optuna trial(s) an interrupted session left RUNNING marked FAIL (their Tune "
              "trials were restarted under new Optuna trials)")
    if cfg.selection == "leave-source-out":  # the chosen configuration, trained again on every source
        best = refit.run(cfg, plan, refs, table, history)
        if interrupt.requested():
            print(f"tbray: search {interrupt.reason()}; continue with: {runfolder.resume_command(cfg)}")
            return interrupt.exit_code()
    else:
        best = trials.best(table, history, cfg)
    if best is None:
        tracking.record(cfg, table, history, None)
        first = table["error"].dropna() if "error" in table else []
        if len(first):
            raise SearchFailed(f"every trial failed; first error: {first.iloc[0]}")
        raise SearchFailed(f"no trial left a checkpoint under {runfolder.storage_root(cfg)}/train to evaluate")
    result = final.run(cfg, prepared, arrays, best, plan, table, history, externals)
    if cfg.shortcut_audit:
        from tbray.audit import run as audit_run  # grad-cam and OpenCV load only for an audit

        state, _ = tbmodel.pretrained_state(cfg.model, cfg.weights, cfg.pretrained)
        spec = Input(best["params"]["image_size"], best["params"].get("preprocess", "none"), best["params"].get("crop", "none"))
        result = audit_run.run(cfg, trainables.train_settings(cfg, plan), plan, prepared.split, cache.load(arrays[spec]), state)
    tracking.record(cfg, table, history, result)
    print(tracking.where(cfg))
    print(page.summary_table(result))
    run_dir = runfolder.path(cfg).resolve()
    print(f"tbray: report: {run_dir / 'report.md'}")
    print(f"tbray: viewers (MLflow, optuna-dashboard, TensorBoard; Ctrl-C stops them): python tune/ui.py {run_dir}")
    return 0
