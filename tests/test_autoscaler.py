"""cluster/gpu.yaml's autoscaling, on one machine: Ray's fake multi-node provider runs the real autoscaler
with the YAML's node types (tbray.rayops.fakecluster). Worker nodes come only when trials wait for them,
the trials run on them and not on the head, checkpoints go to the shared storage, and the nodes go once
idle; `ray status` agrees at each step. The trials ask for half a GPU each, as `--gpus-per-trial 0.5`
does: one node comes for both and they train on its one GPU at the same time (packing; the GPU
arithmetic itself is in test_cluster_plan.py). Skipped, with the reason, where the provider can't start."""

from __future__ import annotations

import datetime
import json
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, TINY, wait_for

from tbray.errors import UserError
from tbray.rayops import fakecluster

WORKER = "ray.worker.gpu"  # cluster/gpu.yaml's GPU worker type, min_workers 0


@pytest.fixture(scope="module")
def local_cluster():
    # Directly under /tmp: Ray's socket paths under a pytest tmp_path pass AF_UNIX's 107-byte limit.
    folder = Path(tempfile.mkdtemp(prefix="tbray-cluster-"))
    try:
        address, _ = fakecluster.up(REPO / "cluster" / "gpu.yaml", folder, idle_timeout_minutes=0.25)
    except UserError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"Ray's fake multi-node provider did not start here: {exc}")
    yield address, folder
    fakecluster.down(folder)
    shutil.rmtree(folder, ignore_errors=True)


def _at(stamp: str) -> float:
    """A Ray log line's local time ('2026-12-03 07:27:04,805') as a Unix time."""
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def spans(run: Path) -> list[tuple[float, float]]:
    """Each trial's [first report - its epoch, last report] in wall-clock seconds, from Tune's result files."""
    out = []
    for result in (run / "tune").glob("*/result.json"):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        out.append((lines[0]["timestamp"] - lines[0]["epoch_s"], lines[-1]["timestamp"]))
    return out


def test_worker_nodes_come_for_waiting_trials_run_them_and_go_when_idle(run_cli, local_cluster, tiny_data, tmp_path):
    address, folder = local_cluster
    # As a user joining a token cluster sets it; and where the head's autoscaler reads its limits.
    env = {"RAY_AUTH_MODE": "token", "TBRAY_AUTOSCALING_CONFIG": str(folder / "autoscaling.yaml")}
    args = ["--data", tiny_data, "--results", tmp_path, "--address", address, *TINY]
    assert fakecluster.active_nodes(address) == {fakecluster.HEAD_TYPE: 1}  # scale from zero: the head alone

    # No worker is up yet, but the autoscaler may start some: a search without shared storage is refused.
    refused = run_cli(*args, "--name", "nostore", "--worker-resource", "fake_gpu=1", env=env, timeout=120)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "may grow, but no shared storage" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert not [e for _, e in fakecluster.events(folder) if e.startswith("Adding")]  # and nothing was started

    shared = tmp_path / "shared"  # one folder every node sees, standing in for S3 or NFS
    started = time.time()
    # Half a stand-in GPU per trial; 20 epochs (about 8 s here), so their training overlaps by seconds.
    done = run_cli(*args, "--name", "auto", "--storage", shared, "--worker-resource", "fake_gpu=0.5",
                   "--num-samples", "2", "--epochs", "20", "--grace-period", "20", env=env)
    ended = time.time()
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "on 1 node(s)" in done.stdout  # the plan was made while the head was alone

    # The node came once trials waited, and the trials ran there: two half-"GPU" trials, one "GPU" node,
    # training at the same time (their epochs overlap; Tune's timestamps are whole seconds).
    added = [(_at(t), e) for t, e in fakecluster.events(folder) if e.startswith("Adding")]
    assert added and all(started < t < ended for t, _ in added), added
    assert all(WORKER in e for _, e in added) and "Adding 1 node" in added[0][1], added
    history = pd.read_csv(tmp_path / "auto" / "history.csv", dtype={"trial_id": str})
    nodes = history.groupby("trial_id")["node_id"].unique()
    head = fakecluster.HEAD_NODE_ID
    assert len(nodes) == 2 and all(len(n) == 1 for n in nodes), nodes  # no trial moved
    assert len({n[0] for n in nodes}) == 1 and head not in {n[0] for n in nodes}, nodes
    assert (pd.read_csv(tmp_path / "auto" / "trials.csv", dtype={"trial_id": str})["status"] == "completed").all()
    (a_start, a_end), (b_start, b_end) = spans(shared / "auto")  # Tune's files, on the shared storage
    assert max(a_start, b_start) < min(a_end, b_end), spans(shared / "auto")
    assert list(shared.glob("auto/train/*/checkpoint_*")), "checkpoints belong on the shared storage"
    report = json.loads((tmp_path / "auto" / "report.json").read_text())
    assert report["best"]["checkpoint"].startswith(str(shared))

    # Idle, they go, soon; what `ray status` says matches the autoscaler's own account. Soon because each
    # trial ends by itself at its last epoch and its Train run withdraws its request for nodes; were ASHA to
    # stop it there (its default), the request would hold the nodes for Ray Train's 180 s (measured: gone
    # 182 s after the search, against 6-9 s now).
    up = fakecluster.active_nodes(address).get(WORKER, 0)
    wait_for(lambda: fakecluster.active_nodes(address) == {fakecluster.HEAD_TYPE: 1}, 120,
             "the idle nodes to go within 2 minutes of the search (idle timeout 15 s)")
    removed = [(_at(t), e) for t, e in fakecluster.events(folder) if e.startswith("Removing")]
    assert removed and all("(idle)" in e for _, e in removed) and min(removed)[0] > max(added)[0], removed
    timeline = sorted([(t - started, e) for t, e in added + removed])
    print(f"\nsearch {ended - started:.0f} s; worker nodes up when it ended: {up}")
    for offset, event in timeline:
        print(f"  {offset:+7.1f} s  {event}")
