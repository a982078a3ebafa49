"""The one evaluation of the best checkpoint on the held-out test split, at the end of a search.

The operating threshold is chosen on validation scores; the test split is scored once, here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pyarrow.fs
import ray
import torch

from tbray import cache, metrics, report, runfolder
from tbray import model as tbmodel
from tbray.config import SearchConfig
from tbray.errors import UserError
from tbray.train import ArrayDataset, collate_batch, load_checkpoint, predict


def load_best(checkpoint: str, cfg: SearchConfig) -> dict:
    """The checkpoint's contents, from the run folder or from shared storage."""
    filesystem = pyarrow.fs.FileSystem.from_uri(cfg.storage)[0] if cfg.storage and "://" in cfg.storage else None
    return load_checkpoint(_local_copy(checkpoint, filesystem))


def _local_copy(path: str, filesystem) -> Path:
    """A local folder holding the checkpoint (downloaded once when it lives on S3/GCS)."""
    if filesystem is None:
        return Path(path)
    target = Path(tempfile.mkdtemp(prefix="tbray-best-"))
    pyarrow.fs.copy_files(path, str(target), source_filesystem=filesystem)
    return target


def score(state: dict, images: dict[str, dict], batch_size: int = 128) -> dict[str, np.ndarray]:
    """P(TB) of each image set with the checkpoint's model, on the device this task was given."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = tbmodel.create(state["model_name"])
    model.load_state_dict(state["model"])
    model = model.to(device, memory_format=torch.channels_last)
    out = {}
    for name, part in images.items():
        loader = torch.utils.data.DataLoader(ArrayDataset(**part), batch_size=batch_size, collate_fn=collate_batch)
        out[name] = predict(model, loader, device, state["mean"], state["std"])[0]
    return out


def run(cfg: SearchConfig, prepared: runfolder.Prepared, arrays: dict, best: dict, plan, table: pd.DataFrame,
        history: pd.DataFrame) -> dict:
    """Score val (threshold) and test (once), save the best model, write every report file."""
    run_dir = runfolder.path(cfg)
    state = load_best(best["checkpoint"], cfg)
    size = int(state["image_size"])
    images = cache.load(arrays[size]) if size in arrays else None
    if images is None:
        raise UserError(f"best checkpoint uses image size {size}, which this run never decoded")
    parts = {name: cache.subset(prepared.split, images, name) for name in ("val", "test")}
    # On GPUs, scored where a trial's worker would run (a GPU node, not the CPU head); on CPUs, here,
    # in the driver, which holds the images already and needs no scheduling.
    if plan.use_gpu:
        scores = ray.get(ray.remote(num_gpus=1, num_cpus=0)(score).remote(state, parts))
    else:
        scores = score(state, parts)
    try:
        evaluation = metrics.evaluate_scores(parts["val"]["labels"], scores["val"], parts["test"]["labels"],
                                             scores["test"], target_sensitivity=cfg.target_sensitivity, seed=cfg.seed)
    except metrics.MetricsError as exc:
        raise UserError(str(exc))
    save_model(run_dir / "best_model.pt", state, best, evaluation)
    pd.DataFrame({"path": prepared.split.loc[prepared.split["split"] == "test", "path"].to_numpy(),
                  "label": parts["test"]["labels"], "score": scores["test"]}).to_csv(run_dir / "test_scores.csv", index=False)
    study = optuna.load_study(study_name="tbray", storage=f"sqlite:///{runfolder.study_path(cfg)}")
    return report.write(
        run_dir, evaluation=evaluation, val_labels=parts["val"]["labels"], val_scores=scores["val"],
        test_labels=parts["test"]["labels"], test_scores=scores["test"], trials=table, history=history,
        study=study, best=best, config=cfg.to_json(), data_summary=prepared.summary(),
    )


def save_model(path: Path, state: dict, best: dict, evaluation: dict) -> None:
    """The best model as one loadable file, with the threshold every later prediction must use."""
    payload = {k: state[k] for k in ("model", "model_name", "image_size", "mean", "std", "params")}
    payload |= {"threshold": float(evaluation["threshold"]), "trial_id": best["trial_id"], "epoch": best["epoch"]}
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
