"""Cluster behaviour on one machine: a cluster without its dashboard is refused, and the dashboard's HTTP API
asks for the token. (A multi-node search, shared storage and the autoscaler: tests/test_autoscaler.py.)"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from conftest import TINY
from ray.cluster_utils import Cluster


def _get(url: str, token: str | None):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_the_dashboards_api_refuses_a_request_without_the_token(dashboard_url):
    """Token auth stays on. What the dashboard shows of a running search, with the token, is checked in
    tests/test_concurrent.py (its API and its pages, on a laptop search)."""
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
