"""The confound check tells what acquisition alone separates: high on data built to be confounded, about
0.5 on data built not to be, and file facts count as acquisition too."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tbray.data import confound

N = 80  # images per data set: 40 per class


def _data(tmp_path, offset: float = 0.0, tb_mode: str = "L", seed: int = 0, sources=None, n: int = N):
    """Noise films, TB brighter by `offset` gray levels and stored in `tb_mode`; paths, images, labels."""
    rng = np.random.default_rng(seed)
    labels = np.tile([0, 1], n // 2)
    shift = offset * labels if sources is None else offset * (np.asarray(sources) == "a")
    images = np.clip(rng.normal(110, 25, (n, 32, 32)) + shift[:, None, None], 0, 255).astype(np.uint8)
    paths = []
    for i, (image, label) in enumerate(zip(images, labels)):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).convert(tb_mode if label else "L").save(paths[-1])
    return paths, images, labels


def test_a_brightness_offset_by_class_is_found(tmp_path):
    paths, images, labels = _data(tmp_path, offset=40)
    record = confound.check(images, paths, labels, np.full(N, "one"))
    whole = record["tb_vs_normal"]["all"]
    assert whole["value"] > 0.95 and whole["ci_low"] > 0.8, whole
    assert record["confounded"] and "without looking at disease" in confound.warning(record)
    assert "AUROC" in confound.sentence(record) and f"{whole['value']:.3f}" in confound.sentence(record)


def test_data_built_not_to_be_confounded_is_near_chance(tmp_path):
    paths, images, labels = _data(tmp_path, offset=0, n=200)
    whole = confound.check(images, paths, labels, np.full(200, "one"))["tb_vs_normal"]["all"]
    assert 0.3 < whole["value"] < 0.7 and whole["ci_low"] < 0.5 < whole["ci_high"], whole
    assert confound.warning({"confounded": False}) is None


def test_storage_mode_alone_gives_the_classes_away(tmp_path):
    # The same pixels for both classes; only the TB files are stored as RGB, as in tbdb-dev's tinted TB films.
    paths, images, labels = _data(tmp_path, offset=0, tb_mode="RGB")
    record = confound.check(images, paths, labels, np.full(N, "one"))
    whole = record["tb_vs_normal"]["all"]
    assert whole["value"] > 0.9 and whole["ci_low"] > 0.75, whole  # diluted a little by 1,000 noise features
    assert record["storage_modes"] == {"Normal": {"L": 40}, "Tuberculosis": {"RGB": 40}}


def test_sources_told_apart_while_each_source_is_not_confounded(tmp_path):
    sources = np.repeat(["a", "b"], N // 2)  # both classes in each source; source a brighter
    paths, images, labels = _data(tmp_path, offset=40, sources=sources)
    record = confound.check(images, paths, labels, sources)
    assert set(record["tb_vs_normal"]) == {"all", "a", "b"}
    assert record["source_vs_rest"]["a"]["value"] > 0.95
    for name in ("a", "b"):  # 40 films each: chance, within sampling error
        assert 0.25 < record["tb_vs_normal"][name]["value"] < 0.75, (name, record["tb_vs_normal"][name])


@pytest.mark.parametrize("mode, bits", [("L", 8), ("RGB", 8), ("I;16", 16)])
def test_file_facts_read_the_header(tmp_path, mode, bits):
    path = tmp_path / "x.png"
    Image.new(mode, (40, 30)).save(path)
    assert confound.file_facts(path) == {"mode": mode, "bits": bits, "width": 40, "height": 30, "format": "PNG"}
