"""The GPU-speed regime's table, from measured rounds: medians, ranges, and rounds that missed a figure."""

from __future__ import annotations

from tbray.bench import regime

KEYS = ["bare_s", "trial_s", "ratio", "startup_s", "entered_s", "to_first_epoch_s", "plain_s", "startup_ratio",
        "startup_share", "epoch_s", "bare_epoch_s", "report_s", "checkpoints", "tail_s"]


def test_a_round_that_missed_a_process_still_gives_the_table():
    rounds = [{k: float(i + 1) for k in KEYS} for i in range(3)]
    rounds[0] |= {"process_ImplicitFunc_ready_s": 2.0, "process_ImplicitFunc_new": 1.0,
                  "process_ImplicitFunc_init_s": 2.5}
    rounds[2] |= {"process_ImplicitFunc_ready_s": 4.0, "process_ImplicitFunc_new": 0.0}
    rows = {row.what.strip(): row for row in regime.table_rows(regime.Regime(), rounds, 0.01)}
    assert rows["trial/bare ratio"].value == 2.0 and "range 1-3" in rows["trial/bare ratio"].note
    ready = rows["Tune's trial process ready, after Tuner.fit"]
    assert ready.value == 3.0 and "a new process in 1 of 2 rounds seen" in ready.note
    assert "its __init__ done at 2.5 s" in ready.note  # from the one round whose task events had it
    assert not any("Train's controller" in what for what in rows)  # measured in no round: no row
    share = rows["start-up share of a search's wall time"]  # what a search pays for start-up, in generations
    assert share.value == 2.0 and "16 on 4: 4, 8 s" in share.note
