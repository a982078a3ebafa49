"""`tune/cluster_local.py`: the cluster path of cluster/gpu.yaml, tried on this machine.

    python tune/cluster_local.py                    # up, a demo search on it, its nodes going, down
    python tune/cluster_local.py --keep             # ... and stay up (dashboard, `ray status`) until Ctrl-C
    python tune/cluster_local.py -- --num-samples 4 # options after -- go to tune/search.py

Ray's fake multi-node autoscaler runs the head here and starts "GPU" worker nodes as local processes
when trials wait for them, as `ray up cluster/gpu.yaml` would start GPU instances (tbray.rayops.fakecluster).
The search joins it with --address, keeps its checkpoints on --storage (a folder every node sees, as
S3 or NFS would be) and asks for the stand-in GPU with --worker-resource. Everything is stopped at the end,
or on Ctrl-C, and nothing else of Ray on this machine is touched.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tbray.commands import exits
from tbray.rayops import fakecluster

REPO = Path(__file__).resolve().parents[2]
IDLE_S = 15  # the stand-in's idle timeout (cluster/gpu.yaml: 10 minutes)
SEARCH = ["--demo", "--model", "test_efficientnet", "--no-pretrained", "--epochs", "2", "--batch-sizes", "16",
          "--image-sizes", "32", "--num-samples", "2", "--gpus-per-trial", "0"]  # seconds per trial, any laptop


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tune/cluster_local.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=REPO / "cluster" / "gpu.yaml", help="the cluster launcher's YAML "
                   "whose node types are stood in for (default: %(default)s)")
    p.add_argument("--results", type=Path, default=Path("results"), help="where the search's run folder goes "
                   "(default: %(default)s)")
    p.add_argument("--name", default=f"cluster-local-{time.strftime('%Y%m%d-%H%M%S')}", help="the run's name")
    p.add_argument("--keep", action="store_true", help="stay up after the search until Ctrl-C")
    p.add_argument("search", nargs=argparse.REMAINDER, help="after --: options for tune/search.py "
                   f"(default: {' '.join(SEARCH)})")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="tbray-cluster-"))

    def body() -> int:
        address, dashboard = fakecluster.up(args.config, folder, idle_timeout_minutes=IDLE_S / 60)
        print(f"tbray: {fakecluster.describe(address, folder)}")
        print(f"tbray: Ray dashboard at {dashboard}; it asks for the token in {Path.home() / '.ray' / 'auth_token'}")
        print(f"tbray: nodes now: {fakecluster.active_nodes(address)}")
        extra = [a for a in args.search if a != "--"] or SEARCH
        env = {**os.environ, "RAY_AUTH_MODE": "token", "TBRAY_AUTOSCALING_CONFIG": str(folder / "autoscaling.yaml")}
        command = [sys.executable, str(REPO / "tune" / "search.py"), "--address", address, "--storage",
                   str(folder / "shared"), "--worker-resource", f"{fakecluster.GPU_STAND_IN}=1",
                   "--results", str(args.results), "--name", args.name, *extra]
        print(f"tbray: {' '.join(command)}", flush=True)
        code = subprocess.run(command, env=env).returncode
        nodes, deadline = fakecluster.active_nodes(address), time.time() + IDLE_S + 240
        # A trial ASHA stopped early was killed before its Train run withdrew its request for nodes, which
        # then lasts until it expires (180 s in Ray 2.60): nodes can go idle that much later (docs/cluster.md).
        print(f"tbray: nodes after the search: {nodes}; idle ones go {IDLE_S} s after Ray Train's last request "
              "for them ends (up to 3 minutes after a trial ASHA stopped)", flush=True)
        while len(nodes) > 1 and time.time() < deadline:
            time.sleep(5)
            nodes = fakecluster.active_nodes(address)
        print(f"tbray: nodes now: {nodes}")
        for event_time, event in fakecluster.events(folder):
            print(f"  {event_time}  {event}")
        if args.keep:
            print("tbray: the cluster stays up; Ctrl-C stops it")
            while True:
                time.sleep(3600)
        return code

    try:
        return exits.run(body)
    finally:
        stopped = fakecluster.down(folder)
        shutil.rmtree(folder, ignore_errors=True)
        print(f"tbray: local cluster stopped ({stopped} process(es))", file=sys.stderr)
