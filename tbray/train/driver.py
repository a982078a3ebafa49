"""The Tune trial, a Ray Train driver: one Ray Train run named by the trial id, so a restarted trial resumes it.

Kept apart from tbray.search.run on purpose: Tune's trial actor and Ray Train's controller unpickle this
module, so it imports Ray and nothing heavy (no timm, scikit-learn, matplotlib); only the workers
import the training loop. That trims seconds of start-up from every trial.
"""

from __future__ import annotations

import threading
import time

from ray import train, tune
from ray.train import UserCallback
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.queue import Queue
from ray.tune.integration.ray_train import TuneReportCallback

from tbray.train.settings import TrainSettings, TrialParams, TrialSpec


def worker(config: dict) -> None:
    """Runs on each Ray Train worker; the import happens there, not in the trial or the controller."""
    entered = time.time()  # the import's seconds count as start-up in the history (startup_imports_s)
    from tbray.train.worker import worker_loop

    worker_loop(config["spec"], entered)


def trainer(spec: TrialSpec, name: str, storage: str, metric: str, mode: str, max_failures: int,
            callback) -> TorchTrainer:
    """One Ray Train run of the worker loop: workers and resources from the settings, checkpoints kept by
    `metric` (the best epoch, for the final test; Train always keeps the latest too)."""
    settings = spec.settings
    return TorchTrainer(
        worker,
        train_loop_config={"spec": spec},  # Ray Train takes a dict; the spec is the one thing in it
        # One worker never communicates: gloo spares it NCCL's set-up and GPU memory on a GPU it may share
        # with other packed trials. Several workers (DDP, one GPU each) keep Ray's default, NCCL on GPUs.
        torch_config=TorchConfig(backend="gloo") if settings.num_workers == 1 else None,
        scaling_config=train.ScalingConfig(
            num_workers=settings.num_workers, use_gpu=settings.use_gpu,
            resources_per_worker={"CPU": settings.cpus_per_worker, **settings.worker_resources,
                                  **({"GPU": settings.gpus_per_worker} if settings.use_gpu else {})},
        ),
        run_config=train.RunConfig(
            name=name, storage_path=storage, callbacks=[callback],
            failure_config=train.FailureConfig(max_failures=max_failures),
            checkpoint_config=train.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=metric,
                                                     checkpoint_score_order=mode),
        ),
    )


def trial(config: dict, settings: TrainSettings, refs: dict, storage: str, metric: str, mode: str,
          max_failures: int) -> None:
    """Build and fit the trial's TorchTrainer; TuneReportCallback forwards each epoch's report to Tune.

    `metric`: the objective the workers report as best_<metric> (tbray.config.objective).
    """
    params = TrialParams.from_tune(config)
    # Object refs, not arrays: each worker reads the node's one shared copy.
    spec = TrialSpec(params=params, settings=settings, data=refs["data"][params.input], weights=refs["weights"],
                     started=time.time())
    trainer(spec, f"train-{tune.get_context().get_trial_id()}", storage, metric, mode, max_failures,
            TuneReportCallback()).fit()


class FoldReport(UserCallback):
    """Leave-source-out: hands each epoch of one fold's Train run to its trial (Ray Train calls this in the
    run's controller; the queue is an actor the trial reads)."""

    def __init__(self, queue: Queue, fold: int):
        self.queue, self.fold = queue, fold

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        self.queue.put((self.fold, dict(metrics[0])))  # every rank reports the same figures


def folds_trial(config: dict, settings: TrainSettings, refs: dict, storage: str, metric: str, mode: str,
                max_failures: int) -> None:
    """Leave-source-out: one Tune trial per configuration, one Ray Train run per left-out source.

    The folds run side by side (each a TorchTrainer, placed by Ray like any trial's), and the trial reports
    to Tune once every fold has finished an epoch: the mean of the left-out sources' figures
    (heldout_<metric>), so Optuna sees one number per configuration and ASHA can stop it at any rung.
    When ASHA stops the trial, its fold runs stop with it. No checkpoint reaches Tune: the chosen
    configuration is trained again on every source (tbray.search.refit), and that model is tested.
    """
    params, trial_id = TrialParams.from_tune(config), tune.get_context().get_trial_id()
    # The queue is a tiny actor in the trial's own placement group, which holds no CPU (TRIAL_RESOURCES).
    started, queue, failures = time.time(), Queue(actor_options={"num_cpus": 0}), []

    def fit(fold: int) -> None:
        spec = TrialSpec(params=params, settings=settings, data=refs["data"][params.input],
                         weights=refs["weights"], started=started, fold=fold)
        name = f"train-{trial_id}-without-{settings.sources[fold]}"
        try:
            trainer(spec, name, storage, settings.metric, mode, max_failures, FoldReport(queue, fold)).fit()
        except BaseException as exc:  # raised in the trial below, after the other folds were told to stop
            failures.append(exc)
        finally:
            queue.put((fold, None))  # this fold reports no more

    threads = [threading.Thread(target=fit, args=(fold,), daemon=True) for fold in range(len(settings.sources))]
    for thread in threads:
        thread.start()
    report_folds(queue, len(threads), settings, metric, mode, failures)
    if failures:  # the trial ends here; Ray ends the other folds' runs with it (they are its actors' children)
        raise failures[0]
    for thread in threads:
        thread.join()


def report_folds(queue: Queue, folds: int, settings: TrainSettings, metric: str, mode: str, failures: list) -> None:
    """Report each epoch to Tune once all folds reached it; stop at the first fold that fails."""
    from tbray.stats.selection import heldout  # scikit-learn loads in the trial only with leave-source-out

    names, epochs, ended, best = list(settings.sources), {}, set(), None
    while len(ended) < folds and not failures:
        fold, row = queue.get()
        if row is None:
            ended.add(fold)
            continue
        epochs.setdefault(row["epoch"], {})[names[fold]] = row
        for epoch in sorted(e for e, rows in epochs.items() if len(rows) == folds):
            rows = epochs.pop(epoch)
            merged = {"epoch": epoch, **heldout(rows),
                      **{k: max(r[k] for r in rows.values()) for k in ("epoch_s", "startup_s") if k in rows[names[0]]},
                      "train_loss": sum(r["train_loss"] for r in rows.values()) / folds,
                      **({"data_path": rows[names[0]]["data_path"]} if "data_path" in rows[names[0]] else {})}
            best = merged[metric] if best is None else (min if mode == "min" else max)(best, merged[metric])
            merged[f"best_{metric}"] = best
            tune.report({**merged, "reported_at": time.time()})


def control_trial(config: dict, refs: dict, **kwargs) -> None:
    """A shortcut-audit trial (tbray.audit.controls): the search's own trial, on the images of the control it is given."""
    trial(config, refs={"data": refs["data"][config["control"]], "weights": refs["weights"]}, **kwargs)
