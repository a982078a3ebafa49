"""A saved model as one ONNX graph: uint8 grayscale images [N, S, S] in, P(TB) [N] out.

The graph holds the whole path after the resize (to [0, 1], the model's mean and std, the network, the
sigmoid), so a screening PC with ONNX Runtime needs only to read and resize an image. What a prediction
must know besides the weights (threshold and where it came from, model name, image size, tbray version,
a site calibration record) travels as the graph's metadata, read back by `metadata`.

Exported with `torch.onnx.export(dynamo=True)`, the exporter PyTorch keeps (the TorchScript one is
deprecated); it handles EfficientNet's SiLU, squeeze-excitation and TF "same" padding. Every export is
checked against PyTorch on the CPU before it is written: a graph that disagrees by more than
PARITY_TOLERANCE is never saved.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import torch

import tbray
from tbray import outputs
from tbray.data import dataset, demo, preprocess, stream
from tbray.data.preprocess import Input
from tbray.errors import ParityError, UserError
from tbray.model import augment, scoring
from tbray.model import facts as model_facts

PARITY_TOLERANCE = 1e-4  # largest |P(TB) ONNX Runtime - P(TB) PyTorch| accepted, on the CPU in float32
OPSET = 18  # the dynamo exporter's own default; ONNX Runtime 1.17+ runs it
INPUT, OUTPUT = "image", "p_tb"
CHECK_IMAGES = 8  # synthetic images checked when none are given (half of them with TB-like lesions)
JSON_FIELDS = ("threshold_source", "calibration", "provenance")  # metadata stored as JSON; absent keys are left out


class ScoringGraph(torch.nn.Module):
    """The exported computation: uint8 [N, S, S] -> P(TB) [N], with the training-time normalisation."""

    def __init__(self, net: torch.nn.Module, mean: float, std: float):
        super().__init__()
        self.net, self.mean, self.std = net, float(mean), float(std)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = augment.normalise(augment.to_unit(image), self.mean, self.std)
        return torch.sigmoid(self.net(x).squeeze(1))


def graph(saved: dict) -> ScoringGraph:
    """The saved model's scoring graph on the CPU in float32, the form PyTorch parity is measured in."""
    return ScoringGraph(scoring.build(saved, torch.device("cpu")), saved["mean"], saved["std"]).eval()


def metadata(saved: dict) -> dict[str, str]:
    """The model file's facts as ONNX metadata (strings only, as ONNX stores them)."""
    meta = {"tbray_version": tbray.__version__, "model_name": saved["model_name"],
            "image_size": str(saved["image_size"]), "threshold": repr(float(saved["threshold"])),
            "mean": repr(float(saved["mean"])), "std": repr(float(saved["std"])),
            "input": f"{INPUT}: uint8 grayscale [N, {saved['image_size']}, {saved['image_size']}]: "
                     f"{preprocess.describe(Input.of_model(saved))}",
            # Steps before the graph (tbray.data.preprocess), which tbray's ONNX path applies and a standalone
            # caller must repeat: the lung crop before the resize, equalisation after it.
            "preprocess": saved.get("preprocess", "none"), "crop": saved.get("crop", "none"),
            "output": f"{OUTPUT}: P(TB) [N]; Tuberculosis when P(TB) >= threshold"}
    meta |= {k: json.dumps(saved[k], default=str) for k in JSON_FIELDS if saved.get(k) is not None}
    return meta


def facts(meta: dict[str, str]) -> dict:
    """Metadata read back into the model file's own types (what `tune/predict.py` prints and uses), checked as
    a .pt file's facts are (`tbray.model.facts`). KeyError for a missing key, ValueError naming a bad one."""
    out = {"model_name": meta["model_name"], "tbray_version": meta["tbray_version"],
           "preprocess": meta.get("preprocess", "none"), "crop": meta.get("crop", "none")}
    for key, kind in (("image_size", int), ("threshold", float), ("mean", float), ("std", float)):
        try:
            out[key] = kind(meta[key])
        except ValueError:
            raise ValueError(f"{key} {meta[key]!r} is not a {'whole number' if kind is int else 'number'}")
    for key in JSON_FIELDS:
        if key in meta:
            try:
                out[key] = json.loads(meta[key])
            except json.JSONDecodeError:
                raise ValueError(f"{key} is not a JSON record")
    if problem := model_facts.problem(out):
        raise ValueError(problem)
    return out


def input_size_problem(session, size: int) -> str | None:
    """Whether the graph's input [N, S, S] contradicts the image size its metadata states, in words."""
    shape = session.get_inputs()[0].shape
    fixed = [d for d in shape[1:] if isinstance(d, int)]  # symbolic dimensions contradict nothing
    if len(shape) != 3 or any(d != size for d in fixed):
        return f"the graph's input shape {shape} contradicts its metadata image_size {size} ([N, {size}, {size}])"
    return None


def check_images(size: int, n: int = CHECK_IMAGES) -> np.ndarray:
    """Synthetic chest-X-ray-like images at the model's size, both classes, for the parity check."""
    return np.stack([demo.render(label=i % 2, index=i, size=size, seed=7) for i in range(n)])


def images_for_check(paths: list[Path], size: int, most: int = 64) -> np.ndarray:
    """Up to `most` readable images from these files and folders, at the model's size."""
    read = [stream.read(str(f), size)[0] for f in dataset.images_under(paths)[:most]]  # size: an int or an Input
    images = [image for image in read if image is not None]
    if not images:
        raise UserError(f"{', '.join(map(str, paths))}: no readable image for the parity check")
    return np.stack(images)


def to_bytes(saved: dict, images: np.ndarray | None = None) -> bytes:
    """The ONNX graph of a loaded model file (modelfile.load_model_file), metadata set, parity checked."""
    import onnx

    module = graph(saved)
    size = saved["image_size"]
    example = torch.zeros(2, size, size, dtype=torch.uint8)  # batch 2: a batch of 1 would be fixed as a constant
    # The exporter prints its progress to stdout; a CLI's stdout is for its results.
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(module, (example,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                                    dynamic_shapes={"image": {0: torch.export.Dim("batch")}}, opset_version=OPSET,
                                    verbose=False)
    proto = program.model_proto
    proto.doc_string = f"tbray {tbray.__version__}: P(TB) of uint8 grayscale chest X-rays"
    onnx.helper.set_model_props(proto, metadata(saved))
    blob = proto.SerializeToString()
    parity(module, blob, check_images(size) if images is None else images)
    return blob


def session(blob: bytes | Path):
    """An ONNX Runtime session; CUDA when this onnxruntime build and machine have it, else the CPU."""
    import onnxruntime as ort

    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    providers = [p for p in wanted if p in ort.get_available_providers()]
    source = str(blob) if isinstance(blob, Path) else blob
    return ort.InferenceSession(source, providers=providers)


def parity(module: ScoringGraph, blob: bytes, images: np.ndarray) -> float:
    """The largest P(TB) difference between ONNX Runtime (CPU) and PyTorch (CPU) on these images."""
    import onnxruntime as ort

    images = np.ascontiguousarray(images, dtype=np.uint8)
    with torch.no_grad():
        expected = module(torch.from_numpy(images)).numpy()
    got = ort.InferenceSession(blob, providers=["CPUExecutionProvider"]).run([OUTPUT], {INPUT: images})[0]
    worst = float(np.abs(got - expected).max())
    if not np.isfinite(worst) or worst > PARITY_TOLERANCE or got.shape != expected.shape:
        raise ParityError(f"ONNX Runtime and PyTorch differ by up to {worst:.2e} in P(TB) on {len(images)} "
                          f"image(s) (tolerance {PARITY_TOLERANCE:g}); the ONNX graph was not written")
    return worst


def write(saved: dict, out: Path, images: np.ndarray | None = None) -> Path:
    """Export a loaded model file to `out` (write then rename, as every model file here)."""
    return outputs.write_atomic(out, to_bytes(saved, images))


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata of an ONNX file, through ONNX Runtime (what a screening PC has)."""
    return dict(session(Path(path)).get_modelmeta().custom_metadata_map)


def beside(saved: dict, run_dir: Path, images: np.ndarray) -> Path | None:
    """model.onnx next to best_model.pt at the end of a search, checked on the test images.

    A failed export is said loudly and leaves no file; the search's model and report stand without it.
    """
    try:
        return write(saved, Path(run_dir) / "model.onnx", images[:32])
    except Exception as exc:  # exporter and runtime raise many types; none should lose the search
        print(f"tbray: WARNING model.onnx not written: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        return None
