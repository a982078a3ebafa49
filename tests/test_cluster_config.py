"""cluster/gpu.yaml: Ray's own launcher validation, offline, plus the facts the setup relies on.

No cluster is started and nothing touches the network or AWS: Ray's prepare_config only merges the
file with the AWS defaults.yaml bundled in the ray package (AWS is first contacted by `ray up`'s
bootstrap step, which these tests never call).
"""

from __future__ import annotations

import copy
import re
import socket
import threading
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "cluster" / "gpu.yaml"
PYPROJECT = ROOT / "pyproject.toml"
RAY_PORTS = (6379, 8265, 10001)  # GCS, dashboard / Jobs API, Ray client server
GPU_FAMILY = re.compile(r"^(g\d|p\d|gr\d)", re.IGNORECASE)
# RAM (GiB) of the instance types this file uses, for the shared-memory check.
INSTANCE_RAM_GIB = {"m5.2xlarge": 32, "g5.xlarge": 16, "g5.2xlarge": 32, "g5.12xlarge": 192}


@pytest.fixture
def cfg() -> dict:
    return yaml.safe_load(CONFIG.read_text())


@pytest.fixture
def text() -> str:
    return CONFIG.read_text()


@pytest.fixture
def offline(monkeypatch):
    """Fail loudly if this test opens a connection, and hide any AWS credentials.

    Only the test's own thread is refused: background threads of a Ray session that other tests
    started in this process keep working.
    """
    me = threading.get_ident()

    def guard(original):
        def wrapper(*args, **kwargs):
            if threading.get_ident() == me:
                raise AssertionError(f"network access attempted: {args[1:]!r}")
            return original(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(socket.socket, "connect", guard(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guard(socket.socket.connect_ex))
    monkeypatch.setattr(socket, "create_connection", guard(socket.create_connection))
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws/config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws/credentials")


def _validate(config: dict) -> dict:
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _non_comment_text(text: str) -> str:
    """The YAML without comments (a '#' at line start or after whitespace starts one)."""
    return "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in text.splitlines())


def _head(cfg: dict) -> dict:
    return cfg["available_node_types"][cfg["head_node_type"]]


def _workers(cfg: dict) -> dict:
    return {name: t for name, t in cfg["available_node_types"].items() if name != cfg["head_node_type"]}


def _run_options(cfg: dict) -> list[str]:
    docker = cfg["docker"]
    opts = list(docker.get("run_options", [])) + list(docker.get("head_run_options", []))
    opts += list(docker.get("worker_run_options", []))
    for node_type in cfg["available_node_types"].values():
        opts += list(node_type.get("docker", {}).get("worker_run_options", []))
    return opts


def _bytes(size: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([bkmg]?)b?", size.strip().strip("'\"").lower())
    assert m, f"unreadable --shm-size {size!r}"
    return int(float(m.group(1)) * 1024 ** "bkmg".index(m.group(2) or "b"))


# --- Ray's own validator ------------------------------------------------------------------------


def test_passes_rays_validator_offline(cfg, offline):
    prepared = _validate(cfg)
    assert prepared["provider"]["type"] == "aws"
    # prepare_config merged in the bundled defaults without dropping our choices.
    assert prepared["head_node_type"] in prepared["available_node_types"]
    assert prepared["docker"]["image"] == cfg["docker"]["image"]


def test_unknown_top_level_key_is_rejected(cfg, offline):
    bad = copy.deepcopy(cfg)
    bad["idle_timeout_minuts"] = 5  # typo of a real key
    with pytest.raises(jsonschema.ValidationError, match="idle_timeout_minuts"):
        _validate(bad)


def test_unknown_key_inside_a_node_type_is_rejected(cfg, offline):
    bad = copy.deepcopy(cfg)
    worker = next(iter(_workers(bad)))
    bad["available_node_types"][worker]["min_worker"] = 0  # typo of min_workers
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        _validate(bad)


# --- facts from the file ------------------------------------------------------------------------


def test_image_is_ray_gpu_image_of_the_installed_and_pinned_ray(cfg):
    image = cfg["docker"]["image"]
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3\d+-(gpu|cu\d+)", image)
    assert m, f"{image!r} is not a versioned rayproject/ray GPU tag"
    assert m.group(1) == ray.__version__, f"image has Ray {m.group(1)}, installed is {ray.__version__}"
    for key in ("head_image", "worker_image"):
        assert key not in cfg["docker"], f"docker.{key} would run a different image"
    if not PYPROJECT.exists():
        pytest.skip("no pyproject.toml: only the installed Ray was compared")
    pins = re.findall(r"""["']ray(?:\[[^\]]*\])?\s*==\s*([0-9][^"';,\s]*)""", PYPROJECT.read_text())
    assert pins, "pyproject.toml does not pin ray exactly (ray[...]==X)"
    assert set(pins) == {m.group(1)}, f"pyproject pins ray {pins}, image has {m.group(1)}"


def test_head_has_no_gpu_and_offers_no_cpu(cfg):
    head = _head(cfg)
    assert head["resources"].get("CPU") == 0, "head must advertise CPU 0 so no trial/worker lands there"
    assert head["resources"].get("GPU", 0) == 0
    assert not GPU_FAMILY.match(head["node_config"]["InstanceType"]), "head instance type has GPUs"
    assert head.get("max_workers", 0) == 0


def test_gpu_workers_scale_from_zero_and_idle_down(cfg):
    workers = _workers(cfg)
    assert workers, "no worker node type"
    for name, worker in workers.items():
        assert worker["resources"].get("GPU", 0) >= 1, f"{name} offers no GPU"
        assert worker["resources"].get("CPU", 0) >= 1, f"{name} offers no CPU for Train workers"
        assert GPU_FAMILY.match(worker["node_config"]["InstanceType"]), f"{name} is not a GPU instance"
        assert worker.get("min_workers", 0) == 0, f"{name} keeps GPU instances up while idle"
        assert worker.get("max_workers", 0) >= 1
    assert 0 < cfg["idle_timeout_minutes"] <= 30
    assert cfg["max_workers"] >= max(w["max_workers"] for w in workers.values())


def test_ray_ports_are_not_exposed(cfg, text):
    def permissions(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "IpPermissions":
                    yield from value
                else:
                    yield from permissions(value)
        elif isinstance(node, list):
            for item in node:
                yield from permissions(item)

    for rule in permissions(cfg):
        if str(rule.get("IpProtocol")) == "-1":
            raise AssertionError(f"ingress rule opens every port: {rule}")
        low, high = int(rule.get("FromPort", -1)), int(rule.get("ToPort", -1))
        opened = [p for p in RAY_PORTS if low <= p <= high]
        assert not opened, f"ingress rule opens {opened}: {rule}"

    # Also the raw text (outside comments): no ingress/port-publishing syntax near a Ray port.
    code = _non_comment_text(text)
    for key in ("IpPermissions", "FromPort", "ToPort", "CidrIp"):
        assert key not in code, f"{key} in cluster/gpu.yaml: security-group rules do not belong here"
    for opt in _run_options(cfg):
        assert not re.match(r"^(-p|--publish|-P|--publish-all)\b", opt.strip()), f"docker publishes ports: {opt}"
    for port in RAY_PORTS:
        for line in code.splitlines():
            if str(port) in line:
                # Only Ray's own start flags may name these ports.
                assert "ray start" in line, f"port {port} outside a ray start command: {line.strip()}"

    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start, "dashboard must listen on loopback only"
    assert "0.0.0.0" not in head_start


def test_no_credentials_or_bucket_names(cfg, text):
    lowered = text.lower()
    for key in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
        assert key not in lowered, f"{key} in cluster/gpu.yaml"
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), "something like an AWS access key id"
    assert "s3://" not in _non_comment_text(text), "bucket names are passed with --storage, not here"
    assert "ssh_private_key" not in cfg.get("auth", {}), "a private key path is personal; leave it out"


def test_shared_memory_is_sized_for_the_object_store(cfg):
    shm = [o for o in _run_options(cfg) if o.strip().startswith("--shm-size")]
    assert shm, "--shm-size missing: Docker's 64 MB /dev/shm would push the object store to disk"
    size = min(_bytes(o.split("=", 1)[1] if "=" in o else o.split()[1]) for o in shm)
    # Ray's default object store is 30% of the node's RAM; /dev/shm must hold it on every node.
    for name, node_type in cfg["available_node_types"].items():
        ram = INSTANCE_RAM_GIB.get(node_type["node_config"]["InstanceType"])
        if ram is not None:
            assert size >= 0.3 * ram * 1024**3, f"--shm-size smaller than {name}'s default object store"
    assert "--ulimit nofile=65536:65536" in _run_options(cfg)


def test_every_node_tracks_train_state_and_uses_token_auth(cfg):
    # docker.run_options apply to the head and every worker container.
    opts = cfg["docker"]["run_options"]
    assert "--env RAY_TRAIN_ENABLE_STATE_TRACKING=1" in opts
    if "--env RAY_AUTH_MODE=token" in opts:
        # Token mode without the token on the nodes would stop `ray start`.
        assert cfg["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


def test_project_is_copied_and_installed_on_every_node(cfg):
    assert cfg["file_mounts"]["~/tbray"] == "."
    excluded = {p.strip("/") for p in cfg["rsync_exclude"]}
    assert {".venv", ".git", "results"} <= excluded
    assert "pip install -e ~/tbray" in cfg["setup_commands"]
    assert "worker_setup_commands" not in _head(cfg)
    for name, worker in _workers(cfg).items():
        # A node-level worker_setup_commands would replace the shared setup_commands.
        assert "worker_setup_commands" not in worker, name
    assert any("ray start --head" in c and "--autoscaling-config=~/ray_bootstrap_config.yaml" in c
               for c in cfg["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in cfg["worker_start_ray_commands"])
