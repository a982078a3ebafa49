"""Small pure pieces of the training loop: the LR schedule, batch augmentation, the dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tbray.data.arrays import ArrayDataset
from tbray.model import augment
from tbray.train.worker import lr_at


def test_lr_warms_up_then_decays_to_zero_over_the_trials_own_length():
    total, warm, base = 100, 10, 1e-3
    lrs = [lr_at(s, total, warm, base) for s in range(total)]
    assert lrs[0] == pytest.approx(base / warm)
    assert lrs[warm - 1] == pytest.approx(base)
    assert max(lrs) == pytest.approx(base)
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1:]))  # monotone decay after warm-up
    assert lr_at(total, total, warm, base) == pytest.approx(0, abs=1e-12)
    assert lr_at(50, 200, 10, base) > lr_at(50, 100, 10, base)  # a longer trial decays more slowly


def test_prepare_without_augmentation_is_just_normalisation():
    x = torch.tensor([[[0, 255], [128, 64]]], dtype=torch.uint8)
    out = augment.prepare(x, mean=0.5, std=0.5, train=False)
    assert out.shape == (1, 1, 2, 2)  # one gray channel: the model's stem takes one (tbray.model.factory.create)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert out[0, 0, 0, 0].item() == pytest.approx(-1.0) and out[0, 0, 0, 1].item() == pytest.approx(1.0)


def test_augmentation_differs_per_image_and_stays_in_range():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (1, 32, 32), dtype=torch.uint8).repeat(8, 1, 1)
    unit = augment.random_intensity(augment.random_affine(augment.to_unit(x), g), g)
    assert unit.min() >= 0 and unit.max() <= 1
    assert not torch.allclose(unit[0], unit[1])  # a different transform for each image of the batch


def test_array_dataset_returns_whole_batches_in_order():
    images = np.arange(5 * 2 * 2, dtype=np.uint8).reshape(5, 2, 2)
    ds = ArrayDataset(images, np.array([0, 1, 0, 1, 1]))
    x, y = ds.__getitems__([3, 1])
    assert x.shape == (2, 2, 2) and y.tolist() == [1, 1]
    assert torch.equal(x[0], torch.from_numpy(images[1]))  # sorted indices


def test_checkpoints_on_improvement_every_k_and_at_the_last_epoch():
    from tbray.train.worker import checkpoint_due

    improved = {1, 2, 3, 8}  # epochs whose metric beat the best so far
    due = [e for e in range(1, 13) if checkpoint_due(e, 12, 5, improved=e in improved)]
    assert due == [1, 2, 3, 5, 8, 10, 12]
    assert [e for e in range(1, 4) if checkpoint_due(e, 3, 1, improved=False)] == [1, 2, 3]  # K=1: every epoch
