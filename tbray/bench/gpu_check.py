"""`make gpu-check`: one prepared run on one GPU that says where a search's GPU time goes; one table.

Four sections, in the order they run (about 7 minutes on one H200, estimated from the issue's figures; the
table says what it measured):
1. Bare-loop training images/s for each model at 224 px: tbray's own `train_epoch`, with the training
   arrays resident on the GPU (`ResidentBatches`) and through a pinned DataLoader.
2. The same model inside a one-trial Tune + Ray Train search (tbray's trial; train + validate per epoch).
3. GPU busy share (nvidia-smi, 5 samples a second) while searches pack 1, 2, 4 and 8 trials on the GPU,
   each through the real `tune/search.py`.
4. A 16-trial search on synthetic data the size of the real set (2,940 / 840 / 420 images, 224 px,
   10 epochs, ASHA's grace at 10 so every trial trains them all) at the packing that trained fastest in 3,
   its wall time set against the compute bound from 1's images/s.
Start-up is reported as the issue asks: start-up generations (trials per slot, in sequence) and their share
of the search's wall time.

`--smoke` runs the same code on a CPU at toy sizes (no GPU figures), to check the script before a GPU is lent.
"""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from tbray.bench.pipeline import Row

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Check:
    """What the check measures; the defaults are the GPU run, `smoke()` the CPU rehearsal."""

    models: tuple[str, ...] = ("tf_efficientnet_lite0", "efficientnet_b0")  # the search's model and timm's B0
    image_size: int = 224  # the search's default image size on a GPU
    batch_size: int = 128  # per trial; the search space's largest default batch
    packing: tuple[int, ...] = (1, 2, 4, 8)  # trials per GPU in section 3
    pack_epochs: int = 3  # epochs of each packed trial (section 3)
    search_trials: int = 16  # section 4
    search_epochs: int = 10  # section 4
    n_images: int = 4200  # the public set's size: 2,940 / 840 / 420 after the 70/20/10 split
    use_gpu: bool = True
    data_size: int = 256  # side of the synthetic PNGs (resized to image_size when cached)

    def smoke(self) -> "Check":
        return replace(self, models=("test_efficientnet",), image_size=32, batch_size=16, packing=(1, 2),
                       pack_epochs=2, search_trials=2, search_epochs=2, n_images=160, use_gpu=False, data_size=64)


def synthetic_arrays(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size), dtype=np.uint8), (rng.random(n) < 1 / 6).astype(np.int64)


def bare_images_per_s(model_name: str, check: Check, resident: bool, n: int = 2940) -> float:
    """Training images/s of tbray's train_epoch over one epoch of `n` images (a first epoch warms up)."""
    import torch
    from torch.utils.data import DataLoader

    from tbray.data.arrays import ArrayDataset, ResidentBatches, collate_batch
    from tbray.model import factory as tbmodel
    from tbray.train.worker import train_epoch

    device = torch.device("cuda" if check.use_gpu else "cpu")
    images, labels = synthetic_arrays(n, check.image_size)
    model = tbmodel.create(model_name).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    if resident:
        batches = ResidentBatches(images, labels, check.batch_size, 0, device)
    else:
        batches = DataLoader(ArrayDataset(images, labels), batch_size=check.batch_size, shuffle=True, drop_last=True,
                             collate_fn=collate_batch, pin_memory=device.type == "cuda")
    pos_weight = torch.tensor(5.0, device=device)
    timings = []
    for epoch in range(2):  # the first pays cuDNN's autotuning and the allocator's growth
        start = time.perf_counter()
        train_epoch(model, batches, optimizer, lambda step: 1e-4, epoch * len(batches), pos_weight, device, 0.5, 0.5)
        timings.append(time.perf_counter() - start)  # train_epoch ends on .item(): the GPU has finished
    return len(batches) * check.batch_size / timings[-1]


def in_search_images_per_s(model_name: str, check: Check) -> float:
    """Training + validation images/s of a one-trial Tune + Ray Train search over tbray's trial (epochs 2-3)."""
    import ray

    from tbray.bench import regime
    from tbray.data.preprocess import Input

    plan = regime.Regime(model=model_name, image_size=check.image_size, batch_size=check.batch_size, epochs=3,
                         cpus=1, use_gpu=check.use_gpu)
    refs = {"data": {Input(check.image_size): ray.put(regime.synthetic_data(plan))}, "weights": None}
    history = regime.train_trial(plan, refs)["history"].drop_duplicates("epoch", keep="last")
    return (regime.TRAIN_IMAGES + regime.VAL_IMAGES) / float(history["epoch_s"].iloc[1:].median())


class GpuSampler:
    """nvidia-smi's utilisation, 5 samples a second, while a block runs; nothing where nvidia-smi is absent."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()

    def __enter__(self) -> "GpuSampler":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"]
        while not self._stop.is_set():
            try:
                self.samples.append(float(subprocess.run(query, capture_output=True, text=True, timeout=5).stdout))
            except (OSError, ValueError, subprocess.SubprocessError):
                return
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def busy(self) -> tuple[float, float]:
        """(share of samples with the GPU busy, mean utilisation %), NaN when nothing was sampled."""
        if not self.samples:
            return float("nan"), float("nan")
        values = np.asarray(self.samples)
        return float((values > 0).mean()), float(values.mean())


def search(check: Check, data: Path, results: Path, name: str, trials: int, epochs: int, per_gpu: int,
           model: str) -> dict:
    """One real `tune/search.py` run; its wall time, GPU samples, history and start-up figures."""
    gpus = f"{1 / per_gpu:.4g}" if check.use_gpu else "0"
    args = [sys.executable, str(REPO / "tune" / "search.py"), "--data", str(data), "--results", str(results),
            "--name", name, "--model", model, "--no-pretrained", "--image-sizes", str(check.image_size),
            "--batch-sizes", str(check.batch_size), "--epochs", str(epochs), "--grace-period", str(epochs),
            "--num-samples", str(trials), "--max-concurrent", str(per_gpu), "--gpus-per-trial", gpus]
    start = time.time()
    with GpuSampler() as gpu:
        done = subprocess.run(args, capture_output=True, text=True)
    wall = time.time() - start
    if done.returncode != 0:
        raise RuntimeError(f"search {name} failed ({done.returncode}): {done.stderr[-1500:]}")
    history = pd.read_csv(results / name / "history.csv", dtype={"trial_id": str})
    first = history.sort_values("epoch").groupby("trial_id").first()
    n_train = int((pd.read_csv(results / name / "split.csv")["split"] == "train").sum())
    return {"wall_s": wall, "busy": gpu.busy(), "generations": math.ceil(trials / per_gpu), "n_train": n_train,
            "startup_s": float(first["startup_s"].median()), "trained": float(len(history) * n_train)}


def run(check: Check) -> list[Row]:
    """Every section, in order; the rows of the table."""
    import ray

    from tbray.data import demo

    rows, bare = [], {}
    for model in check.models:
        for resident in (True, False):
            ips = bare_images_per_s(model, check, resident)
            bare.setdefault(model, ips)  # the resident figure: the compute bound below is taken from it
            rows.append(Row(f"bare loop, {model} {check.image_size} px, batch {check.batch_size}, "
                            f"{'resident on the device' if resident else 'pinned DataLoader'}", ips, "images/s",
                            "tbray's train_epoch, second of two epochs"))
    ray.init(include_dashboard=True, configure_logging=False, log_to_driver=False)  # Train V2 needs the dashboard
    try:
        for model in check.models:
            rows.append(Row(f"one-trial Tune + Ray Train search, {model}", in_search_images_per_s(model, check),
                            "images/s", "train + validate, epochs 2-3 of 3 (tbray's trial, data path auto)"))
    finally:
        ray.shutdown()
    work = Path(tempfile.mkdtemp(prefix="tbray-gpu-check-"))
    data = demo.make(work / "data", n_images=check.n_images, size=check.data_size)
    model = check.models[0]
    best = None
    for per_gpu in check.packing:
        found = search(check, data, work / "results", f"pack{per_gpu}", per_gpu, check.pack_epochs, per_gpu, model)
        share, mean = found["busy"]
        speed = found["trained"] / found["wall_s"]  # training images per second of search wall time
        rows.append(Row(f"{per_gpu} trial(s) per GPU, {model}, {check.pack_epochs} epochs each: GPU busy", share, "share",
                        f"mean utilisation {mean:.3g}%; search wall {found['wall_s']:.3g} s; {speed:.3g} training "
                        "images/s of wall time"))
        best = max(best or (per_gpu, speed), (per_gpu, speed), key=lambda pair: pair[1])
    per_gpu = best[0]
    found = search(check, data, work / "results", "full", check.search_trials, check.search_epochs, per_gpu, model)
    bound = check.search_trials * check.search_epochs * found["n_train"] / bare[model]
    startup = found["generations"] * found["startup_s"]
    rows += [
        Row(f"{check.search_trials}-trial search, {check.search_epochs} epochs, {per_gpu} per GPU (fastest above)",
            found["wall_s"], "s", f"compute bound {bound:.3g} s from the bare loop's resident images/s "
            f"(training only); wall / bound {found['wall_s'] / bound:.3g}x; GPU busy share {found['busy'][0]:.3g}"),
        Row("  start-up generations (trials per slot, in sequence)", found["generations"], "",
            f"median trial start-up {found['startup_s']:.3g} s: {startup:.3g} s, "
            f"{startup / found['wall_s']:.3g} of the search's wall time"),
    ]
    return rows
