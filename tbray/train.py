"""The per-worker training loop: runs inside each Ray Train worker of one trial.

Reads top to bottom: data, model, optimiser, resume, then epochs of train -> validate -> report.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
import time

import ray
import ray.train
import ray.train.torch
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from tbray import augment, metrics
from tbray import model as tbmodel
from tbray.config import TrialSpec
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


def worker_loop(spec: TrialSpec) -> None:
    """One trial's training on one Ray Train worker."""
    settings, params = spec.settings, spec.params
    epochs, lr, batch_size = params.epochs, params.lr, params.batch_size
    fail_at = injected_failure()
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(settings.seed + rank)
    device = ray.train.torch.get_device()
    node_id = ray.get_runtime_context().get_node_id()  # which node ran the trial, for the record
    mean, std = settings.mean, settings.std

    # Data: decoded once on the driver, one shared copy per node in the object store.
    data = ray.get(spec.data)
    train_loader, val_loader = loaders(data, batch_size, settings.eval_batch_size, settings.seed)
    labels = data["train"]["labels"]
    # Weighted loss for the ~5:1 Normal:TB imbalance, so a constant "Normal" answer isn't a minimum.
    pos_weight = torch.tensor((labels == 0).sum() / max(1, (labels == 1).sum()), dtype=torch.float32, device=device)

    # Model and optimiser; pretrained weights come resolved from the driver, never downloaded here.
    weights = ray.get(spec.weights) if spec.weights is not None else None
    model = tbmodel.create(settings.model, weights).to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=params.weight_decay)

    # Resume: after a worker failure or an interrupted search, carry on from the latest checkpoint.
    start_epoch, best_so_far = 0, None
    if checkpoint := ray.train.get_checkpoint():
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(directory)
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best_so_far = state["epoch"], state.get("best_so_far")

    # Trial start-up cost (worker group, imports, data, model, weights), reported with every epoch.
    startup_s = time.time() - spec.started
    steps_per_epoch = len(train_loader)
    total_steps, warmup_steps = epochs * steps_per_epoch, max(1, int(settings.warmup_epochs * steps_per_epoch))
    schedule = functools.partial(lr_at, total_steps=total_steps, warmup_steps=warmup_steps, base_lr=lr)
    for epoch in range(start_epoch, epochs):
        if fail_at == (epoch + 1, batch_size):
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
        best_so_far = better(row[settings.metric], best_so_far, settings.mode)
        row[f"best_{settings.metric}"] = best_so_far  # what Optuna and ASHA see: the trial's best epoch so far
        report(row, None if rank else checkpoint_state(spec, model, optimizer, epoch + 1, best_so_far))


def better(value: float, best: float | None, mode: str) -> float:
    """The better of a new epoch's metric and the best so far (None before the first epoch)."""
    if best is None:
        return value
    return min(value, best) if mode == "min" else max(value, best)


def checkpoint_state(spec: TrialSpec, model, optimizer, epoch: int, best_so_far: float) -> dict:
    """What a checkpoint holds: enough to resume training, and to score images with no other file."""
    settings, params = spec.settings, spec.params
    return {"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
            "model_name": settings.model, "image_size": params.image_size, "mean": settings.mean,
            "std": settings.std, "best_so_far": best_so_far,
            "params": {"epochs": params.epochs, "batch_size": params.batch_size, "lr": params.lr,
                       "weight_decay": params.weight_decay}}


def injected_failure() -> tuple[int, int] | None:
    """Test hook, read here only: TBRAY_FAIL_AT=EPOCH:BATCH_SIZE makes trials of that batch size raise in
    that epoch. An environment variable, so no production type or option carries it; tbray forwards
    TBRAY_* variables to the Ray job it joins (tbray.cluster.connect)."""
    text = os.environ.get("TBRAY_FAIL_AT")
    if not text:
        return None
    epoch, batch_size = text.split(":")
    return int(epoch), int(batch_size)


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
