"""What scores a batch of images: PyTorch (a GPU when present) or ONNX Runtime, behind one call.

`open_model` reads a model file once on the driver (best_model.pt, a calibrated copy, or a model.onnx
from `tbray.model.export`) into a `Model` that can be sent to other processes (Ray actors); `Scorer(model)`
builds the engine where it runs and turns uint8 images [N, S, S] into P(TB) [N].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tbray.errors import UserError
from tbray.model import export, modelfile, scoring

ONNX_SUFFIX = ".onnx"


@dataclass(frozen=True)
class Model:
    """A model ready to travel: its facts, and the one form its engine needs."""

    facts: dict  # threshold, image_size, model_name, mean, std, threshold_source / calibration when recorded
    saved: dict | None = None  # engine "torch": the model file's contents (modelfile.load_model_file)
    onnx: bytes | None = None  # engine "onnx": a graph written by tbray.model.export, metadata included

    @property
    def engine(self) -> str:
        return "onnx" if self.onnx is not None else "torch"


def open_model(path: Path, onnx: bool = False) -> Model:
    """A model file, checked; a .onnx file always scores with ONNX Runtime, a .pt file with PyTorch
    unless `onnx` (then exported here, parity checked, not written)."""
    path = Path(path)
    if path.suffix == ONNX_SUFFIX:
        return _open_onnx(path)
    saved = modelfile.load_model_file(path)
    facts = {k: v for k, v in saved.items() if k != "model"}
    if not onnx:
        return Model(facts=facts, saved=saved)
    try:
        return Model(facts=facts, onnx=export.to_bytes(saved))
    except ImportError as exc:
        raise UserError(f"--onnx needs {exc.name}: pip install onnx onnxruntime onnxscript")


def _open_onnx(path: Path) -> Model:
    """A tbray ONNX graph and the facts its metadata carries."""
    if not path.is_file():
        raise UserError(f"{path}: model file not found (a search writes results/<name>/model.onnx)")
    blob = path.read_bytes()
    try:
        session = export.session(blob)
    except ImportError:
        raise UserError(f"{path}: scoring an ONNX model needs onnxruntime: pip install onnxruntime")
    except Exception as exc:  # onnxruntime raises its own types for a bad file
        raise UserError(f"{path}: not an ONNX model ONNX Runtime can load ({type(exc).__name__})")
    meta = dict(session.get_modelmeta().custom_metadata_map)
    try:
        facts = export.facts(meta)
    except KeyError as exc:
        raise UserError(f"{path}: not a tbray ONNX model (its metadata has no {exc})")
    except ValueError as exc:
        raise UserError(f"{path}: damaged model file: {exc}")
    if problem := export.input_size_problem(session, facts["image_size"]):
        raise UserError(f"{path}: damaged model file: {problem}")
    return Model(facts=facts, onnx=blob)


class Scorer:
    """uint8 images [N, S, S] (numpy or torch) -> P(TB) [N] as float32 numpy, on the engine of `model`."""

    def __init__(self, model: Model, device: torch.device | None = None):
        self.model = model
        if model.onnx is not None:
            self.session = export.session(model.onnx)
            self.device = torch.device("cpu")  # ONNX Runtime copies host arrays itself
            self.where = f"onnxruntime {self.session.get_providers()[0]}"
        else:
            self.device = device or scoring.device()
            self.net = scoring.build(model.saved, self.device).eval()
            self.where = f"pytorch {self.device.type}"

    def __call__(self, images) -> np.ndarray:
        if self.model.onnx is not None:
            batch = np.ascontiguousarray(images.numpy() if isinstance(images, torch.Tensor) else images, dtype=np.uint8)
            return self.session.run([export.OUTPUT], {export.INPUT: batch})[0]
        batch = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
        with torch.inference_mode():
            logits = scoring.logits(self.net, batch, self.device, self.model.facts["mean"], self.model.facts["std"])
            return torch.sigmoid(logits).cpu().numpy()
