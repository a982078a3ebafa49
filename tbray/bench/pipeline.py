"""Benchmarks that print one table: data path, training step, Ray Train overhead, trial start-up.

Everything is measured side by side in one run on one machine, after warm-up, so the ratios hold
even where absolute numbers don't (a busy CI box, a laptop, a GPU node).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from tbray.data import cache, dataset
from tbray.data.arrays import ArrayDataset, collate_batch
from tbray.model import augment
from tbray.model import factory as tbmodel

PUBLIC_IMAGES = 4200  # the public TB Chest Radiography Database: 3,500 Normal + 700 Tuberculosis
PUBLIC_TRAIN_IMAGES = round(PUBLIC_IMAGES * dataset.FRACTIONS["train"])  # 2,940: one epoch of a real search


@dataclass
class Row:
    what: str
    value: float
    unit: str
    note: str = ""


def naive_loader(root: Path, size: int, batch_size: int, workers: int) -> DataLoader:
    """The usual first pipeline: torchvision ImageFolder, PIL decode + resize + tensor per image, per epoch."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Grayscale(), transforms.Resize((size, size)), transforms.PILToTensor()])
    return DataLoader(datasets.ImageFolder(str(root), transform=tf), batch_size=batch_size, shuffle=True,
                      num_workers=workers, persistent_workers=workers > 0)


def cached_loader(images: np.ndarray, labels: np.ndarray, batch_size: int) -> DataLoader:
    """tbray's path: decoded once, uint8 in memory, whole batches sliced at a time."""
    return DataLoader(ArrayDataset(images, labels), batch_size=batch_size, shuffle=True, collate_fn=collate_batch)


def images_per_second(loader, device: torch.device, limit: int, prepare: bool) -> float:
    """Images/s over up to `limit` images, after one warm-up batch; `prepare` adds tbray's device step."""
    it = iter(loader)
    next(it)
    seen, start = 0, time.perf_counter()
    for x, _ in it:
        x = x.to(device, non_blocking=True)
        if prepare:
            x = augment.prepare(x, 0.5, 0.5, train=True)
        seen += len(x)
        if seen >= limit:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def data_path(root: Path, split, size: int, cache_dir: Path, workers: int, device: torch.device, limit: int) -> list[Row]:
    """Naive vs cached delivery of uint8 batches at one size, the on-device augmentation, the cache build."""
    naive = images_per_second(naive_loader(root, size, 32, workers), device, limit, prepare=False)
    start = time.perf_counter()
    arrays = cache.build(root, split, [size], cache_dir)
    build_s = time.perf_counter() - start
    images = np.ascontiguousarray(cache.load(arrays[size]))
    labels = split["label"].to_numpy()
    fast = images_per_second(cached_loader(images, labels, 32), device, limit * 20, prepare=False)
    augmented = images_per_second(cached_loader(images, labels, 32), device, limit * 20, prepare=True)
    return [Row(f"data path, naive ImageFolder ({workers} loader workers)", naive, "img/s", f"{size} px, decode + resize each epoch"),
            Row("data path, tbray cache (decoded once)", fast, "img/s", f"{size} px, x{fast / naive:.0f} the naive path"),
            Row("  + on-device augmentation and normalisation", augmented, "img/s", f"{device.type}, per-image affine + intensity"),
            Row("cache build (once per split and size)", build_s, "s", f"{len(split)} images, one decode each")]


def step_loop(model_name: str, state: dict | None, size: int, batch_size: int, steps: int, device) -> float:
    """Training images/s of the real step (augment, bf16 autocast on GPU, AdamW) after 2 warm-up steps."""
    model = tbmodel.create(model_name, state).to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, 256, (batch_size, size, size), dtype=torch.uint8, device=device)
    y = torch.randint(0, 2, (batch_size,), device=device).float()
    for i in range(steps + 2):
        if i == 2:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(augment.prepare(x, 0.5, 0.5, train=True)).float().squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def gpu_utilisation(fn) -> tuple[float, float]:
    """Run `fn` while sampling GPU utilisation (NVML); returns (fn's result, mean utilisation %)."""
    import threading

    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            try:
                samples.append(torch.cuda.utilization())
            except Exception:  # no NVML bindings: utilisation unknown
                return
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = fn()
    finally:
        stop.set()
        thread.join()
    return result, (float(np.mean(samples)) if samples else float("nan"))


def format_table(rows: list[Row]) -> str:
    """A markdown table, numbers to 3 significant figures."""
    lines = ["| measurement | value | unit | note |", "| --- | ---: | --- | --- |"]
    lines += [f"| {r.what} | {r.value:.3g} | {r.unit} | {r.note} |" for r in rows]
    return "\n".join(lines)


def split_for_bench(root: Path, min_side: int = 64):
    """Every usable image of the data set, as one 'train' split (the benchmark never evaluates)."""
    found = dataset.discover(root, min_side=min_side)
    return found.root, found.files.assign(split="train")


def _step_worker(config: dict) -> None:
    """The Ray Train worker of `in_ray_train`: the bare step loop, then one report."""
    import ray.train
    import ray.train.torch

    loop_start = time.time()
    state = ray.get(config["state"]["ref"]) if config["state"] else None
    device = ray.train.torch.get_device()
    img_s = step_loop(config["model"], state, config["image_size"], config["batch_size"], config["steps"], device)
    ray.train.report({"img_s": img_s, "startup_s": loop_start - config["t0"], "threads": torch.get_num_threads()})


def _step_trial(config: dict, loop: dict, state: dict, use_gpu: bool, cpus: int) -> None:
    """A Tune trial that runs `_step_worker` in a one-worker TorchTrainer, as tbray's trials run theirs."""
    import tempfile

    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trainer = TorchTrainer(
        _step_worker, train_loop_config={**loop, "t0": time.time(), "state": state},
        scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": cpus, **({"GPU": 1} if use_gpu else {})}),
        run_config=ray.train.RunConfig(name=f"bench-{tune.get_context().get_trial_id()}",
                                       storage_path=tempfile.mkdtemp(), callbacks=[TuneReportCallback()]),
    )
    trainer.fit()


def in_ray_train(model: str, weights: Path | None, image_size: int, batch_size: int, steps: int, use_gpu: bool,
                 cpus: int) -> dict:
    """The same step loop inside a one-worker TorchTrainer, launched from a Tune trial built as tbray's are."""
    import tempfile

    import ray
    from ray import tune

    from tbray.train import trainable as trainables

    state = tbmodel.pretrained_state(model, weights, True)[0]
    loop = {"model": model, "image_size": image_size, "batch_size": batch_size, "steps": steps}
    start = time.time()
    trainable = trainables.build(_step_trial, loop=loop, state={"ref": ray.put(state)}, use_gpu=use_gpu, cpus=cpus)
    grid = tune.Tuner(trainable, run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(), verbose=0)).fit()
    metrics = grid[0].metrics
    return {"img_s": metrics["img_s"], "startup_s": metrics["startup_s"], "threads": metrics["threads"],
            "trial_s": time.time() - start}
