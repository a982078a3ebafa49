"""trials.best on plain frames: which kept checkpoint wins, and how ties are broken."""

from __future__ import annotations

import pandas as pd
import pytest

from tbray.config import SearchConfig
from tbray.runs import trials

# history rows: (trial_id, epoch, val_auroc, val_loss, checkpoint still on disk)
BEST = [
    ("the higher metric wins", "max",
     [("a", 1, 0.80, 0.5, True), ("b", 1, 0.90, 0.6, True)], ("b", 1)),
    ("equal metric: the lower validation loss", "max",
     [("a", 1, 0.90, 0.5, True), ("b", 1, 0.90, 0.4, True)], ("b", 1)),
    ("equal metric and loss: the earlier epoch", "max",
     [("a", 3, 0.90, 0.4, True), ("b", 2, 0.90, 0.4, True)], ("b", 2)),
    ("all equal: the trial listed first", "max",
     [("b", 2, 0.90, 0.4, True), ("a", 2, 0.90, 0.4, True)], ("b", 2)),
    ("a deleted checkpoint is passed over for the best kept one", "max",
     [("a", 1, 0.70, 0.5, True), ("a", 2, 0.95, 0.3, False), ("b", 1, 0.80, 0.5, True)], ("b", 1)),
    ("mode min: the lowest metric", "min",
     [("a", 1, 0.80, 0.5, True), ("b", 1, 0.70, 0.6, True)], ("b", 1)),
]


def frames(rows: list[tuple], tmp_path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """trials.csv and history.csv as collect() makes them, with real checkpoint folders for kept rows."""
    history = []
    for trial_id, epoch, auroc, loss, kept in rows:
        checkpoint = tmp_path / f"{trial_id}-checkpoint_{epoch}"
        if kept:
            checkpoint.mkdir()
        history.append({"trial_id": trial_id, "epoch": epoch, "val_auroc": auroc, "val_loss": loss,
                        "checkpoint_path": str(checkpoint)})
    ids = list(dict.fromkeys(r[0] for r in rows))
    table = pd.DataFrame([{"trial_id": t, "epochs": 3, "batch_size": 16, "image_size": 224, "lr": 1e-4,
                           "weight_decay": 1e-2} for t in ids])
    return table, pd.DataFrame(history)


@pytest.mark.parametrize("case, mode, rows, expected", BEST, ids=[b[0] for b in BEST])
def test_best(tmp_path, case, mode, rows, expected):
    table, history = frames(rows, tmp_path)
    best = trials.best(table, history, SearchConfig(metric="val_auroc", mode=mode))
    assert (best["trial_id"], best["epoch"]) == expected, case
    assert best["checkpoint"] == str(tmp_path / f"{expected[0]}-checkpoint_{expected[1]}")
    assert best["value"] == history.set_index(["trial_id", "epoch"]).loc[expected, "val_auroc"]
    assert best["metric"] == "val_auroc"


def test_best_params_are_typed_from_the_trials_table(tmp_path):
    table, history = frames([("a", 1, 0.8, 0.5, True)], tmp_path)
    params = trials.best(table, history, SearchConfig())["params"]
    assert params == {"epochs": 3, "batch_size": 16, "image_size": 224, "lr": 1e-4, "weight_decay": 1e-2}
    assert [type(params[p]) for p in trials.PARAMS] == [int, int, int, float, float]


def test_best_ranks_by_validation_loss_when_that_is_the_metric(tmp_path):
    table, history = frames([("a", 1, 0.9, 0.5, True), ("a", 2, 0.8, 0.3, True)], tmp_path)
    best = trials.best(table, history, SearchConfig(metric="val_loss", mode="min"))
    assert (best["epoch"], best["value"]) == (2, 0.3)


@pytest.mark.parametrize("case, rows", [
    ("no epoch reported", []),
    ("every checkpoint deleted", [("a", 1, 0.9, 0.5, False), ("b", 1, 0.8, 0.5, False)]),
])
def test_no_best_without_a_kept_checkpoint(tmp_path, case, rows):
    table, history = frames(rows, tmp_path)
    assert trials.best(table, history, SearchConfig()) is None, case


@pytest.mark.parametrize("recorded, root, expected", [
    ("/old/results/ctrlc/train/train-abc/checkpoint_2026", "/new/renamed",
     "/new/renamed/train/train-abc/checkpoint_2026"),
    ("bucket/runs/x/train/train-abc/checkpoint_1/", "bucket/moved/x", "bucket/moved/x/train/train-abc/checkpoint_1"),
    (None, "/new", None),
])
def test_a_recorded_checkpoint_path_follows_a_moved_run_folder(recorded, root, expected):
    assert trials.rebased(recorded, root) == expected


def test_asha_never_stops_a_trial_at_its_last_epoch_but_still_stops_one_before_it():
    """tbray's ASHA lets a trial that reports its last epoch end by itself (Tune's own stops it at max_t, and at a
    rung on its last epoch, killing its Train run before the run withdraws its request for nodes); a trial that
    ranks low at an earlier rung is stopped as ASHA would."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from tbray.search.run import LastEpochFinishes

    def decisions(scheduler_class, epochs: int, results: list[tuple[int, int, float]]) -> list[str]:
        scheduler = scheduler_class(time_attr="epoch", metric="best_val_loss", mode="min", max_t=epochs,
                                    grace_period=1, reduction_factor=3)
        trials = [Trial("t", config={"epochs": epochs}, stub=True) for _ in range(2)]
        for trial in trials:
            scheduler.on_trial_add(None, trial)
        return [scheduler.on_trial_result(None, trials[i], {"epoch": epoch, "best_val_loss": loss})
                for i, epoch, loss in results]

    last = [(0, 1, 0.5), (0, 3, 0.4), (1, 1, 0.45), (1, 3, 0.9)]  # 3 epochs: rungs at 1 and 3, the last
    assert decisions(ASHAScheduler, 3, last)[-1] == TrialScheduler.STOP
    assert decisions(LastEpochFinishes, 3, last) == [TrialScheduler.CONTINUE] * 4
    early = [(0, 1, 0.5), (1, 1, 0.9)]  # 9 epochs: the second trial ranks low at rung 1 and stops there
    assert decisions(LastEpochFinishes, 9, early) == [TrialScheduler.CONTINUE, TrialScheduler.STOP]
