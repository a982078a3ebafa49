"""Scoring new images with a saved model, at the operating threshold saved with it, batch by batch.

Files stream through `tbray.data.stream` (a few batches in memory) to a `Scorer` (PyTorch on a GPU when there
is one, or ONNX Runtime), and each batch's rows go straight to a file, so neither images nor results
pile up in memory. `tbray.predict.distributed` runs the same rows across a Ray cluster.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from tbray import outputs
from tbray.data import dataset, stream
from tbray.data.preprocess import Input
from tbray.errors import UserError
from tbray.predict.scorer import Model, Scorer

COLUMNS = ["path", "p_tb", "prediction", "error", "threshold"]
SCHEMA = pa.schema([("path", pa.string()), ("p_tb", pa.float64()), ("prediction", pa.string()),
                    ("error", pa.string()), ("threshold", pa.float64())])
BATCH_SIZE = {"cuda": 256, "cpu": 32}  # default per device: a GPU is fed best in big batches; on a CPU
                                       # small ones score as fast and keep the activations' memory low


@dataclass
class PredictConfig:
    """One prediction run, as tune/predict.py parsed it."""

    model: Path  # best_model.pt, a calibrated copy, or model.onnx
    images: list[Path]  # files and folders
    out: Path | None = None  # .csv or .parquet; None: CSV on stdout
    threshold: float | None = None  # None: the model's own
    onnx: bool = False  # score with ONNX Runtime (implied by a .onnx model)
    batch_size: int | None = None  # None: BATCH_SIZE of the device
    workers: int = stream.DEFAULT_WORKERS  # decoding processes (single-process path)
    address: str | None = None  # a Ray cluster (or "local", "auto"): score there with Ray Data
    cam: Path | None = None  # also write a Grad-CAM overlay per scored image into this folder
    progress: bool = field(default_factory=lambda: sys.stderr.isatty())  # a bar only where a person watches


def threshold_origin(saved: dict) -> str:
    """Where the saved threshold came from, in words, for the user to see before trusting the calls."""
    if cal := saved.get("calibration"):
        return (f"site calibration on {cal['site_data']} ({cal['n']} images, {cal['n_tb']} TB, {cal['date']}; "
                f"there sensitivity {cal['sensitivity']:.3f}, specificity {cal['specificity']:.3f})")
    if src := saved.get("threshold_source"):
        return (f"the search's {src['kind']} ({src['n']} images, {src['n_tb']} TB; target sensitivity "
                f"{src['target_sensitivity']:.2f}); not calibrated for this site: see tune/calibrate.py")
    return "the model file (it has no record of how the threshold was chosen)"


def rows(paths: list[str], readable, errors: list, scores: np.ndarray, threshold: float) -> pd.DataFrame:
    """One batch's rows in file order: P(TB) and the call (Tuberculosis when P(TB) >= threshold) for
    each readable file, the reason for the others."""
    p = np.full(len(paths), np.nan)
    p[np.asarray(readable, dtype=bool)] = scores
    call = np.where(p >= threshold, "Tuberculosis", "Normal").astype(object)
    call[np.isnan(p)] = None
    return pd.DataFrame({"path": paths, "p_tb": p, "prediction": call, "error": list(errors),
                         "threshold": float(threshold)}, columns=COLUMNS)


def frames(scorer: Scorer, files: list[Path], threshold: float, batch_size: int | None = None,
           workers: int = stream.DEFAULT_WORKERS, progress: bool = False) -> Iterator[pd.DataFrame]:
    """Each batch's rows as soon as it is scored."""
    model = scorer.model
    batch_size = batch_size or BATCH_SIZE[scorer.device.type]
    print(f"tbray: scoring {len(files)} file(s) with {scorer.where}, batches of {batch_size}", file=sys.stderr)
    loader = stream.batches([str(f) for f in files], Input.of_model(model.facts), batch_size, workers,
                            pin_memory=scorer.device.type == "cuda")
    with tqdm(total=len(files), unit="img", file=sys.stderr, disable=not progress) as bar:
        for batch in loader:
            scores = scorer(batch.images) if len(batch.images) else np.zeros(0)
            yield rows(batch.paths, batch.readable, batch.errors, scores, threshold)
            bar.update(len(batch.paths))


def run(model: Model, paths: list[Path], threshold: float | None = None, batch_size: int | None = None,
        workers: int = 0) -> pd.DataFrame:
    """All rows in one table (tests, small sets); refuses a set without one readable image."""
    threshold = model.facts["threshold"] if threshold is None else threshold
    tally = Tally()
    batches = frames(Scorer(model), dataset.images_under(paths), threshold, batch_size, workers)
    table = pd.concat([tally.count(f) for f in batches], ignore_index=True)
    tally.check(paths)
    return table


@dataclass
class Tally:
    """How many files were scored, and the first that could not be."""

    n: int = 0  # files seen
    scored: int = 0  # files with a P(TB)
    first_error: list | None = None  # [path, reason] of the first unreadable file

    def count(self, frame: pd.DataFrame) -> pd.DataFrame:
        self.n += len(frame)
        self.scored += int(frame["error"].isna().sum())
        if self.first_error is None and frame["error"].notna().any():
            self.first_error = frame.loc[frame["error"].notna()].iloc[0][["path", "error"]].tolist()
        return frame

    def check(self, paths: list[Path]) -> None:
        """One line and exit 2 when not one image could be read."""
        if self.scored == 0:
            raise UserError(f"{', '.join(map(str, paths))}: none of the {self.n} image(s) could be read, "
                            f"first {self.first_error[0]}: {self.first_error[1]}")

    def say_skipped(self) -> None:
        if self.scored < self.n:
            print(f"tbray: {self.n - self.scored} of {self.n} file(s) could not be read (the error column says "
                  f"why), first {self.first_error[0]}: {self.first_error[1]}", file=sys.stderr)


class Results:
    """Rows written as they come, to a temporary file renamed to `out` (CSV, or Parquet for a .parquet
    name) or copied to stdout at the end; the file never holds a half-written table under its name."""

    def __init__(self, out: Path | None):
        self.out, self.tally, self.writer = out, Tally(), None
        self.parquet = out is not None and Path(out).suffix.lower() == ".parquet"
        folder = Path(out).resolve().parent if out is not None else None
        if folder is not None and not folder.is_dir():
            raise UserError(f"{out}: its folder does not exist")
        try:
            handle, name = tempfile.mkstemp(prefix=".tbray-predict-", suffix=".tmp", dir=folder)
        except OSError as exc:
            raise UserError(f"{out if out is not None else folder or tempfile.gettempdir()}: can't be written "
                            f"({exc.strerror or exc})") from None
        os.close(handle)
        self.tmp = Path(name)

    def add(self, frame: pd.DataFrame) -> None:
        first = self.tally.n == 0
        self.tally.count(frame)
        if self.parquet:
            self.writer = self.writer or pq.ParquetWriter(self.tmp, SCHEMA)
            self.writer.write_table(pa.Table.from_pandas(frame, schema=SCHEMA, preserve_index=False))
        else:
            outputs.spreadsheet_safe(frame).to_csv(self.tmp, mode="w" if first else "a", header=first, index=False)

    def finish(self, paths: list[Path]) -> None:
        """Checked, then renamed into place (or printed); the temporary file never stays behind."""
        try:
            if self.writer is not None:
                self.writer.close()
            self.tally.check(paths)
            if self.out is not None:
                try:
                    os.replace(self.tmp, self.out)
                except OSError as exc:
                    raise UserError(f"{self.out}: can't be written ({exc.strerror or exc})") from None
            else:
                with open(self.tmp) as f:
                    shutil.copyfileobj(f, sys.stdout)
        finally:
            self.tmp.unlink(missing_ok=True)
        self.tally.say_skipped()


def predict(cfg: PredictConfig, model: Model) -> Results:
    """Score every image of `cfg` here, writing rows as batches finish."""
    threshold = model.facts["threshold"] if cfg.threshold is None else cfg.threshold
    results = Results(cfg.out)
    try:
        for frame in frames(Scorer(model), dataset.images_under(cfg.images), threshold, cfg.batch_size, cfg.workers,
                            cfg.progress):
            results.add(frame)
    except BaseException:
        results.tmp.unlink(missing_ok=True)
        raise
    results.finish(cfg.images)
    return results


CAM_CHUNK = 64  # images decoded and mapped at a time for --cam, so its memory stays bounded too


def write_cams(cfg: PredictConfig, model: Model) -> None:
    """`--cam DIR`: a Grad-CAM overlay for every readable image (needs the PyTorch model file)."""
    if model.saved is None:
        raise UserError(f"{cfg.model}: --cam needs the PyTorch model file (best_model.pt) scored without --onnx")
    from tbray.model import saliency  # grad-cam and OpenCV load only when asked

    readable = []
    for path in dataset.images_under(cfg.images):
        try:
            dataset.load_gray(path)
            readable.append(path)
        except Exception:  # listed with its reason in the scores already
            continue
    for start in range(0, len(readable), CAM_CHUNK):
        saliency.write_overlays(model.saved, readable[start:start + CAM_CHUNK], cfg.cam)
    print(f"tbray: Grad-CAM overlays of {len(readable)} image(s) in {cfg.cam}", file=sys.stderr)
