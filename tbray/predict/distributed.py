"""Prediction across a Ray cluster with Ray Data (`tune/predict.py --address`).

The path list becomes a dataset; decoding runs as CPU tasks anywhere in the cluster, and scoring in a
pool of actors, each holding the model once: one GPU per actor when the cluster has (or can scale to)
GPUs, else CPU actors. Rows stream back to the driver and into one CSV or Parquet file, keyed by path
(Ray Data finishes blocks out of order). Every node must read the images at the paths given (shared
storage such as NFS, or a one-node cluster).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray
import ray.data

from tbray.data import stream
from tbray.data.dataset import images_under
from tbray.data.preprocess import Input
from tbray.errors import UserError
from tbray.predict import local
from tbray.predict.scorer import Model, Scorer
from tbray.rayops import cluster

FILES_PER_BLOCK = 512  # paths per input block: enough blocks to spread decoding, few enough to schedule cheaply


@dataclass(frozen=True)
class Pool:
    """The scoring actors: how many, and what each holds."""

    min_size: int  # actors kept up
    max_size: int  # actors Ray Data may scale to
    gpus: int  # per actor: 1 on a GPU cluster, else 0

    def describe(self) -> str:
        kind = "GPU" if self.gpus else "CPU"
        return f"{self.min_size}-{self.max_size} {kind} actor(s)"


def connect(address: str) -> bool:
    """Join (an address, "auto") or start ("local") a Ray; whether this call started it."""
    if ray.is_initialized():
        return False
    if address == "local":
        cluster.start_local(None)
        return True
    try:
        ray.init(address=address)
    except ConnectionError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address}: {exc}")
    return True


def pool() -> Pool:
    """One actor per GPU the cluster has or its autoscaler can bring; else CPU actors, a CPU left to decoding."""
    have = ray.cluster_resources()
    most = cluster.autoscaling_limits() or {}
    gpus = int(max(float(have.get("GPU", 0)), float(most.get("GPU", 0))))
    if gpus:
        return Pool(min_size=1, max_size=gpus, gpus=1)
    cpus = int(max(float(have.get("CPU", 1)), float(most.get("CPU", 0))))
    return Pool(min_size=1, max_size=max(1, cpus - 1), gpus=0)


def decode(batch: dict[str, np.ndarray], size: Input) -> dict[str, np.ndarray]:
    """Paths -> uint8 images at the model's size (zeros where unreadable), readable flags, reasons ('' if none)."""
    read = [stream.read(p, size) for p in batch["path"]]
    images = np.stack([img if img is not None else np.zeros((size.size, size.size), np.uint8) for img, _ in read])
    return {"path": batch["path"], "image": images, "readable": np.array([img is not None for img, _ in read]),
            "error": np.array([err or "" for _, err in read], dtype=object)}


class ScoreActor:
    """Holds the model once (on its GPU when it has one) and scores the batches it is sent."""

    def __init__(self, model: Model, threshold: float):
        self.scorer, self.threshold = Scorer(model), threshold

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        readable = batch["readable"].astype(bool)
        scores = self.scorer(batch["image"][readable]) if readable.any() else np.zeros(0)
        errors = [e or None for e in batch["error"]]
        frame = local.rows([str(p) for p in batch["path"]], readable, errors, scores, self.threshold)
        return pa.Table.from_pandas(frame, schema=local.SCHEMA, preserve_index=False)


def dataset(model: Model, paths: list[str], threshold: float, batch_size: int, actors: Pool) -> ray.data.Dataset:
    """The lazy pipeline: paths -> decoded batches -> P(TB) rows."""
    items = ray.data.from_items([{"path": p} for p in paths],
                                override_num_blocks=max(1, -(-len(paths) // FILES_PER_BLOCK)))
    images = items.map_batches(decode, fn_kwargs={"size": Input.of_model(model.facts)}, batch_size=batch_size,
                               num_cpus=1)
    return images.map_batches(ScoreActor, fn_constructor_kwargs={"model": model, "threshold": threshold},
                              batch_size=batch_size, num_gpus=actors.gpus, num_cpus=0 if actors.gpus else 1,
                              compute=ray.data.ActorPoolStrategy(min_size=actors.min_size, max_size=actors.max_size))


def predict_cluster(cfg: local.PredictConfig, model: Model) -> local.Results:
    """Score every image of `cfg` on the Ray cluster at cfg.address; rows written on the driver as they arrive."""
    files = [str(f) for f in images_under(cfg.images)]
    threshold = model.facts["threshold"] if cfg.threshold is None else cfg.threshold
    results = local.Results(cfg.out)
    started = connect(cfg.address)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = cfg.progress  # bars only on a terminal
        actors = pool()
        batch_size = cfg.batch_size or local.BATCH_SIZE["cuda" if actors.gpus else "cpu"]
        print(f"tbray: scoring {len(files)} file(s) on Ray ({actors.describe()}, {model.engine}), batches of "
              f"{batch_size}", file=sys.stderr)
        for frame in dataset(model, files, threshold, batch_size, actors).iter_batches(batch_format="pandas",
                                                                                     batch_size=None):
            results.add(frame)
    except BaseException:
        results.tmp.unlink(missing_ok=True)
        raise
    finally:
        if started:
            ray.shutdown()
    results.finish(cfg.images)
    return results
