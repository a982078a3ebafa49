"""cluster/gpu.yaml on one machine: Ray's fake multi-node autoscaler, for trying and testing the cluster path.

Ray ships a node provider for this (`provider: type: fake_multinode`, with RAY_FAKE_CLUSTER=1): the head
runs the real autoscaler, which starts each worker node as local processes when trials wait for one and
stops it after the idle timeout. `config` derives the cluster from cluster/gpu.yaml (its node types,
min and max workers), so what is exercised is what `ray up` would scale. A declared GPU would make Ray
Train call CUDA, which a laptop lacks, so each GPU becomes a custom resource standing in for it; a search
asks for it with `--worker-resource fake_gpu=1`.

`ray stop` stops every Ray on the machine (a test session's, another search's): `down` stops only the
processes that name this cluster's folder, the worker nodes its autoscaler started included.
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import yaml

from tbray.errors import UserError

GPU_STAND_IN = "fake_gpu"  # the custom resource a worker node offers for each GPU of its cluster/gpu.yaml type
HEAD_TYPE = "ray.head.default"  # the fake provider's name for the head node, whatever the YAML calls it
HEAD_NODE_ID = "f" * 51 + "00000"  # the head's Ray node id under the fake provider; workers count up from 00001
PROVIDER = {
    "type": "fake_multinode",
    "use_node_id_as_ip": True,  # every node is on this machine's one address; the autoscaler tells them apart by id
    "disable_node_updaters": True,  # nothing to install over SSH
    "disable_launch_config_check": True,
}


def config(launcher: dict, gcs_address: str, idle_timeout_minutes: float = 0.25) -> dict:
    """The cluster launcher's config (cluster/gpu.yaml, parsed) for the fake provider: the same worker types
    with the same min and max workers and CPUs, a GPU stand-in for each GPU, and a short idle timeout."""
    types = {}
    for name, node in launcher["available_node_types"].items():
        node = copy.deepcopy(node)
        resources = dict(node.get("resources") or {})
        if gpus := resources.pop("GPU", 0):
            resources[GPU_STAND_IN] = gpus
        node.update(resources=resources, node_config={})
        types[HEAD_TYPE if name == launcher["head_node_type"] else name] = node
    types[HEAD_TYPE]["max_workers"] = 0
    return {
        "cluster_name": f"{launcher['cluster_name']}-local", "max_workers": launcher.get("max_workers", 2),
        "upscaling_speed": launcher.get("upscaling_speed", 1.0), "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {**PROVIDER, "gcs_address": gcs_address}, "auth": {"ssh_user": "ubuntu"},
        "head_node_type": HEAD_TYPE, "available_node_types": types,
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


def up(gpu_yaml: Path, folder: Path, idle_timeout_minutes: float = 0.25) -> tuple[str, str]:
    """Start the head on loopback with its autoscaler; everything the cluster starts keeps its files
    under `folder` (down finds its processes by it). Returns the address to pass as --address, and the
    dashboard's URL."""
    port, dashboard_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    folder.mkdir(parents=True, exist_ok=True)
    launcher = yaml.safe_load(Path(gpu_yaml).read_text())
    (folder / "autoscaling.yaml").write_text(yaml.safe_dump(config(launcher, address, idle_timeout_minutes)))
    head = launcher["available_node_types"][launcher["head_node_type"]].get("resources") or {}
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_AUTH_MODE": "token"}
    done = subprocess.run([ray_cli(), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                           f"--num-cpus={int(head.get('CPU', 0))}", f"--num-gpus={int(head.get('GPU', 0))}",
                           f"--autoscaling-config={folder / 'autoscaling.yaml'}", f"--temp-dir={folder / 'ray'}",
                           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}"],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        down(folder)
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise UserError(f"the local cluster's head did not start (ray start exited {done.returncode}): {last}")
    return address, f"http://127.0.0.1:{dashboard_port}"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def down(folder: Path) -> int:
    """Stop every process of the cluster under `folder`: its head's, its autoscaler's and its worker nodes'.
    Returns how many there were."""
    mark, me = str(folder), psutil.Process()
    spared = {me.pid, *(p.pid for p in me.parents())}  # a shell or `timeout` that named the folder too
    found = [proc for proc in psutil.process_iter(["pid", "cmdline"])
             if proc.info["pid"] not in spared and any(mark in part for part in proc.info["cmdline"] or ())]
    for proc in found:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(found, timeout=15)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    return len(found)


def active_nodes(address: str) -> dict[str, int]:
    """What `ray status` says is up: node type -> count."""
    done = subprocess.run([ray_cli(), "status", f"--address={address}"], capture_output=True, text=True,
                          env={**os.environ, "RAY_AUTH_MODE": "token"}, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"ray status failed: {done.stderr.strip()[-500:]}")
    block = done.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return {name: int(n) for n, name in re.findall(r"^\s*(\d+)\s+(\S+)\s*$", block, flags=re.M)}


def events(folder: Path) -> list[tuple[str, str]]:
    """The autoscaler's event summary so far, (time, event): 'Adding 2 node(s) of type ...', 'Removing ...'."""
    lines = []
    for log in sorted((folder / "ray").glob("session_2*/logs/monitor.log")):  # not session_latest again
        for line in log.read_text(errors="replace").splitlines():
            if ":event_summary:" in line:
                lines.append((line[:23], line.split(":event_summary:", 1)[1].strip()))
    return lines


def ray_cli() -> str:
    """The `ray` command of this Python's environment (the one pinned in pyproject.toml)."""
    path = Path(sys.executable).with_name("ray")
    return str(path) if path.exists() else "ray"


def describe(address: str, folder: Path) -> str:
    """One line for the console: where the cluster is and what its autoscaler may start."""
    cfg = yaml.safe_load((folder / "autoscaling.yaml").read_text())
    workers = {name: node["resources"] for name, node in cfg["available_node_types"].items() if name != HEAD_TYPE}
    return f"local cluster at {address}; worker types {json.dumps(workers)}, up to {cfg['max_workers']} node(s)"
