"""Decode once: the cached arrays are the plain decode path's images, and training on them is unchanged."""

from __future__ import annotations

import time

import numpy as np
import pytest
import ray
import ray.train
from PIL import Image
from ray.train.torch import TorchTrainer
from torchvision import transforms

from tbray.data import cache, dataset
from tbray.train.driver import worker
from tbray.train.settings import TrainSettings, TrialParams, TrialSpec

SIZES = [32, 48]


@pytest.fixture(scope="module")
def split(tiny_data):
    return dataset.make_split(dataset.discover(tiny_data, min_side=32).files, seed=0)


def test_cache_is_the_plain_decode_pixel_for_pixel(tiny_data, split, tmp_path):
    paths = cache.build(tiny_data, split, SIZES, tmp_path)
    for size in SIZES:
        images = cache.load(paths[size])
        assert images.shape == (len(split), size, size) and images.dtype == np.uint8
        for part in ("train", "val", "test"):
            got = cache.subset(split, images, part)
            rows = split[split["split"] == part]
            assert got["labels"].tolist() == rows["label"].tolist()
            expected = np.stack([dataset.resize(dataset.load_gray(tiny_data / p), size) for p in rows["path"]])
            np.testing.assert_array_equal(got["images"], expected)


def test_cache_matches_torchvision_within_one_grey_level(tiny_data, split, tmp_path):
    """The naive torchvision pipeline (Grayscale, Resize) resizes with the same Pillow filter."""
    images = cache.load(cache.build(tiny_data, split, [48], tmp_path)[48])
    tv = transforms.Compose([transforms.Grayscale(), transforms.Resize((48, 48)), transforms.PILToTensor()])
    for i in range(0, len(split), 7):
        with Image.open(tiny_data / split["path"].iloc[i]) as im:
            reference = tv(im.convert("RGB")).squeeze(0).numpy()
        assert np.abs(reference.astype(int) - images[i].astype(int)).max() <= 1


def test_cache_is_reused_not_rebuilt(tiny_data, split, tmp_path):
    first = cache.build(tiny_data, split, [32], tmp_path)[32]
    mtime = first.stat().st_mtime_ns
    assert cache.build(tiny_data, split, [32], tmp_path)[32].stat().st_mtime_ns == mtime
    other = split.assign(split=split["split"].sample(frac=1, random_state=1).to_numpy())
    assert cache.build(tiny_data, other, [32], tmp_path)[32] != first  # a new split gets its own key


def _fit(data_ref, seed=0, epochs=2, data_path="auto"):
    """The real per-worker loop, run in this process by Ray Train's local mode (num_workers=0)."""
    spec = TrialSpec(params=TrialParams(epochs=epochs, batch_size=16, image_size=32, lr=1e-3, weight_decay=1e-4),
                     settings=TrainSettings(model="test_efficientnet", seed=seed, data_path=data_path), data=data_ref,
                     weights=None, started=time.time())
    result = TorchTrainer(worker, train_loop_config={"spec": spec},
                          scaling_config=ray.train.ScalingConfig(num_workers=0)).fit()
    return result.metrics


def test_training_on_the_cache_equals_training_on_plain_decodes(ray_address, tiny_data, split, tmp_path):
    images = cache.load(cache.build(tiny_data, split, [32], tmp_path)[32])
    cached = {part: cache.subset(split, images, part) for part in ("train", "val")}
    plain = {}
    for part in ("train", "val"):
        rows = split[split["split"] == part]
        plain[part] = {"images": np.stack([dataset.resize(dataset.load_gray(tiny_data / p), 32) for p in rows["path"]]),
                       "labels": rows["label"].to_numpy().astype(np.int64)}
    a, b = _fit(ray.put(cached)), _fit(ray.put(plain))
    for key in ("val_loss", "val_auroc", "val_accuracy", "train_loss"):
        assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert a["epoch"] == 2


def test_an_image_deleted_after_the_check_is_named_in_one_user_error(tmp_path):
    from tbray.data import demo
    from tbray.errors import UserError

    root = demo.make(tmp_path / "data", n_images=72, size=64)
    split = dataset.make_split(dataset.discover(root, min_side=32).files, 0)
    gone = root / split["path"].iloc[5]
    gone.unlink()
    with pytest.raises(UserError, match=f"{gone}: No such file or directory; it was usable when the data were checked"):
        cache.build(root, split, [32], tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.npy"))  # no half-built cache left behind


def test_data_resident_on_the_device_trains_as_the_loader_does(ray_address, tiny_data, split, tmp_path):
    """The resident path (arrays copied to the device once, batches sliced there, validation scored there)
    and the DataLoader path reach the same losses after 3 epochs from the same seed (on CPU here)."""
    images = cache.load(cache.build(tiny_data, split, [32], tmp_path)[32])
    data = ray.put({part: cache.subset(split, images, part) for part in ("train", "val")})
    for path in ("resident", "loader"):  # each forced path taken (said in the first epoch's report)
        assert _fit(data, seed=3, epochs=1, data_path=path)["data_path"] == path
    resident, loader = (_fit(data, seed=3, epochs=3, data_path=path) for path in ("resident", "loader"))
    assert resident["epoch"] == loader["epoch"] == 3
    for key in ("val_loss", "train_loss", "val_auroc"):
        assert resident[key] == pytest.approx(loader[key], abs=1e-5), key
