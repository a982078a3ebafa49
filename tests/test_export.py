"""ONNX export: the graph scores as PyTorch does, with a dynamic batch, and carries the model's facts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import REPO
from PIL import Image

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


def _doctored(exported, tmp_path, name: str, **changes) -> Path:
    """A copy of the exported graph with some metadata values replaced (None: the key removed)."""
    import onnx

    proto = onnx.load(str(exported))
    meta = {p.key: p.value for p in proto.metadata_props} | changes
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {k: v for k, v in meta.items() if v is not None})
    out = tmp_path / f"{name}.onnx"
    onnx.save(proto, str(out))
    return out


ONNX_DOCTORED = {  # the metadata a doctored or damaged ONNX file may carry, and the line that refuses it
    "threshold_nan": ({"threshold": "nan"}, "threshold nan is not a probability"),
    "threshold_inf": ({"threshold": "inf"}, "threshold inf is not a probability"),
    "threshold_7": ({"threshold": "7"}, "threshold 7.0 is not a probability"),
    "threshold_negative": ({"threshold": "-3"}, "threshold -3.0 is not a probability"),
    "size_against_graph": ({"image_size": "48"}, "the graph's input shape ['batch', 32, 32] contradicts its metadata image_size 48"),
    "size_huge": ({"image_size": "30000"}, "image_size 30000 is not a whole number of pixels between 16 and 2048"),
    "size_text": ({"image_size": "big"}, "image_size 'big' is not a whole number"),
    "std_tiny": ({"std": "1e-308"}, "std 1e-308 is not a number between 0.001 and 10"),
    "source_a_list": ({"threshold_source": "[1, 2]"}, "threshold_source is not a record (a dict), but list"),
    "source_without_n": ({"threshold_source": '{"kind": "validation split", "n_tb": 3, "target_sensitivity": 0.9}'},
                         "threshold_source has no 'n'"),
    "calibration_without_site": ({"calibration": '{"n": 9, "n_tb": 2, "date": "2026-01-01", "sensitivity": 1.0, '
                                                 '"specificity": 0.5}'}, "calibration has no 'site_data'"),
    "no_threshold": ({"threshold": None}, "its metadata has no 'threshold'"),
}


@pytest.mark.parametrize("name", list(ONNX_DOCTORED))
def test_doctored_onnx_metadata_is_refused_as_a_pt_file_is(exported, tmp_path, name):
    """The checks a .pt file gets (tbray.model.facts) run on ONNX metadata too, before any image is read."""
    from tbray.errors import UserError
    from tbray.predict import scorer

    changes, message = ONNX_DOCTORED[name]
    with pytest.raises(UserError, match=re.escape(message)):
        scorer.open_model(_doctored(exported, tmp_path, name, **changes))


def test_a_doctored_onnx_threshold_stops_predict_in_one_line(exported, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(demo.render(1, 0, size=64, seed=1)).save(images / "a.png")
    model = _doctored(exported, tmp_path, "nan", threshold="nan")
    done = subprocess.run([sys.executable, str(REPO / "tune" / "predict.py"), str(model), str(images)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stdout == "", done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [f"tbray: error: {model}: damaged model file: threshold nan is not a probability"]
