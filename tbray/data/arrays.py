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


class EpochPermutation(torch.utils.data.Sampler):
    """The training order: one permutation of every index per epoch, from a generator of its own seed.

    Both ways into a training step draw it (the DataLoader as its sampler, `ResidentBatches` directly), so a
    trial makes the same batches whichever way its data travel.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.generator = n, torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=self.generator).tolist())


class ResidentBatches:
    """Training batches cut from arrays copied to the device once, so no epoch moves images host -> device.

    Each epoch draws the `EpochPermutation` order; under DDP each rank takes every world-th index of it, so
    the ranks share an epoch without overlap. Indices within a batch are sorted, as `ArrayDataset` reads them.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, device: torch.device,
                 rank: int = 0, world: int = 1):
        # A writable copy: the object store hands out read-only arrays, which torch won't wrap without a warning.
        self.images = torch.from_numpy(np.array(images)).to(device)
        self.labels = torch.from_numpy(np.array(labels)).to(device)
        self.order, self.batch_size, self.rank, self.world = EpochPermutation(len(labels), seed), batch_size, rank, world

    def __len__(self) -> int:
        return (len(self.order) // self.world) // self.batch_size  # whole batches only (drop_last)

    def __iter__(self):
        mine = torch.tensor(list(self.order))[self.rank::self.world].to(self.images.device)
        for i in range(len(self)):
            idx = mine[i * self.batch_size:(i + 1) * self.batch_size].sort().values
            yield self.images[idx], self.labels[idx]


def nbytes(data: dict) -> int:
    """Bytes of every array in {"train": {...}, "val": {...}}: what the device would hold."""
    return sum(array.nbytes for part in data.values() for array in part.values() if hasattr(array, "nbytes"))
