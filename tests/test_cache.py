"""Decode once: the cached arrays are the plain decode path's images, and training on them is unchanged."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pandas as pd
import pytest
import ray
import ray.train
from PIL import Image
from ray.train.torch import TorchConfig, TorchTrainer
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


def _fit(data_ref, seed=0):
    """The real per-worker loop, run in this process by Ray Train's local mode (num_workers=0)."""
    spec = TrialSpec(params=TrialParams(epochs=2, batch_size=16, image_size=32, lr=1e-3, weight_decay=1e-4),
                     settings=TrainSettings(model="test_efficientnet", seed=seed), data=data_ref, weights=None,
                     started=time.time())
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


class Collect(ray.train.UserCallback):
    """Every epoch's report, as JSON lines in a file (the callback runs in the Train run's controller)."""

    def __init__(self, path):
        self.path = str(path)

    def after_report(self, run_context, metrics, checkpoint):
        with open(self.path, "a") as f:
            f.write(json.dumps({k: v for k, v in metrics[0].items() if isinstance(v, (int, float, str))}) + "\n")


def test_data_resident_on_the_device_trains_as_the_loader_does(ray_address, tiny_data, split, tmp_path):
    """The resident path (arrays copied to the device once, batches sliced there, validation scored there)
    and the DataLoader path give the same per-epoch validation loss from the same seed (on CPU here)."""
    images = cache.load(cache.build(tiny_data, split, [32], tmp_path)[32])
    data = ray.put({part: cache.subset(split, images, part) for part in ("train", "val")})
    runs = {}
    for path in ("resident", "loader"):
        spec = TrialSpec(params=TrialParams(epochs=3, batch_size=16, image_size=32, lr=1e-3, weight_decay=1e-4),
                         settings=TrainSettings(model="test_efficientnet", seed=3, data_path=path), data=data,
                         weights=None, started=time.time())
        # One real Ray Train worker on the session's Ray (local mode calls no callbacks); the callback is
        # pickled by value, as Ray's processes can't import this test module.
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        log = tmp_path / f"{path}.jsonl"
        TorchTrainer(worker, train_loop_config={"spec": spec}, torch_config=TorchConfig(backend="gloo"),
                     scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                     run_config=ray.train.RunConfig(name=path, callbacks=[Collect(log)], storage_path=str(tmp_path))).fit()
        runs[path] = pd.read_json(log, lines=True).sort_values("epoch")
    resident, loader = runs["resident"], runs["loader"]
    assert list(resident["epoch"]) == [1, 2, 3]
    assert np.abs(resident["val_loss"].to_numpy() - loader["val_loss"].to_numpy()).max() < 1e-5
    assert np.abs(resident["train_loss"].to_numpy() - loader["train_loss"].to_numpy()).max() < 1e-5
    assert resident["data_path"].iloc[0] == "resident" and loader["data_path"].iloc[0] == "loader"
