"""Preprocessing in the search space (issue 22, item 3): the steps, and one P(TB) for an image however it
is scored: the search's test pass (the cache), predict.py with the .pt, and predict.py with the .onnx."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from tbray.data import cache, dataset, demo, preprocess
from tbray.data.preprocess import Input
from tbray.errors import UserError
from tbray.model import modelfile, scoring
from tbray.predict import local
from tbray.predict.scorer import open_model

COMBOS = list(itertools.product(preprocess.EQUALIZE, preprocess.CROPS))


def table(files) -> pd.DataFrame:
    """The rows cache.build reads (path, label, split, sha256), as split.csv holds them."""
    return pd.DataFrame({"path": [str(f) for f in files], "label": 0, "split": "test",
                         "sha256": [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]})


def test_steps_keep_the_stated_range_and_do_what_they_say():
    rng = np.random.default_rng(0)
    film = (rng.random((300, 240)) * 90 + 40).astype(np.uint8)  # a dull, low-contrast film
    plain = preprocess.to_input(film, Input(64))
    assert plain.shape == (64, 64) and plain.dtype == np.uint8
    assert np.array_equal(plain, dataset.resize(film, 64))  # no steps: the resize every search did before
    flat = preprocess.to_input(film, Input(64, "equalize"))
    assert flat.min() < 10 and flat.max() > 245  # equalisation spreads the histogram over 0-255
    local_eq = preprocess.to_input(film, Input(64, "clahe"))
    assert not np.array_equal(local_eq, flat) and local_eq.std() > plain.std()
    top, bottom, left, right = preprocess.lung_box()
    assert 0 <= top < 0.2 and 0.8 < bottom <= 1 and 0 <= left < 0.15 and 0.85 < right <= 1
    marked = np.zeros((200, 200), np.uint8)
    marked[:int(top * 200) - 1, :] = 255  # a label above the lungs' box
    assert preprocess.to_input(marked, Input(32, crop="lungs")).max() == 0 < preprocess.to_input(marked, Input(32)).max()
    with pytest.raises(ValueError, match="unknown preprocessing"):
        preprocess.to_input(film, Input(32, "gamma"))
    assert Input(96).steps == "" and Input(96, "clahe", "lungs").steps == "lungs-clahe"


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    """Eight films at 96 px, both classes, the tinted kind of contrast differences real sources show."""
    root = demo.make(tmp_path_factory.mktemp("films") / "set", n_images=72, size=96, seed=5)
    return sorted((root / "Normal").glob("*.png"))[:4] + sorted((root / "Tuberculosis").glob("*.png"))[:4]


@pytest.fixture(scope="module")
def graph(tiny_model_file) -> bytes:
    """The model's ONNX graph, exported once: the steps sit outside it, so only its metadata differ by step."""
    from tbray.model import export

    return export.to_bytes(modelfile.load_model_file(tiny_model_file))


@pytest.mark.parametrize("how,crop", COMBOS)
def test_the_same_film_scores_the_same_through_search_pt_and_onnx(films, tiny_model_file, graph, tmp_path, how, crop):
    import onnx

    from tbray.model import export

    saved = torch.load(tiny_model_file, weights_only=True) | {"preprocess": how, "crop": crop}
    pt = tmp_path / "model.pt"
    modelfile.save_atomic(saved, pt)
    proto = onnx.load_from_string(graph)  # as export.to_bytes writes it for this model file: its metadata
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, export.metadata(modelfile.load_model_file(pt)))
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(proto.SerializeToString())
    # The search's test pass: the cache's arrays for the model's Input, scored as final.run scores them.
    frame = table(films)
    spec = Input.of_model(saved)
    arrays = cache.build(list(films), frame, [spec], tmp_path / "cache")
    searched = scoring.score_images(modelfile.load_model_file(pt), np.asarray(cache.load(arrays[spec])))
    by_pt = local.run(open_model(pt), list(films))["p_tb"].to_numpy()
    by_onnx = local.run(open_model(onnx_file), list(films))["p_tb"].to_numpy()
    assert np.abs(searched - by_pt).max() < 1e-4 and np.abs(searched - by_onnx).max() < 1e-4
    assert searched.std() > 0.01  # the scores differ between films, so agreement is not trivial
    assert export.read_metadata(onnx_file)["preprocess"] == how and export.read_metadata(onnx_file)["crop"] == crop


def test_a_model_file_with_an_unknown_step_is_refused(tiny_model_file, tmp_path):
    bad = tmp_path / "bad.pt"
    modelfile.save_atomic(torch.load(tiny_model_file, weights_only=True) | {"preprocess": "sharpen"}, bad)
    with pytest.raises(UserError, match="damaged model file: preprocess 'sharpen' is not one of none, equalize, clahe"):
        modelfile.load_model_file(bad)


def test_steps_differ_between_inputs_so_the_cache_keeps_one_array_each(films, tmp_path):
    frame = table(films)
    specs = [Input(32, how, crop) for how, crop in COMBOS]
    arrays = cache.build(list(films), frame, specs + [32], tmp_path)
    assert len({p.name for p in arrays.values()}) == len(COMBOS)  # Input(32) and 32 are one file
    assert arrays[32] == arrays[Input(32)]
    images = {s: np.asarray(cache.load(arrays[s])) for s in specs}
    assert len({images[s].tobytes() for s in specs}) == len(COMBOS)
