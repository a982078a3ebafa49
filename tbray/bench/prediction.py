"""Benchmark of streaming prediction: images/s and peak memory, PyTorch against ONNX Runtime.

Each measurement runs in a fresh process (`measure_one`), so a peak resident set belongs to one engine
and one repeat: the main process's peak (getrusage) and the largest decoding worker's. The clock
starts after the model is built and one batch has warmed it up (CUDA kernels, ONNX Runtime's first
run), and stops when the last row is written: decode, resize, score and write, as tune/predict.py does.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tbray.data import dataset, demo, stream
from tbray.model import export, modelfile
from tbray.model import factory as tbmodel
from tbray.predict import local
from tbray.predict.scorer import Scorer, open_model


@dataclass(frozen=True)
class Setup:
    """What one benchmark scores."""

    folder: Path  # the synthetic images
    model_pt: Path  # a tbray model file (random weights: speed does not depend on them)
    model_onnx: Path  # its ONNX export
    n_images: int  # files in `folder`
    batch_size: int | None  # None: tune/predict.py's default for the device
    workers: int  # decoding processes


def prepare(root: Path, n_images: int, size: int, model_name: str, file_size: int) -> tuple[Path, Path, Path]:
    """Synthetic images written once, a model file at `size` px and its ONNX export."""
    folder = demo.make(Path(root) / "images", n_images=n_images, size=file_size)
    mean, std = tbmodel.gray_stats(model_name)
    saved = {"model": tbmodel.create(model_name).state_dict(), "model_name": model_name, "image_size": size,
             "mean": mean, "std": std, "threshold": 0.5}
    model_pt = modelfile.save_atomic(saved, Path(root) / "model.pt")
    return folder, model_pt, export.write(saved, Path(root) / "model.onnx")


def measure_one(model_path: Path, folder: Path, batch_size: int | None, workers: int) -> dict:
    """One timed prediction over the folder, in this process; what the parent prints."""
    scorer = Scorer(open_model(model_path))
    files = dataset.images_under([folder])
    batch_size = batch_size or local.BATCH_SIZE[scorer.device.type]
    warm = np.stack([stream.read(str(f), scorer.model.facts["image_size"])[0] for f in files[:batch_size]])
    scorer(warm)
    if scorer.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        results = local.Results(Path(out) / "rows.csv")
        start = time.perf_counter()
        for frame in local.frames(scorer, files, 0.5, batch_size, workers):
            results.add(frame)
        results.finish([folder])
        seconds = time.perf_counter() - start
    return {"where": scorer.where, "images": len(files), "seconds": seconds, "img_s": len(files) / seconds,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
            "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if scorer.device.type == "cuda" else None,
            "batch_size": batch_size}


def measure(setup: Setup, engine: str) -> dict:
    """`measure_one` in a fresh process (the bench command's --child mode)."""
    model = setup.model_onnx if engine == "onnx" else setup.model_pt
    args = [sys.executable, "-m", "tbray.commands.bench_predict", "--child", str(model), str(setup.folder),
            "--workers", str(setup.workers)]
    args += ["--batch-size", str(setup.batch_size)] if setup.batch_size else []
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{engine} run failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(runs: dict[str, list[dict]]) -> str:
    """One row per engine: images/s (mean, and the spread over repeats), peak memory."""
    lines = ["| engine | images/s, mean [min, max] | peak RSS, main process | peak RSS, one decoding worker "
             "| CUDA max allocated | batch |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for engine, rs in runs.items():
        rate = np.array([r["img_s"] for r in rs])
        cuda = max((r["cuda_mb"] or 0) for r in rs)
        lines.append(f"| {rs[0]['where']} | {rate.mean():.1f} [{rate.min():.1f}, {rate.max():.1f}] | "
                     f"{max(r['rss_mb'] for r in rs):,.0f} MB | {max(r['worker_rss_mb'] for r in rs):,.0f} MB | "
                     f"{f'{cuda:,.0f} MB' if cuda else 'n/a'} | {rs[0]['batch_size']} |")
    return "\n".join(lines)
