"""Joining Ray, and checking that what a trial asks for exists before any trial starts.

Ray Train V2 retries starting a worker group forever when the cluster can't hold it, so a search that
asks for GPUs a cluster can never have would wait silently. We compare first and refuse in one line.
"""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ray
import yaml

from tbray.config import SearchConfig
from tbray.errors import UserError
from tbray.rayops import packing, reaper

# Where `ray up` leaves the launcher config on the head; cluster/gpu.yaml starts the autoscaler with it.
# A head started by hand (`ray start --autoscaling-config`, tbray.rayops.fakecluster) names its own here.
AUTOSCALING_CONFIG = Path("~/ray_bootstrap_config.yaml")
AUTOSCALING_CONFIG_ENV = "TBRAY_AUTOSCALING_CONFIG"
# Ray Train's controller polls its workers once per health check (every 2 s by default): a started
# worker group, each report and a finished run wait for the next poll. Polled every 0.25 s, a trial
# loses less of that (tune/bench.py measures start-up and wind-down). Set before Ray starts (or forwarded
# to a joined cluster's job); Train passes it on to its controller. The user's own value wins.
TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}


@dataclass(frozen=True)
class Plan:
    """How trials map onto the cluster."""

    workers_per_trial: int
    use_gpu: bool
    max_concurrent: int
    cluster_gpus: float
    cluster_cpus: float
    nodes: int
    gpus_per_worker: float = 1.0  # below 1: one worker on a share of a GPU, several trials per GPU

    def describe(self) -> str:
        kind = f"{self.workers_per_trial} GPU worker(s)" if self.use_gpu else f"{self.workers_per_trial} CPU worker"
        if self.use_gpu and self.gpus_per_worker < 1:
            kind = f"1 worker on {self.gpus_per_worker:g} GPU"
        return (f"each trial: {kind}; up to {self.max_concurrent} trial(s) at once on {self.nodes} node(s) "
                f"with {self.cluster_cpus:g} CPU(s), {self.cluster_gpus:g} GPU(s)")


def connect(cfg: SearchConfig) -> dict:
    """Join the cluster at --address (or RAY_ADDRESS), else start a local Ray with its dashboard."""
    # The dashboard's Train tab needs this before Ray starts; the dashboard itself is never turned
    # off, since Train V2's placement-group cleanup relies on the state API it serves.
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    session_dir = None  # only for a Ray started here
    for name, value in TRAIN_ENV.items():
        os.environ.setdefault(name, value)
    if ray.is_initialized():
        context = None
    elif cfg.address or os.environ.get("RAY_ADDRESS"):
        try:
            # Workers' log lines stay in the cluster's logs (`ray logs`, the dashboard), as on a local Ray.
            context = ray.init(address=cfg.address or os.environ["RAY_ADDRESS"], log_to_driver=False,
                               runtime_env=_forwarded_env())
        except ConnectionError as exc:
            raise UserError(f"cannot reach the Ray cluster at {cfg.address or os.environ['RAY_ADDRESS']}: {exc}")
    else:
        context = start_local(cfg.num_cpus)
        # A local Ray's session folder holds every process's log; tbray.search.console copies it into the run.
        session_dir = context.address_info.get("session_dir")
    url = getattr(context, "dashboard_url", None)
    if url:
        token = Path.home() / ".ray" / "auth_token"
        hint = f"; it asks for the token in {token}" if token.exists() else ""
        print(f"tbray: Ray dashboard at http://{url}{hint}")
    joined = bool(cfg.address or os.environ.get("RAY_ADDRESS"))  # only a cluster's head has its launcher config
    return {"resources": ray.cluster_resources(), "nodes": len([n for n in ray.nodes() if n["Alive"]]),
            "max_resources": autoscaling_limits(Path(os.environ.get(AUTOSCALING_CONFIG_ENV, AUTOSCALING_CONFIG)))
            if joined else None, "session_dir": session_dir}


def _forwarded_env() -> dict | None:
    """TBRAY_* variables set for this search and TRAIN_ENV, for the job's workers on a cluster it joins (a
    local Ray started here inherits them anyway)."""
    env = {k: v for k, v in os.environ.items() if k.startswith("TBRAY_") or k in TRAIN_ENV}
    return {"env_vars": env} if env else None


# Python processes a local Ray would start for nothing (measured on 2 CPUs: a 2-trial search peaked at
# 10 worker processes and the raylet warned). Ray prestarts one idle worker per CPU for the driver's
# tasks, but this driver runs no tasks and no actor took those workers over: they sat idle all search.
# Ray Train starts a preemption watcher per trial that polls for nodes being drained, which a single
# local machine never is. Both are Ray's own settings, read from the environment by every Ray process.
LEAN_LOCAL_RAY = {"RAY_prestart_worker_first_driver": "0", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}

_watchdogs = []  # the reapers of the local Rays this process started (a test session starts several)


def start_local(num_cpus: int | None):
    """A local Ray whose every process knows its own address.

    Ray's own actors (Train V2's placement-group cleaner among them) call the state API without an
    address; with a second local Ray on the machine (another search, a test session) it then refuses
    to guess, the cleaner dies, and a finished trial's placement group keeps its CPUs: the next trial
    waits forever. Measured here: a 3-trial search beside another local Ray stalled with 2.0 of 2.0
    CPUs reserved by placement groups of ended trials. So the GCS port is chosen first
    (RAY_GCS_SERVER_PORT) and RAY_ADDRESS, inherited by every Ray process this driver starts, names it;
    address="local" keeps ray.init from reading that RAY_ADDRESS as a cluster to join.
    """
    with socket.socket() as probe:  # a free port now; the GCS binds it a moment later
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name, value in TRAIN_ENV.items():  # inherited by every Ray process, the trials' among them
        os.environ.setdefault(name, value)
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    os.environ.update(LEAN_LOCAL_RAY)
    # The dashboard always: Train V2's placement-group cleanup works through the state API it serves.
    # Workers' and Train controllers' log lines go to the session's log files, not the console
    # (tbray.search.console copies them into the run folder); trial errors still reach it through Tune.
    try:
        context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, log_to_driver=False)
    except Exception as exc:  # Ray raises several types when a process it starts doesn't come up in time
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UserError(f"the local Ray did not start ({type(exc).__name__}: {first}); its logs are in "
                        f"{os.environ.get('RAY_TMPDIR', tempfile.gettempdir())}/ray/session_latest/logs. On a busy "
                        "machine this passes: try again, or ask for fewer CPUs with --num-cpus") from None
    tighten_token()
    # Held for the driver's lifetime: a watchdog acts when its pipe closes, and dropping the handle closes it.
    _watchdogs.append(reaper.watch(port))
    return context


def tighten_token(path: Path | None = None) -> bool:
    """Make Ray's auth token readable by its owner only (Ray writes ~/.ray/auth_token 644, and the users a
    loopback-only Ray still faces are exactly the other local ones). True if its mode was changed."""
    path = path or Path.home() / ".ray" / "auth_token"
    try:
        mode = path.stat().st_mode
        if mode & 0o077 and path.stat().st_uid == os.getuid():
            path.chmod(0o600)
            return True
    except OSError:
        pass
    return False


def autoscaling_limits(path: Path = AUTOSCALING_CONFIG) -> dict[str, float] | None:
    """The most of each resource the autoscaler may bring up, from the cluster launcher's YAML; None without it.

    A scale-from-zero cluster (cluster/gpu.yaml) has no GPU until a trial asks for one, so the check
    needs the autoscaler's limits, not what runs now. Ray reads them only through a private API, so
    this reads the config the head's autoscaler was started with (`--autoscaling-config`): each node
    type's resources times its max_workers (capped by the cluster's max_workers), the head's once.
    """
    try:
        config = yaml.safe_load(Path(path).expanduser().read_text())
        types = config["available_node_types"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    cap = config.get("max_workers", float("inf"))
    total: dict[str, float] = {}
    for name, node in types.items():
        count = 1 if name == config.get("head_node_type") else min(node.get("max_workers", 0), cap)
        for resource, amount in (node.get("resources") or {}).items():
            total[resource] = total.get(resource, 0) + count * float(amount)
    return total or None


def plan(cfg: SearchConfig, info: dict) -> Plan:
    """Workers per trial and concurrency from resource arithmetic; refuse what can never be scheduled."""
    have, most = info["resources"], info.get("max_resources") or {}
    reachable = lambda name: max(float(have.get(name, 0)), float(most.get(name, 0)))  # noqa: E731
    gpus = reachable("GPU")
    wanted = cfg.gpus_per_trial if cfg.gpus_per_trial is not None else (packing.DEFAULT_SHARE if gpus else 0)
    gpu_split = packing.split(wanted)  # refuses a fraction above 1 (DDP ranks on a shared GPU)
    if wanted > gpus:
        raise UserError(f"a trial asks for {wanted:g} GPU(s) but the cluster has {float(have.get('GPU', 0)):g} and can "
                        f"scale to {gpus:g}; use --gpus-per-trial {int(gpus)} or a cluster with GPUs")
    workers = gpu_split.workers
    # What one trial holds while it runs: its workers' CPUs, GPUs and custom resources.
    demand = {"CPU": cfg.cpus_per_worker * workers, "GPU": wanted,
              **{name: amount * workers for name, amount in cfg.worker_resources.items()}}
    for name, amount in demand.items():
        if amount > reachable(name):
            raise UserError(f"a trial asks for {name}={amount:g} but the cluster offers at most "
                            f"{reachable(name):g} to trials; lower the request or use a bigger cluster")
    # An autoscaling cluster may have only its head up now; its trials will still land on other nodes.
    if (info["nodes"] > 1 or most) and not cfg.storage:
        raise UserError(f"the cluster has {info['nodes']} node(s) and may grow, but no shared storage: pass --storage "
                        f"s3://bucket/prefix (or an NFS path mounted on every node) so checkpoints reach the driver")
    # Fractions: a packed trial never spans two GPUs, so count per GPU (0.3 -> 3 per GPU, not 3.33).
    fits = min(packing.trials_per_gpus(reachable(name), amount) if name == "GPU" else int(reachable(name) // amount)
               for name, amount in demand.items() if amount > 0)
    # Leave-source-out runs one Train run per source in each trial (tbray.train.driver.folds_trial).
    fits //= len(cfg.data) if cfg.selection == "leave-source-out" else 1
    return Plan(workers_per_trial=workers, use_gpu=wanted > 0, max_concurrent=cfg.max_concurrent or max(1, fits),
                cluster_gpus=float(have.get("GPU", 0)), cluster_cpus=float(have.get("CPU", 0)), nodes=info["nodes"],
                gpus_per_worker=gpu_split.gpus_per_worker or 1.0)

