"""Packing trials onto a GPU: Ray schedules a fractional per-worker resource, and tbray's plan counts
trials by it. Checked on a local Ray with a custom resource standing in for the GPU (a declared GPU
would make Ray Train call CUDA, which a CPU machine lacks): two half-"GPU" trials must run at once.
The GPU arithmetic itself (--gpus-per-trial 0.5 -> trials per GPU) is in test_cluster_plan.py."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import TINY
from ray.cluster_utils import Cluster


@pytest.fixture(scope="module")
def one_stand_in_gpu():
    """One node: 3 CPUs (so CPUs would allow 3 trials) and one stand-in GPU."""
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 3, "resources": {"fake_gpu": 1}, "dashboard_port": 8298,
                                      "include_dashboard": True})
    yield cluster
    cluster.shutdown()


def spans(run) -> list[tuple[float, float]]:
    """Each trial's [first report - its epoch, last report] in wall-clock seconds, from Tune's result files."""
    out = []
    for result in (run / "tune").glob("*/result.json"):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        out.append((lines[0]["timestamp"] - lines[0]["epoch_s"], lines[-1]["timestamp"]))
    return out


def test_half_gpu_trials_share_one_gpu(run_cli, one_stand_in_gpu, tiny_data, tmp_path):
    done = run_cli("--data", tiny_data, "--results", tmp_path, "--name", "packed", "--address",
                   one_stand_in_gpu.address, *TINY, "--epochs", "12", "--grace-period", "12", "--worker-resource", "fake_gpu=0.5",
                   "--num-samples", "2")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "up to 2 trial(s) at once" in done.stdout  # the stand-in GPU binds: CPUs would allow 3
    assert (pd.read_csv(tmp_path / "packed" / "trials.csv", dtype={"trial_id": str})["status"] == "completed").all()
    (a_start, a_end), (b_start, b_end) = spans(tmp_path / "packed")
    # On one GPU, two trials were training at the same time: their epochs overlap in time (12 epochs, so the
    # training outlasts the second trial's start-up; Tune's timestamps are whole seconds).
    assert max(a_start, b_start) < min(a_end, b_end), spans(tmp_path / "packed")
