"""Fractional --gpus-per-trial packs trials onto one GPU: scheduling checked on a local Ray that declares
one GPU it does not have. Ray schedules by the declared count; without CUDA the workers train on the CPU
(one-worker trials use gloo, so no NCCL needs a real GPU). Two half-GPU trials must run at once."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from ray.cluster_utils import Cluster

from conftest import TINY, run_cli


@pytest.fixture(scope="module")
def one_declared_gpu():
    """One node: 2 CPUs and 1 GPU as far as Ray's scheduler knows."""
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 2, "num_gpus": 1})
    yield cluster
    cluster.shutdown()


def spans(run) -> list[tuple[float, float]]:
    """Each trial's [first report - its epoch, last report] in wall-clock seconds, from Tune's result files."""
    out = []
    for result in (run / "tune").glob("*/result.json"):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        out.append((lines[0]["timestamp"] - lines[0]["epoch_s"], lines[-1]["timestamp"]))
    return out


def test_half_gpu_trials_share_one_gpu(one_declared_gpu, tiny_data, tmp_path):
    done = run_cli("--data", tiny_data, "--results", tmp_path, "--name", "packed", "--address",
                   one_declared_gpu.address, *TINY, "--epochs", "3", "--gpus-per-trial", "0.5", "--num-samples", "2")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "each trial: 1 worker on 0.5 GPU; up to 2 trial(s) at once" in done.stdout
    assert (pd.read_csv(tmp_path / "packed" / "trials.csv")["status"] == "completed").all()
    (a_start, a_end), (b_start, b_end) = spans(tmp_path / "packed")
    # On one GPU, two trials were training at the same time: their epochs overlap in time.
    assert max(a_start, b_start) < min(a_end, b_end), spans(tmp_path / "packed")
