"""Cluster behaviour on one machine: a three-node Ray cluster with shared storage, the resource check,
and the dashboard's HTTP API (token auth on) showing a running search."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pandas as pd
import pytest
from conftest import TINY
from ray.cluster_utils import Cluster


@pytest.fixture(scope="module")
def three_nodes():
    """A head that runs no trial (no fake GPU) and two workers with one stand-in GPU each."""
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 1, "dashboard_port": 8299, "include_dashboard": True})
    workers = [cluster.add_node(num_cpus=1, resources={"fake_gpu": 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    yield cluster, cluster.head_node.node_id, {w.node_id for w in workers}
    cluster.shutdown()


def test_multi_node_search_places_trials_on_workers(run_cli, three_nodes, tiny_data, tmp_path):
    cluster, head_id, worker_ids = three_nodes
    shared = tmp_path / "shared"  # one folder every node sees, standing in for S3 or NFS
    done = run_cli("--data", tiny_data, "--results", tmp_path / "results", "--name", "multi", "--storage", shared,
                   "--address", cluster.address, "--worker-resource", "fake_gpu=1", "--num-samples", "2", *TINY)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "up to 2 trial(s) at once on 3 node(s)" in done.stdout
    history = pd.read_csv(tmp_path / "results" / "multi" / "history.csv")
    nodes = history.groupby("trial_id")["node_id"].first()
    assert len(nodes) == 2 and nodes.nunique() == 2, nodes  # the two trials ran on different nodes
    assert set(nodes) <= worker_ids and head_id not in set(nodes)
    assert list(shared.glob("multi/train/*/checkpoint_*")), "checkpoints belong on the shared storage"
    report = json.loads((tmp_path / "results" / "multi" / "report.json").read_text())
    assert report["best"]["checkpoint"].startswith(str(shared))
    assert report["evaluation"]["n_test"] > 0


def test_multi_node_without_shared_storage_is_refused(run_cli, three_nodes, tiny_data, tmp_path):
    cluster, _, _ = three_nodes
    done = run_cli("--data", tiny_data, "--results", tmp_path, "--name", "nostore", "--address", cluster.address,
                   *TINY, timeout=120)
    assert done.returncode == 2
    assert "shared storage" in done.stderr and "Traceback" not in done.stderr


def _get(url: str, token: str | None):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_the_dashboards_api_refuses_a_request_without_the_token(dashboard_url):
    """Token auth stays on. What the dashboard shows of a running search, with the token, is checked in
    tests/test_dashboard_browser.py (its API and its pages, on one search)."""
    assert dashboard_url.startswith("http://127.0.0.1")
    with pytest.raises(urllib.error.HTTPError) as refused:
        _get(f"{dashboard_url}/api/v0/actors", None)
    assert refused.value.code == 401


def test_a_cluster_without_its_dashboard_is_refused_before_any_trial(run_cli, tiny_data, tmp_path):
    """Without the state API, Train can't free an ASHA-stopped trial's resources and the next one waits forever."""
    bare = Cluster(initialize_head=True, connect=False,
                   head_node_args={"num_cpus": 1, "include_dashboard": False, "dashboard_port": 8297})
    address = bare.address
    try:
        done = run_cli("--data", tiny_data, "--results", tmp_path, "--name", "bare", "--address", address, *TINY,
                       timeout=300)
    finally:
        bare.shutdown()
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    # Ray's own INFO lines about joining come first; tbray's error is one line and the last.
    assert done.stderr.strip().splitlines()[-1] == (
        f"tbray: error: the Ray cluster at {address} has no dashboard (Ray's state API): Ray Train frees a "
        "stopped trial's resources through it; start its head with ray[default] and the dashboard")
    assert "Traceback" not in done.stderr and not (tmp_path / "bare" / "tune").exists()  # no trial started
