"""ONNX export: the graph scores as PyTorch does, with a dynamic batch, and carries the model's facts."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import REPO

import tbray
from tbray.data import demo
from tbray.model import export, modelfile, scoring


@pytest.fixture(scope="module")
def exported(tiny_model_file, tmp_path_factory):
    """tune/export.py run as a user runs it."""
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    done = subprocess.run([sys.executable, str(REPO / "tune" / "export.py"), str(tiny_model_file), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(f"tbray: wrote {out}") and done.stderr == ""
    return out


def test_onnx_runtime_gives_pytorchs_scores_within_1e_4_at_any_batch_size(tiny_model_file, exported):
    saved = modelfile.load_model_file(tiny_model_file)
    images = np.stack([demo.render(i % 2, i, size=32, seed=11) for i in range(37)])
    expected = scoring.score_images(saved, images, batch_size=16)  # the path training and evaluation use
    assert expected.std() > 0.05  # scores that differ, so agreement means something
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:], out.name) == ("image", "tensor(uint8)", [32, 32], "p_tb")
    assert isinstance(inp.shape[0], str)  # a named, dynamic batch dimension
    for batch in (1, 5, 37):
        got = np.concatenate([session.run(None, {"image": images[i:i + batch]})[0] for i in range(0, 37, batch)])
        assert got.shape == (37,) and np.abs(got - expected).max() < 1e-4, batch


def test_metadata_round_trip(tiny_model_file, exported):
    saved = torch.load(tiny_model_file, weights_only=True)
    meta = export.read_metadata(exported)
    assert meta["tbray_version"] == tbray.__version__
    facts = export.facts(meta)
    for key in ("model_name", "image_size", "threshold", "mean", "std", "threshold_source", "calibration"):
        assert facts[key] == saved[key], key
    assert isinstance(facts["image_size"], int) and isinstance(facts["threshold"], float)


def test_a_graph_that_disagrees_with_pytorch_is_refused(tiny_model_file, exported):
    saved = modelfile.load_model_file(tiny_model_file)
    other = export.graph({**saved, "model": {k: v * 1.5 if v.is_floating_point() else v
                                             for k, v in saved["model"].items()}})
    with pytest.raises(export.ParityError, match="differ by up to"):
        export.parity(other, exported.read_bytes(), export.check_images(32))
    assert export.parity(export.graph(saved), exported.read_bytes(), export.check_images(32)) < 1e-4
