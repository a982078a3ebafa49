"""Batch preprocessing on the training device: uint8 grayscale in, normalised model input out.

Images travel as uint8 (a quarter of float32's bytes) and become floats only on the device, where
augmentation runs on the whole batch with a different random transform per image. Intensity range:
[0, 1] between `to_unit` and `normalise`; the model sees (x - mean) / std from its pretrained_cfg.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_ROTATE_DEG = 7.0  # patients are positioned upright; larger turns make unrealistic films
MAX_SCALE = 0.08  # +-8% zoom: framing differs between hospitals
MAX_SHIFT = 0.06  # +-6% of the side
MAX_BRIGHTNESS = 0.08  # exposure differs between machines
MAX_CONTRAST = 0.15


def to_unit(batch_u8: torch.Tensor) -> torch.Tensor:
    """[B, H, W] uint8 -> [B, 1, H, W] float in [0, 1]."""
    return batch_u8.unsqueeze(1).float().div_(255.0)


def random_affine(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image small rotation, zoom and shift; no flips, since anatomy is not mirror-symmetric."""
    b = x.shape[0]
    rand = lambda: torch.rand(b, device=x.device, generator=generator) * 2 - 1  # noqa: E731  uniform [-1, 1]
    angle = rand() * math.radians(MAX_ROTATE_DEG)
    scale = 1 + rand() * MAX_SCALE
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, rand() * MAX_SHIFT], 1),
                         torch.stack([sin, cos, rand() * MAX_SHIFT], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Border padding: black corners would be a cue no real film has.
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_intensity(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image brightness and contrast jitter, clamped back to [0, 1]."""
    shape = (x.shape[0], 1, 1, 1)
    brightness = (torch.rand(shape, device=x.device, generator=generator) * 2 - 1) * MAX_BRIGHTNESS
    contrast = 1 + (torch.rand(shape, device=x.device, generator=generator) * 2 - 1) * MAX_CONTRAST
    mean = x.mean(dim=(2, 3), keepdim=True)
    return ((x - mean) * contrast + mean + brightness).clamp_(0, 1)


def normalise(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """[B, 1, H, W] in [0, 1] -> (x - mean) / std, channels_last, for the one-channel stem (tbray.model.factory)."""
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def prepare(batch_u8: torch.Tensor, mean: float, std: float, train: bool,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """The whole path from a uint8 batch on the device to model input."""
    x = to_unit(batch_u8)
    if train:
        x = random_intensity(random_affine(x, generator), generator)
    return normalise(x, mean, std)
