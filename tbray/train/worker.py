"""The per-worker training loop: runs inside each Ray Train worker of one trial.

Reads top to bottom: data, model, optimiser, resume, then epochs of train -> validate -> report.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from tbray.config import objective
from tbray.data.arrays import ArrayDataset, EpochPermutation, ResidentBatches, collate_batch, nbytes
from tbray.model import augment
from tbray.model import factory as tbmodel
from tbray.model.modelfile import load_checkpoint, save_checkpoint
from tbray.model import scoring
from tbray.model.scoring import score_loader
from tbray.stats import metrics, selection
from tbray.train.settings import TrialSpec


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up then cosine decay to zero over the trial's own epoch count."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def fold_data(data: dict, fold: int | None) -> dict:
    """The images a trial trains and validates on: all of them, or (leave-source-out) training without the
    left-out source and validation on it alone. Each part: images, labels, sources (codes; 0 if not given)."""
    parts = {}
    for part, arrays in data.items():
        codes = arrays.get("sources", np.zeros(len(arrays["labels"]), dtype=np.int64))
        if fold is None:  # the object store's shared copy, not one per worker
            parts[part] = {"images": arrays["images"], "labels": arrays["labels"], "sources": codes}
            continue
        keep = codes != fold if part == "train" else codes == fold
        parts[part] = {"images": arrays["images"][keep], "labels": arrays["labels"][keep], "sources": codes[keep]}
    return parts


RESIDENT_SHARE = 0.25  # of a GPU's free memory the arrays may take; the rest is for activations and packed trials


def resident(data: dict, device: torch.device, wanted: str) -> bool:
    """Whether this trial's arrays go to the device once ("auto": on a GPU, when they fit RESIDENT_SHARE)."""
    if wanted != "auto":
        return wanted == "resident"
    if device.type != "cuda":
        return False  # a CPU trial's arrays are in its memory already
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes(data) <= RESIDENT_SHARE * free


def loaders(data: dict, batch_size: int, eval_batch_size: int, seed: int, on_device: bool = False) -> tuple:
    """Training batches (sharded across workers) and the validation set: both on the device when
    `on_device`, else a training DataLoader (its sampler the same epoch order) and a validation loader."""
    context = ray.train.get_context()
    world = context.get_world_size()
    per_worker = max(1, batch_size // world)  # batch_size is the trial's global batch
    if on_device:
        device = ray.train.torch.get_device()
        train = ResidentBatches(data["train"]["images"], data["train"]["labels"], per_worker, seed, device,
                                context.get_world_rank(), world)
        val = {key: torch.from_numpy(np.array(data["val"][key])).to(device) for key in ("images", "labels")}
        return train, val
    train_set = ArrayDataset(data["train"]["images"], data["train"]["labels"])
    train = DataLoader(train_set, batch_size=per_worker, sampler=EpochPermutation(len(train_set), seed), drop_last=True,
                       collate_fn=collate_batch, generator=torch.Generator().manual_seed(seed),
                       pin_memory=torch.cuda.is_available())  # pinned pages let the copy overlap compute
    train = ray.train.torch.prepare_data_loader(train)
    # Every worker scores the whole (small) validation set, so all ranks report identical metrics
    # without padding duplicates that a DistributedSampler would add.
    # A generator of its own: a DataLoader without one draws its base seed from torch's global generator at
    # every pass, which would shift the next epoch's augmentation by the validation pass.
    val = DataLoader(ArrayDataset(data["val"]["images"], data["val"]["labels"]), batch_size=eval_batch_size,
                     collate_fn=collate_batch, generator=torch.Generator().manual_seed(seed))
    return train, val


@dataclass
class Ready:
    """A worker ready for its first epoch: what the epochs use, and where its start-up went."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_loader: DataLoader | ResidentBatches  # ResidentBatches: the arrays copied to the device once
    val_loader: DataLoader | dict  # dict: images and labels as tensors on the device
    pos_weight: torch.Tensor
    val_sources: np.ndarray  # each validation image's source code, for per-source figures
    start_epoch: int  # 0, or the epoch of the checkpoint this worker resumed from
    last_row: dict | None  # that checkpoint's epoch report (None before any, or from an older checkpoint)
    best_so_far: float | None  # the trial's best metric up to start_epoch (None before any epoch)
    startup: dict  # startup_<phase>_s: seconds per start-up phase, reported with the first epoch


def get_ready(spec: TrialSpec, entered: float, imported: float) -> Ready:
    """Data, model, optimiser and resume state, each phase timed (start-up is what a short GPU trial pays)."""
    settings, params = spec.settings, spec.params
    device = ray.train.torch.get_device()
    # Data: decoded once on the driver, one shared copy per node in the object store; pretrained weights
    # come resolved from the driver too, never downloaded here.
    data = fold_data(ray.get(spec.data), spec.fold)
    weights = ray.get(spec.weights) if spec.weights is not None else None
    fetched = time.time()
    on_device = resident({p: {k: v for k, v in a.items() if k != "sources"} for p, a in data.items()}, device,
                         settings.data_path)
    train_loader, val_loader = loaders(data, params.batch_size, settings.eval_batch_size, settings.seed, on_device)
    labels = data["train"]["labels"]
    # Weighted loss for the ~5:1 Normal:TB imbalance, so a constant "Normal" answer isn't a minimum.
    pos_weight = torch.tensor((labels == 0).sum() / max(1, (labels == 1).sum()), dtype=torch.float32, device=device)
    model = tbmodel.create(settings.model, weights).to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    # Fused AdamW (one kernel per step for all parameters) where the device has it; CPU steps stay as they were.
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay,
                                  fused=device.type == "cuda")

    # Resume: after a worker failure or an interrupted search, carry on from the latest checkpoint.
    start_epoch, best_so_far, last_row = 0, None, None
    if checkpoint := ray.train.get_checkpoint():
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(directory)
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best_so_far, last_row = state["epoch"], state.get("best_so_far"), state.get("row") or None
    startup = {"data_path": "resident" if on_device else "loader", "startup_worker_group_s": entered - spec.started, "startup_imports_s": imported - entered,
               "startup_data_s": fetched - imported, "startup_model_s": time.time() - fetched}
    return Ready(model, optimizer, train_loader, val_loader, pos_weight, data["val"]["sources"], start_epoch,
                 last_row, best_so_far, startup)


def worker_loop(spec: TrialSpec, entered: float | None = None) -> None:
    """One trial's training on one Ray Train worker; `entered`: when the worker function was called."""
    imported = time.time()
    settings, params = spec.settings, spec.params
    fail_at = injected_failure()
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(settings.seed + rank)
    device = ray.train.torch.get_device()
    node_id = ray.get_runtime_context().get_node_id()  # which node ran the trial, for the record
    ready = get_ready(spec, entered or imported, imported)
    model, optimizer, best_so_far = ready.model, ready.optimizer, ready.best_so_far
    if ready.start_epoch >= params.epochs:
        # Restored from the checkpoint of its last epoch (a kill between that checkpoint and Tune's record of
        # the trial's end): nothing is left to train, so say again what that epoch reported, and end.
        report(ready.last_row or {"epoch": ready.start_epoch,
                                  f"best_{trial_objective(settings, spec.fold)}": best_so_far}, None)
        return

    # Trial start-up cost (worker group, imports, data, model, weights), reported with every epoch.
    startup_s = time.time() - spec.started
    steps_per_epoch = len(ready.train_loader)
    total_steps, warmup_steps = params.epochs * steps_per_epoch, max(1, int(settings.warmup_epochs * steps_per_epoch))
    schedule = functools.partial(lr_at, total_steps=total_steps, warmup_steps=warmup_steps, base_lr=params.lr)
    for epoch in range(ready.start_epoch, params.epochs):
        if fail_at == (epoch + 1, params.batch_size):
            raise RuntimeError(f"injected failure (test hook) at epoch {epoch + 1}, batch size {params.batch_size}")
        if ray.train.get_context().get_world_size() > 1 and hasattr(ready.train_loader, "sampler"):
            ready.train_loader.sampler.set_epoch(epoch)  # DistributedSampler reshuffles only when told

        # Train one epoch on the trial's LR schedule, then validate.
        epoch_start = time.time()
        train_loss = train_epoch(model, ready.train_loader, optimizer, schedule, epoch * steps_per_epoch,
                                 ready.pos_weight, device, settings.mean, settings.std)
        scores, val_labels, val_loss = validate(model, ready.val_loader, device, settings)
        row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "startup_s": startup_s,
               "epoch_s": time.time() - epoch_start, "node_id": node_id,
               **{f"val_{k}": v for k, v in metrics.epoch_metrics(val_labels, scores).items()},
               **by_source(settings, spec.fold, val_labels, scores, ready.val_sources),
               **(ready.startup if epoch == ready.start_epoch else {})}
        goal = trial_objective(settings, spec.fold)
        previous, best_so_far = best_so_far, better(row[goal], best_so_far, settings.mode)
        row[f"best_{goal}"] = best_so_far  # what Optuna and ASHA see: the trial's best epoch so far
        # All ranks report the same metrics; rank 0 alone writes a checkpoint, and only on the epochs it must.
        save = rank == 0 and checkpoint_due(epoch + 1, params.epochs, settings.checkpoint_every,
                                            improved=best_so_far != previous)
        row["reported_at"] = time.time()  # MLflow's time of this epoch: the driver may take two results at once
        report(row, checkpoint_state(spec, model, optimizer, epoch + 1, best_so_far, row) if save else None)
        if save:
            hold_for_a_kill(epoch + 1)


@torch.no_grad()
def validate(model, val, device, settings) -> tuple:
    """P(TB), labels and mean loss of the validation set: from its loader, or (on the device) batch by batch
    with the scores kept there, so the host waits once per epoch rather than once per batch."""
    if not isinstance(val, dict):
        return score_loader(model, val, device, settings.mean, settings.std)
    model.eval()
    images, labels = val["images"], val["labels"]
    logits = torch.cat([scoring.logits(model, images[i:i + settings.eval_batch_size], device, settings.mean,
                                       settings.std) for i in range(0, len(labels), settings.eval_batch_size)])
    loss = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="sum") / max(1, len(labels))
    scores = torch.sigmoid(logits)
    return scores.cpu().numpy(), labels.cpu().numpy(), float(loss)  # the one host sync


def trial_objective(settings, fold: int | None) -> str:
    """What this Train run ranks its epochs by: the search's objective; a leave-source-out fold, its metric on
    the left-out source (the fold's trial averages the folds)."""
    return settings.metric if fold is not None else objective(settings.metric, settings.selection)


def by_source(settings, fold: int | None, labels, scores, codes) -> dict:
    """Per-source validation figures (val_<figure>/<source>) and, for worst-source, their worst (worst_val_*);
    for a leave-source-out fold, its left-out images' count and AUROC interval."""
    if fold is not None:  # a left-out source: how many images, and how sure its AUROC is
        return selection.left_out_detail(labels, scores, settings.seed)
    if len(settings.sources) < 2:
        return {}
    figures = selection.per_source(labels, scores, codes, list(settings.sources))
    return selection.flat(figures) | selection.worst_source(figures)


def checkpoint_due(epoch: int, epochs: int, every: int, improved: bool) -> bool:
    """Checkpoint when the search metric improved (the best epoch is always kept for the final test),
    every `every` epochs (bounds what a restarted worker retrains), and at the last epoch (a finished
    trial's final state)."""
    return improved or epoch % every == 0 or epoch == epochs


def better(value: float, best: float | None, mode: str) -> float:
    """The better of a new epoch's metric and the best so far (None before the first epoch)."""
    if best is None:
        return value
    return min(value, best) if mode == "min" else max(value, best)


def checkpoint_state(spec: TrialSpec, model, optimizer, epoch: int, best_so_far: float, row: dict | None = None) -> dict:
    """What a checkpoint holds: enough to resume training, to score images with no other file, and the
    epoch's report (`row`: numbers and words only), said again by a trial restored with no epoch left."""
    settings, params = spec.settings, spec.params
    return {"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
            "model_name": settings.model, "image_size": params.image_size, "mean": settings.mean,
            "std": settings.std, "best_so_far": best_so_far, "preprocess": params.preprocess, "crop": params.crop,
            "row": {k: v for k, v in (row or {}).items() if isinstance(v, (int, float, str))},
            "params": {"epochs": params.epochs, "batch_size": params.batch_size, "lr": params.lr,
                       "weight_decay": params.weight_decay}}


def injected_failure() -> tuple[int, int] | None:
    """Test hook, read here only: TBRAY_FAIL_AT=EPOCH:BATCH_SIZE makes trials of that batch size raise in
    that epoch. An environment variable, so no production type or option carries it; tbray forwards
    TBRAY_* variables to the Ray job it joins (tbray.rayops.cluster.connect)."""
    text = os.environ.get("TBRAY_FAIL_AT")
    if not text:
        return None
    epoch, batch_size = text.split(":")
    return int(epoch), int(batch_size)


def hold_for_a_kill(epoch: int) -> None:
    """Test hook, read here only: TBRAY_HOLD_AFTER=EPOCH:FILE makes the worker that has just reported a
    checkpoint at or after EPOCH write its pid and that epoch to FILE and wait there, so a test kills it at a known point
    rather than by timing luck. Once per search: a FILE already there means the kill has happened."""
    epoch_at, _, path = os.environ.get("TBRAY_HOLD_AFTER", "").partition(":")
    if not path or epoch < int(epoch_at) or os.path.exists(path):
        return
    with open(path + ".tmp", "w") as out:
        out.write(f"{os.getpid()} {epoch}")
    os.replace(path + ".tmp", path)
    time.sleep(600)  # the test kills this process well before


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
