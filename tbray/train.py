"""The per-worker training loop: runs inside each Ray Train worker of one trial.

Reads top to bottom: data, model, optimiser, resume, then epochs of train -> validate -> report.
"""

from __future__ import annotations

import functools
import math
import tempfile
import time

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from tbray import augment, metrics
from tbray import model as tbmodel
from tbray.config import TrainSettings
from tbray.inference import ArrayDataset, collate_batch, load_checkpoint, save_checkpoint, score_loader


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up then cosine decay to zero over the trial's own epoch count."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def loaders(data: dict, batch_size: int, eval_batch_size: int, seed: int) -> tuple:
    """Training loader (sharded by Ray across workers) and the full validation loader."""
    world = ray.train.get_context().get_world_size()
    per_worker = max(1, batch_size // world)  # batch_size is the trial's global batch
    train = DataLoader(ArrayDataset(**data["train"]), batch_size=per_worker, shuffle=True, drop_last=True,
                       collate_fn=collate_batch, generator=torch.Generator().manual_seed(seed),
                       pin_memory=torch.cuda.is_available())  # pinned pages let the copy overlap compute
    train = ray.train.torch.prepare_data_loader(train)
    # Every worker scores the whole (small) validation set, so all ranks report identical metrics
    # without padding duplicates that a DistributedSampler would add.
    val = DataLoader(ArrayDataset(**data["val"]), batch_size=eval_batch_size, collate_fn=collate_batch)
    return train, val


def worker_loop(config: dict) -> None:
    """One trial's training on one Ray Train worker."""
    s: TrainSettings = config["settings"]
    epochs, lr, batch_size = config["epochs"], config["lr"], config["batch_size"]
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(s.seed + rank)
    device = ray.train.torch.get_device()
    node_id = ray.get_runtime_context().get_node_id()  # which node ran the trial, for the record
    mean, std = float(np.mean(s.mean)), float(np.mean(s.std))

    # Data: decoded once on the driver, one shared copy per node in the object store.
    data = ray.get(config["data"])
    train_loader, val_loader = loaders(data, batch_size, s.eval_batch_size, s.seed)
    labels = data["train"]["labels"]
    # Weighted loss for the ~5:1 Normal:TB imbalance, so a constant "Normal" answer isn't a minimum.
    pos_weight = torch.tensor((labels == 0).sum() / max(1, (labels == 1).sum()), dtype=torch.float32, device=device)

    # Model and optimiser; pretrained weights come resolved from the driver, never downloaded here.
    weights = ray.get(config["weights"]) if config.get("weights") is not None else None
    model = tbmodel.create(s.model, weights).to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config["weight_decay"])

    # Resume: after a worker failure or an interrupted search, carry on from the latest checkpoint.
    start_epoch, best_so_far = 0, None
    if checkpoint := ray.train.get_checkpoint():
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(directory)
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best_so_far = state["epoch"], state.get("best_so_far")

    # Trial start-up cost (worker group, imports, data, model, weights), reported with every epoch.
    startup_s = time.time() - config.get("trial_start", time.time())
    steps_per_epoch = len(train_loader)
    total_steps, warmup_steps = epochs * steps_per_epoch, max(1, int(s.warmup_epochs * steps_per_epoch))
    schedule = functools.partial(lr_at, total_steps=total_steps, warmup_steps=warmup_steps, base_lr=lr)
    for epoch in range(start_epoch, epochs):
        if s.fail_batch_size == batch_size and s.fail_at_epoch == epoch + 1:
            raise RuntimeError(f"injected failure (test hook) at epoch {epoch + 1}, batch size {batch_size}")
        if ray.train.get_context().get_world_size() > 1:
            train_loader.sampler.set_epoch(epoch)  # DistributedSampler reshuffles only when told

        # Train one epoch on the trial's LR schedule.
        epoch_start = time.time()
        train_loss = train_epoch(model, train_loader, optimizer, schedule, epoch * steps_per_epoch, pos_weight,
                                 device, mean, std)

        # Validate and report; rank 0 alone writes the checkpoint, all ranks report the same metrics.
        scores, val_labels, val_loss = score_loader(model, val_loader, device, mean, std)
        row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "startup_s": startup_s,
               "epoch_s": time.time() - epoch_start, "node_id": node_id,
               **{f"val_{k}": v for k, v in metrics.epoch_metrics(val_labels, scores).items()}}
        if best_so_far is None or (row[s.metric] < best_so_far if s.mode == "min" else row[s.metric] > best_so_far):
            best_so_far = row[s.metric]
        row[f"best_{s.metric}"] = best_so_far  # what Optuna and ASHA see: the trial's best epoch so far
        state = None if rank else {
            "model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
            "model_name": s.model, "image_size": int(data["val"]["images"].shape[-1]), "mean": mean, "std": std,
            "best_so_far": best_so_far,
            "params": {k: config[k] for k in ("epochs", "batch_size", "lr", "weight_decay")}}
        report(row, state)


def train_epoch(model, loader, optimizer, schedule, first_step: int, pos_weight, device, mean: float,
                std: float) -> float:
    """One pass over the training shard; the loss sum stays on the device so no step waits for the host."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    for i, (x, y) in enumerate(loader):
        for group in optimizer.param_groups:
            group["lr"] = schedule(first_step + i)
        x = augment.prepare(x.to(device, non_blocking=True), mean, std, train=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x).float().squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits, y.to(device).float(), pos_weight=pos_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach()
    return loss_sum.item() / max(1, len(loader))


def report(row: dict, state: dict | None) -> None:
    """Report one epoch to Ray Train, with a checkpoint when this worker holds the state to save."""
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if state is not None:
            save_checkpoint(directory, state)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(row, checkpoint=checkpoint)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DistributedDataParallel, whose state dict loads anywhere."""
    return model.module if hasattr(model, "module") else model
