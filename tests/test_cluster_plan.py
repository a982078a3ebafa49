"""cluster.plan and the autoscaler's limits on plain inputs: no Ray, just the resource arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from tbray.config import SearchConfig
from tbray.errors import UserError
from tbray.rayops import cluster

REPO = Path(__file__).resolve().parent.parent
SCALE_FROM_ZERO = {"CPU": 16.0, "GPU": 4.0}  # cluster/gpu.yaml: a CPU-0 head and up to 4 one-GPU workers


def info(resources: dict, nodes: int = 1, max_resources: dict | None = None) -> dict:
    """What cluster.connect returns, written out."""
    return {"resources": resources, "nodes": nodes, "max_resources": max_resources}


# (case, SearchConfig options, cluster info, expected (workers, use_gpu, max_concurrent, cluster_gpus, nodes))
PLANS = [
    ("CPU-only laptop: one CPU worker per trial, one trial per CPU",
     {}, info({"CPU": 4.0}), (1, False, 4, 0.0, 1)),
    ("GPUs present: a quarter GPU per one-worker trial by default, four trials a GPU",
     {}, info({"CPU": 16.0, "GPU": 4.0}), (1, True, 16, 4.0, 1)),
    ("one whole GPU per trial when asked: as many trials as GPUs",
     {"gpus_per_trial": 1}, info({"CPU": 16.0, "GPU": 4.0}), (1, True, 4, 4.0, 1)),
    ("two GPUs per trial: two DDP workers, half the trials",
     {"gpus_per_trial": 2}, info({"CPU": 16.0, "GPU": 4.0}), (2, True, 2, 4.0, 1)),
    ("CPUs run out before GPUs",
     {"cpus_per_worker": 4}, info({"CPU": 8.0, "GPU": 4.0}), (1, True, 2, 4.0, 1)),
    ("--max-concurrent wins over the arithmetic",
     {"max_concurrent": 1}, info({"CPU": 16.0, "GPU": 4.0}), (1, True, 1, 4.0, 1)),
    ("--gpus-per-trial 0 on a GPU cluster trains on CPUs",
     {"gpus_per_trial": 0}, info({"CPU": 3.0, "GPU": 1.0}), (1, False, 3, 1.0, 1)),
    ("a custom resource per worker limits concurrency (the three-node test cluster)",
     {"gpus_per_trial": 0, "worker_resources": {"fake_gpu": 1}, "storage": "/shared"},
     info({"CPU": 3.0, "fake_gpu": 2.0}, nodes=3), (1, False, 2, 0.0, 3)),
    ("half a stand-in GPU per trial: it binds (two at once) where CPUs would allow three",
     {"gpus_per_trial": 0, "worker_resources": {"fake_gpu": 0.5}}, info({"CPU": 3.0, "fake_gpu": 1.0}),
     (1, False, 2, 0.0, 1)),
    ("half a GPU per trial: one worker each, two trials per GPU",
     {"gpus_per_trial": 0.5}, info({"CPU": 16.0, "GPU": 4.0}), (1, True, 8, 4.0, 1)),
    ("a quarter GPU per trial on one GPU: four at once",
     {"gpus_per_trial": 0.25}, info({"CPU": 8.0, "GPU": 1.0}), (1, True, 4, 1.0, 1)),
    ("0.3 GPU: three per GPU (a trial never spans two GPUs), not 2 // 0.3 = 6.67 rounded",
     {"gpus_per_trial": 0.3}, info({"CPU": 16.0, "GPU": 2.0}), (1, True, 6, 2.0, 1)),
    ("0.1 GPU: ten per GPU despite 1 / 0.1 = 9.999... in floating point",
     {"gpus_per_trial": 0.1}, info({"CPU": 16.0, "GPU": 1.0}), (1, True, 10, 1.0, 1)),
    ("packed trials run out of CPUs first",
     {"gpus_per_trial": 0.25}, info({"CPU": 2.0, "GPU": 1.0}), (1, True, 2, 1.0, 1)),
    ("scale from zero: no GPU up yet, the autoscaler can bring four (a quarter GPU each: sixteen trials)",
     {"storage": "s3://bucket/runs"}, info({"CPU": 0.0}, max_resources=SCALE_FROM_ZERO), (1, True, 16, 0.0, 1)),
]


@pytest.mark.parametrize("case, options, cluster_info, expected", PLANS, ids=[p[0] for p in PLANS])
def test_plan(case, options, cluster_info, expected):
    plan = cluster.plan(SearchConfig(**options), cluster_info)
    assert (plan.workers_per_trial, plan.use_gpu, plan.max_concurrent, plan.cluster_gpus, plan.nodes) == expected


REFUSALS = [
    ("GPUs the cluster can never have",
     {"gpus_per_trial": 2}, info({"CPU": 8.0}), r"asks for 2 GPU\(s\) but the cluster has 0 and can scale to 0"),
    ("more GPUs than the autoscaler's limit",
     {"gpus_per_trial": 8, "storage": "s3://b/p"}, info({"CPU": 0.0}, max_resources=SCALE_FROM_ZERO),
     r"asks for 8 GPU\(s\) .* can scale to 4; use --gpus-per-trial 4"),
    ("a GPU fraction above one: DDP ranks would share a GPU",
     {"gpus_per_trial": 1.5}, info({"CPU": 8.0, "GPU": 4.0}), r"--gpus-per-trial 1.5: a GPU fraction is for one-worker "
                                                               r"trials only .*ray-project/ray/issues/48012"),
    ("a fraction of a GPU the cluster doesn't have",
     {"gpus_per_trial": 0.5}, info({"CPU": 8.0}), r"asks for 0.5 GPU\(s\) but the cluster has 0"),
    ("more CPUs per worker than any node set offers",
     {"cpus_per_worker": 8}, info({"CPU": 4.0}), r"asks for CPU=8 but the cluster offers at most 4"),
    ("a custom resource nobody has",
     {"worker_resources": {"fake_gpu": 1}}, info({"CPU": 4.0}), r"asks for fake_gpu=1 but the cluster offers at most 0"),
    ("several nodes without shared storage",
     {"gpus_per_trial": 0}, info({"CPU": 3.0}, nodes=3), r"3 node\(s\) and may grow, but no shared storage"),
    ("an autoscaling cluster, head only, without shared storage",
     {}, info({"CPU": 0.0}, max_resources=SCALE_FROM_ZERO), r"1 node\(s\) and may grow, but no shared storage"),
]


@pytest.mark.parametrize("case, options, cluster_info, message", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_plan_refuses(case, options, cluster_info, message):
    with pytest.raises(UserError, match=message):
        cluster.plan(SearchConfig(**options), cluster_info)


def test_plan_describes_itself_in_one_line():
    plan = cluster.plan(SearchConfig(gpus_per_trial=2), info({"CPU": 16.0, "GPU": 4.0}))
    assert plan.describe() == ("each trial: 2 GPU worker(s); up to 2 trial(s) at once on 1 node(s) "
                               "with 16 CPU(s), 4 GPU(s)")


def test_packed_plan_describes_the_share():
    plan = cluster.plan(SearchConfig(gpus_per_trial=0.25), info({"CPU": 8.0, "GPU": 1.0}))
    assert plan.gpus_per_worker == 0.25
    assert plan.describe() == "each trial: 1 worker on 0.25 GPU; up to 4 trial(s) at once on 1 node(s) with 8 CPU(s), 1 GPU(s)"


def test_autoscaling_limits_of_the_project_cluster_config():
    assert cluster.autoscaling_limits(REPO / "cluster" / "gpu.yaml") == SCALE_FROM_ZERO


@pytest.mark.parametrize("case, text, expected", [
    ("the cluster's max_workers caps each node type",
     "max_workers: 2\nhead_node_type: head\navailable_node_types:\n"
     "  head: {resources: {CPU: 2}, max_workers: 0}\n  gpu: {resources: {CPU: 4, GPU: 1}, max_workers: 8}\n",
     {"CPU": 10.0, "GPU": 2.0}),
    ("not a launcher config", "just: a mapping\n", None),
    ("not YAML at all", "{unclosed: [\n", None),
])
def test_autoscaling_limits(tmp_path, case, text, expected):
    path = tmp_path / "bootstrap.yaml"
    path.write_text(text)
    assert cluster.autoscaling_limits(path) == expected, case


def test_autoscaling_limits_without_a_config_file(tmp_path):
    assert cluster.autoscaling_limits(tmp_path / "absent.yaml") is None
