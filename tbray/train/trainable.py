"""The one trainable builder: what a Tune trial of tbray runs, and what it asks the cluster for.

The search, the shortcut audit's two controls, the GPU-speed regime benchmark and `tune/bench.py` all
build their Tune trainables here, so a trial asks for the same resources wherever it runs:

    settings = train_settings(cfg, plan)             what every trial of the search trains with
    trainable = build(driver.trial, settings=..., refs=..., storage=..., metric=..., mode=..., max_failures=...)
    tune.Tuner(trainable, ...)

Imported by the process that builds the Tuner (a module that Tune's trial processes unpickle imports it
inside a function): it loads timm, while `tbray.train.driver`, which Tune's trial actors and Ray Train's
controller unpickle, stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ray import tune

from tbray.config import SearchConfig
from tbray.model import factory as tbmodel
from tbray.train.driver import folds_trial, trial
from tbray.train.settings import TrainSettings

if TYPE_CHECKING:
    from tbray.rayops.cluster import Plan

# A tbray trial only drives its Ray Train run, whose workers hold the CPUs and GPUs, so the trial itself
# takes no CPU from them. Tune can't place an actor that asks for nothing, so it asks for a token 1 MiB
# of memory instead.
TRIAL_RESOURCES = {"CPU": 0, "memory": 2**20}


def train_settings(cfg: SearchConfig, plan: Plan) -> TrainSettings:
    """What every trial trains with: the model's own input statistics, the workers the plan allows, how
    validation ranks it over the search's sources (named as --data names them; the demo is one)."""
    mean, std = tbmodel.gray_stats(cfg.model)
    return TrainSettings(
        model=cfg.model, mean=mean, std=std,
        num_workers=plan.workers_per_trial, use_gpu=plan.use_gpu, gpus_per_worker=plan.gpus_per_worker,
        cpus_per_worker=cfg.cpus_per_worker,
        worker_resources=dict(cfg.worker_resources), seed=cfg.seed, metric=cfg.metric, mode=cfg.mode,
        checkpoint_every=cfg.checkpoint_every, selection=cfg.selection or "pooled",
        sources=tuple(cfg.data) or ("demo",),
    )


def for_selection(selection: str):
    """The trial function of a selection rule: one Train run, or one per left-out source."""
    return folds_trial if selection == "leave-source-out" else trial


def build(trial_fn=trial, **parameters) -> type:
    """`trial_fn` (default: the search's own Train trial) as a Tune trainable with TRIAL_RESOURCES.

    Large objects in `parameters` go to Ray's object store once, not into every trial's config. Object
    refs travel inside a dict (`refs`): with_parameters would resolve a bare ref into every trial.
    """
    return tune.with_resources(tune.with_parameters(trial_fn, **parameters), TRIAL_RESOURCES)
