"""The GPU-speed regime on any machine: a model and image size whose epoch over 2,940 images takes
seconds, so tbray's fixed costs (trial start-up, report, checkpoint) weigh as they do on a GPU.

Three runs side by side, repeated: a bare PyTorch loop, the same epochs as a one-trial Tune + Ray Train
search through tbray's own trial (tbray.train.driver.trial -> tbray.train.worker.worker_loop), and a plain Tune
function trial that only gets ready to train (its start-up is the yardstick for a Train trial's).

Kept light at the top (no torch): Tune unpickles `stamped_trial` and `plain_trial` in new processes.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import ray
from ray import tune

from tbray.data.preprocess import Input
from tbray.train.settings import TrainSettings

TRAIN_IMAGES = 2940  # one epoch of the public set's training split (tbray.bench.pipeline.PUBLIC_TRAIN_IMAGES)
VAL_IMAGES = 840  # its validation split


@dataclass(frozen=True)
class Regime:
    """What every run of the section trains: the same model, data, batches and epochs."""

    model: str = "test_efficientnet"  # timm's smallest EfficientNet: ~1-3 s an epoch at 32 px on 1 CPU core
    image_size: int = 32  # the GPU default (bench.py) is the search's model at 224 px instead
    batch_size: int = 32  # a batch size the search space offers
    epochs: int = 20  # a middle-length trial of the default space (10, 20, 30)
    cpus: int = 1  # CPUs (threads) of the one training process, the same in the bare loop and the worker
    use_gpu: bool = False  # one GPU for the training process in every run
    pretrained: bool = False  # random init: weights are a start-up cost only with --regime-pretrained
    checkpoint_every: int | None = None  # tbray's --checkpoint-every (None: tbray's default)
    weights: Path | None = None  # a weights file instead of the model's own pretrained weights (--weights)


def synthetic_data(regime: Regime, seed: int = 0) -> dict:
    """Random uint8 images with a ~5:1 label mix, in the layout tbray.data.cache.subset gives a trial."""
    rng = np.random.default_rng(seed)

    def part(n: int) -> dict:
        labels = (rng.random(n) < 1 / 6).astype(np.int64)
        return {"images": rng.integers(0, 256, (n, regime.image_size, regime.image_size), dtype=np.uint8),
                "labels": labels}

    return {"train": part(TRAIN_IMAGES), "val": part(VAL_IMAGES)}


def bare_run(regime: Regime, data: dict, weights: dict | None) -> float:
    """Wall seconds of the bare PyTorch loop, from model creation to the end: train + validate each epoch."""
    import torch
    from torch.utils.data import DataLoader

    from tbray.data.arrays import ArrayDataset, collate_batch
    from tbray.model import factory as tbmodel
    from tbray.model.scoring import score_loader
    from tbray.stats import metrics
    from tbray.train.worker import lr_at, train_epoch

    device = torch.device("cuda" if regime.use_gpu else "cpu")
    start = time.perf_counter()
    model = tbmodel.create(regime.model, weights).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    train = DataLoader(ArrayDataset(**data["train"]), batch_size=regime.batch_size, shuffle=True, drop_last=True,
                       collate_fn=collate_batch, pin_memory=regime.use_gpu)
    val = DataLoader(ArrayDataset(**data["val"]), batch_size=128, collate_fn=collate_batch)
    steps = len(train)
    pos_weight = torch.tensor(5.0, device=device)
    for epoch in range(regime.epochs):
        train_epoch(model, train, optimizer, lambda s: lr_at(s, regime.epochs * steps, steps, 1e-3), epoch * steps,
                    pos_weight, device, 0.5, 0.5)
        scores, labels, _ = score_loader(model, val, device, 0.5, 0.5)
        metrics.epoch_metrics(labels, scores)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def stamped_trial(config: dict, stamp: str, **kwargs) -> None:
    """tbray's trial, after noting when Tune's trial process got to run it (the bench's only addition)."""
    from tbray.train.driver import trial

    Path(stamp).write_text(repr(time.time()))
    trial(config, **kwargs)


def train_trial(regime: Regime, refs: dict) -> dict:
    """A one-trial Tune search over tbray's own Train trial; wall times and the trial's history."""
    settings = trial_settings(regime)
    stamp = Path(tempfile.mkdtemp()) / "entered"
    storage = tempfile.mkdtemp()
    from tbray.train import trainable as trainables  # here: Tune's trial processes unpickle this module

    trainable = trainables.build(stamped_trial, stamp=str(stamp), settings=settings, refs=refs,
                                 storage=f"{storage}/train", metric="val_loss", mode="min", max_failures=0)
    space = {"epochs": regime.epochs, "batch_size": regime.batch_size, "image_size": regime.image_size,
             "lr": 1e-3, "weight_decay": 1e-4}
    start = time.time()
    grid = tune.Tuner(trainable, param_space=space,
                      run_config=tune.RunConfig(storage_path=storage, verbose=0)).fit()
    wall = time.time() - start
    if grid[0].error is not None:
        raise RuntimeError(f"the benchmark's Train trial failed: {grid[0].error}")
    history = grid[0].metrics_dataframe
    return {"wall_s": wall, "entered_s": float(stamp.read_text()) - start, "history": history,
            **processes(start, start + wall)}


# The actors one Train trial starts, in the order they start (Ray's task events on this machine): Tune's
# trial, the queue through which Train's controller reports into it, the controller, then with the
# worker group a placement-group cleaner, a synchronization actor and the worker, and last a dataset
# manager (Train V2 starts one per run, datasets or not). Each is a Python process of its own.
PROCESSES = {"ImplicitFunc": "Tune's trial", "_QueueActor": "Tune's report queue",
             "TrainController": "Train's controller", "PlacementGroupCleaner": "Train's placement-group cleaner",
             "SynchronizationActor": "Train's synchronization actor", "RayTrainWorker": "the Train worker",
             "DatasetManager": "Train's dataset manager"}


def processes(start: float, end: float) -> dict:
    """For each actor of the trial: was its process new or taken from Ray's pool of idle workers, when
    (seconds after Tuner.fit) was the process ready, and when had the actor's __init__ run. From Ray's
    public state API (workers, and the task events of actor creation), after the trial has ended."""
    from ray.util.state import list_actors, list_tasks, list_workers

    address = ray.get_runtime_context().gcs_address
    query = {"address": address, "detail": True, "limit": 10000, "raise_on_missing_output": False}
    workers = list_workers(**query)
    inits = list_tasks(filters=[("type", "=", "ACTOR_CREATION_TASK")], **query)
    out = {}
    for cls in PROCESSES:
        pids = {a.pid for a in list_actors(filters=[("class_name", "=", cls)], **query)}
        mine = [w for w in workers if w.pid in pids and (w.worker_launch_time_ms or 0) / 1e3 < end
                and (not w.end_time_ms or w.end_time_ms / 1e3 > start)]
        if mine:
            w = min(mine, key=lambda w: w.worker_launch_time_ms)
            out[f"process_{cls}_new"] = float(w.worker_launch_time_ms / 1e3 >= start)
            out[f"process_{cls}_ready_s"] = w.start_time_ms / 1e3 - start
            done = [e["created_ms"] / 1e3 for t in inits if t.worker_pid == w.pid
                    for e in (t.events or []) if e["state"] == "FINISHED"]
            if done:
                out[f"process_{cls}_init_s"] = min(done) - start
    return out


def trial_settings(regime: Regime) -> TrainSettings:
    """TrainSettings as tbray.search.run would make them for this regime (checkpoint_every where supported)."""
    settings = TrainSettings(model=regime.model, num_workers=1, use_gpu=regime.use_gpu, cpus_per_worker=regime.cpus)
    if regime.checkpoint_every is not None and hasattr(settings, "checkpoint_every"):
        settings = replace(settings, checkpoint_every=regime.checkpoint_every)
    return settings


def plain_trial(config: dict, refs: dict, regime: Regime) -> None:
    """A Tune function trial without Ray Train: the same imports, data and model, then ready to train."""
    import torch

    from tbray.model import factory as tbmodel
    from tbray.train.worker import train_epoch  # noqa: F401  (the worker's imports, paid here too)

    data = ray.get(refs["data"][Input(regime.image_size)])
    weights = ray.get(refs["weights"]) if refs["weights"] is not None else None
    device = torch.device("cuda" if regime.use_gpu else "cpu")
    model = tbmodel.create(regime.model, weights).to(device, memory_format=torch.channels_last)
    torch.optim.AdamW(model.parameters(), lr=1e-3)
    tune.report({"ready": time.time(), "n": len(data["train"]["labels"])})


def plain_startup(regime: Regime, refs: dict) -> float:
    """Seconds from Tuner.fit() to a plain function trial ready to train."""
    resources = {"CPU": regime.cpus, **({"GPU": 1} if regime.use_gpu else {})}
    trainable = tune.with_resources(tune.with_parameters(plain_trial, refs=refs, regime=regime), resources)
    start = time.time()
    grid = tune.Tuner(trainable, run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(), verbose=0)).fit()
    if grid[0].error is not None:
        raise RuntimeError(f"the benchmark's plain trial failed: {grid[0].error}")
    return grid[0].metrics["ready"] - start


def checkpoint_write_s(regime: Regime, weights: dict | None) -> float:
    """Seconds to write one checkpoint file (model + AdamW state) as tbray.train.worker does, measured apart."""
    import torch

    from tbray.model import factory as tbmodel
    from tbray.model.modelfile import save_checkpoint

    model = tbmodel.create(regime.model, weights)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(2, 1, regime.image_size, regime.image_size)).sum().backward()
    optimizer.step()  # AdamW's two moment buffers exist only after a step
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        for _ in range(3):
            save_checkpoint(directory, {"model": model.state_dict(), "optimizer": optimizer.state_dict()})
        return (time.perf_counter() - start) / 3


def one_repeat(regime: Regime, data: dict, refs: dict, weights: dict | None) -> dict:
    """Bare loop, Train trial, plain trial, one after another; the figures the table reports."""
    bare = bare_run(regime, data, weights)
    train = train_trial(regime, refs)
    plain = plain_startup(regime, refs)
    h = train["history"].drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)
    epochs = len(h)
    startup = train["entered_s"] + float(h["startup_s"].iloc[0])
    # Tune's clock of each report: the gap between two reports is one epoch plus its report and checkpoint.
    gap = (h["time_total_s"].iloc[-1] - h["time_total_s"].iloc[0]) / max(1, epochs - 1)
    epoch_s = float(h["epoch_s"].iloc[1:].mean()) if epochs > 1 else float(h["epoch_s"].iloc[0])
    checkpoints = int(h["checkpoint_path"].notna().sum()) if "checkpoint_path" in h else epochs
    out = {"bare_s": bare, "trial_s": train["wall_s"], "ratio": train["wall_s"] / bare, "startup_s": startup,
           "entered_s": train["entered_s"], "to_first_epoch_s": float(h["startup_s"].iloc[0]),
           "plain_s": plain, "startup_ratio": startup / plain, "startup_share": startup / train["wall_s"],
           "epoch_s": epoch_s,
           "bare_epoch_s": bare / regime.epochs, "report_s": gap - epoch_s, "checkpoints": checkpoints,
           "tail_s": train["wall_s"] - startup - float(h["time_total_s"].iloc[-1] - h["time_total_s"].iloc[0])
           - float(h["epoch_s"].iloc[0])}
    # The worker's own start-up phases, where the training loop reports them (startup_<phase>_s).
    out |= {c: float(h[c].iloc[0]) for c in h if c.startswith("startup_") and c != "startup_s"}
    out |= {k: v for k, v in train.items() if k.startswith("process_")}
    return out


def _spread(values: list[float]) -> str:
    return f"median of {len(values)}; range {min(values):.3g}-{max(values):.3g}"


PHASES = {  # the worker's start-up phases, as train.worker_loop reports them in its first epoch
    "startup_worker_group_s": "  trial function -> worker process runs the loop (controller, worker group, DDP)",
    "startup_imports_s": "  imports in the worker (torch, timm, scikit-learn, tbray.train.worker)",
    "startup_data_s": "  data and weights from the object store",
    "startup_model_s": "  model, optimiser, loaders (prepare_model, prepare_data_loader)",
}


def table_rows(regime: Regime, repeats: list[dict], checkpoint_s: float) -> list:
    """The section's rows: medians over the repeats, each with its range; the two ratios scripts read."""
    from tbray.bench.pipeline import Row

    # Over the rounds that measured the key: Ray's state API may miss a process that had already ended.
    med = lambda key: float(np.median([r[key] for r in repeats if key in r]))  # noqa: E731
    spread = lambda key: _spread([r[key] for r in repeats if key in r])  # noqa: E731
    what = f"{regime.model} at {regime.image_size} px, batch {regime.batch_size}, {regime.epochs} epochs"
    rows = [
        Row(f"GPU-speed regime: bare PyTorch, train + validate each epoch ({what})", med("bare_s"), "s",
            f"model creation to the end; {spread('bare_s')}"),
        Row("GPU-speed regime: the same as a one-trial Tune + Ray Train search", med("trial_s"), "s",
            f"Tuner.fit wall, start-up included; {spread('trial_s')}"),
        Row("trial/bare ratio", med("ratio"), "x", f"target <= 1.5; {spread('ratio')}"),
        Row("trial start-up: Tuner.fit -> first epoch in the Train worker", med("startup_s"), "s", spread("startup_s")),
        Row("  Tuner.fit -> Tune's trial process runs the trial function", med("entered_s"), "s", spread("entered_s")),
        Row("  trial function -> first epoch in the worker", med("to_first_epoch_s"), "s", spread("to_first_epoch_s")),
    ]
    rows += [Row(label, med(key), "s", spread(key)) for key, label in PHASES.items() if key in repeats[0]]
    for cls, name in PROCESSES.items():
        seen = sum(f"process_{cls}_ready_s" in r for r in repeats)
        if seen:
            new = sum(r.get(f"process_{cls}_new", 0) for r in repeats)
            init = f"its __init__ done at {med(f'process_{cls}_init_s'):.3g} s; " if any(
                f"process_{cls}_init_s" in r for r in repeats) else ""
            rows.append(Row(f"  {name} process ready, after Tuner.fit", med(f"process_{cls}_ready_s"), "s",
                            f"{init}a new process in {new:.0f} of {seen} rounds seen (else one of Ray's idle "
                            f"workers); {spread(f'process_{cls}_ready_s')}"))
    rows += [
        Row("plain Tune function trial start-up: Tuner.fit -> ready to train", med("plain_s"), "s",
            f"same imports, data, model; no Ray Train; {spread('plain_s')}"),
        Row("start-up ratio", med("startup_ratio"), "x", f"Train trial / plain trial, for the record (the 2x target "
            f"is retired: Train V2's seven processes per trial have no public switch); {spread('startup_ratio')}"),
        Row("start-up share of a search's wall time", med("startup_share"), "",
            "each start-up generation (trials that follow one another on one slot) pays one trial start-up; a "
            f"search of N trials on S slots has about N/S generations, e.g. 16 on 4: 4, {4 * med('startup_s'):.3g} s; "
            f"{spread('startup_share')}"),
        Row("epoch in the Train worker (train + validate)", med("epoch_s"), "s",
            f"bare loop: {med('bare_epoch_s'):.3g} s; {spread('epoch_s')}"),
        Row("per epoch: ray.train.report + checkpointing", med("report_s"), "s",
            f"gap between reports - epoch; {med('checkpoints'):.0f} of {regime.epochs} epochs checkpointed; "
            f"{spread('report_s')}"),
        Row("  one checkpoint file written (model + AdamW state)", checkpoint_s, "s", "measured apart"),
        Row("after the last epoch: Train and Tune wind down", med("tail_s"), "s", spread("tail_s")),
    ]
    return rows


def measure(regime: Regime, repeats: int) -> list:
    """The whole section, on a Ray already started: data and weights put once, then `repeats` rounds."""
    from tbray.model import factory as tbmodel

    weights = tbmodel.pretrained_state(regime.model, regime.weights, regime.pretrained)[0]
    data = synthetic_data(regime)
    refs = {"data": {Input(regime.image_size): ray.put(data)}, "weights": ray.put(weights) if weights is not None else None}
    rounds = [one_repeat(regime, data, refs, weights) for _ in range(repeats)]
    return table_rows(regime, rounds, checkpoint_write_s(regime, weights))
