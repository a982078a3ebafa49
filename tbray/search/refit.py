"""Leave-source-out's last step: the chosen configuration trained once on every source.

DomainBed's leave-one-domain-out (Gulrajani and Lopez-Paz, 2021) ranks configurations by how they do on a
source they did not train on; the model a user gets should have seen every source. So the configuration
with the best mean over left-out sources is trained again, on all sources, as one more Tune trial
(`<storage>/refit`, so Ctrl-C and --resume work as for the search), and that run's checkpoint is the
one tested, exported and reported. Its epoch is chosen on the pooled validation images, whose sources it
trained on, as the pooled rule would; the left-out figures that chose it travel with it into the report.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
from ray import tune

from tbray.config import SearchConfig
from tbray.errors import SearchFailed
from tbray.rayops import cluster, interrupt, placement
from tbray.runs import runfolder, trials
from tbray.search import console
from tbray.train import trainable as trainables


def describe(cfg: SearchConfig, sources: list[str]) -> str:
    """What the selection rule costs, in Ray Train runs, said before the first trial."""
    k, n = len(sources), cfg.num_samples
    if cfg.selection == "leave-source-out":
        return (f"selection leave-source-out over {k} sources ({', '.join(sources)}): each configuration trains "
                f"{k} folds, one Ray Train run each, so {n} configuration{'s' * (n != 1)} cost{'s' * (n == 1)} "
                f"{k * n} runs, plus 1 on every source for the chosen one ({k * n + 1} in all, against {n} for a pooled search)")
    if cfg.selection == "worst-source":
        return (f"selection worst-source over {k} sources ({', '.join(sources)}): each configuration is ranked "
                f"by its worst source's {cfg.metric}")
    return f"selection pooled: validation images of {'every source' if k > 1 else 'the data set'} together"


def run(cfg: SearchConfig, plan: cluster.Plan, refs: dict, table: pd.DataFrame, history: pd.DataFrame) -> dict | None:
    """Train the best configuration on every source; its best checkpoint, as trials.best, with the search's
    left-out figures under "selection". None if interrupted (the search's resume continues it)."""
    chosen = trials.best_config(table, history, cfg)
    if chosen is None:
        first = table["error"].dropna() if "error" in table else []
        raise SearchFailed(f"no configuration finished an epoch on every fold; first error: "
                           f"{first.iloc[0] if len(first) else 'none recorded'}")
    print(f"tbray: chosen configuration {chosen['trial_id']} ({cfg.objective} {chosen['value']:.4f} at epoch "
          f"{chosen['epoch']}); training it once on every source")
    pooled = dataclasses.replace(cfg, selection="pooled")
    storage = runfolder.storage_root(cfg)
    trainable = trainables.build(settings=trainables.train_settings(pooled, plan), refs=refs,
                                 storage=f"{storage}/train", metric=pooled.objective, mode=cfg.mode,
                                 max_failures=cfg.max_failures)
    path = f"{storage}/refit"
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False)
    else:
        tuner = tune.Tuner(trainable, param_space=dict(chosen["params"]),
                           tune_config=tune.TuneConfig(num_samples=1, metric=f"best_{pooled.objective}", mode=cfg.mode),
                           run_config=tune.RunConfig(name="refit", storage_path=storage, verbose=1,
                                                     progress_reporter=console.reporter(pooled),
                                                     callbacks=[placement.ReleaseUnused()]))
    grid = tuner.fit()
    interrupt.after_tune()
    refit_table, refit_history = trials.collect(grid, pooled)
    trials.write_refit(runfolder.path(cfg), refit_history)
    if any(status == "unfinished" for status in refit_table["status"]):
        return None
    best = trials.best(refit_table, refit_history, pooled)
    if best is None:
        error = refit_table["error"].dropna()
        raise SearchFailed(f"the run on every source left no checkpoint: {error.iloc[0] if len(error) else 'no error'}")
    return best | {"selection": {"rule": cfg.selection, "chosen_trial_id": chosen["trial_id"],
                                 "chosen_epoch": chosen["epoch"], "objective": cfg.objective, "value": chosen["value"],
                                 "left_out": chosen["left_out"]}}
