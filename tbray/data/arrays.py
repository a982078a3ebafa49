"""uint8 images and labels held in memory (the decode cache's arrays), as a PyTorch Dataset.

Intensity range: uint8, 0 (black) to 255 (white), as `tbray.data.dataset.load_gray` leaves them; they
become floats only on the device (tbray.model.augment).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


class ArrayDataset(Dataset):
    """uint8 images and labels already in memory; batches come out as one slice, not N items."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, idx: list[int]):
        idx = np.sort(np.asarray(idx))  # sorted reads are kinder to a memory-mapped array
        return torch.from_numpy(self.images[idx].copy()), torch.from_numpy(self.labels[idx].copy())


def collate_batch(batch):
    """The dataset already returns a whole batch."""
    return batch
