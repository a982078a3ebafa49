"""Where the lung fields are on a frontal (PA) chest X-ray, and the two images the shortcut audit trains on.

The lung fields come from an anatomical prior: two tilted ellipses, wider at the base, in coordinates
normalised to the image ([-1, 1] on both axes, y down). Chosen over a mask fitted per image for two
reasons. (1) The same mask on every image carries no information about the label: a mask fitted per image
would bend around opacities (TB makes lung tissue bright, so an intensity-based fit cuts the lesions out)
and its outline would itself tell TB from Normal. (2) It cannot fail on a tinted, cropped or redacted
film. The cost is precision: the prior is drawn generously (it reaches the ribs and the diaphragm of a
typically framed film) so that the `outside_lungs` control sees as little lung tissue as possible;
`lung_mask_examples.png` shows it over real test images for a person to check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONTROLS = ("outside_lungs", "lungs_only")  # lung fields painted over; everything else painted over


@dataclass(frozen=True)
class LungPrior:
    """One lung field (the image-left one; the other is its mirror), in normalised image coordinates.

    Fitted by eye to the mean of 100 `tbdb-dev` films (Rahman et al.'s 512 px PNGs, centred, lungs filling
    most of the frame) and to the demo generator's lungs (tbray.data.demo), then widened by ~10% so the lung edges
    of films framed a little differently stay inside.
    """

    cx: float = 0.39  # distance of each lung's centre from the midline
    cy: float = -0.08  # above the image centre: the apices reach the clavicles, the bases stop at the diaphragm
    ax: float = 0.34  # half width
    ay: float = 0.65  # half height
    tilt: float = 0.10  # radians; > 0 puts the base further from the midline than the apex, as on real films
    taper: float = 0.35  # > 0 widens the base relative to the apex, as the lungs are


PRIOR = LungPrior()


def _one_lung(x: np.ndarray, y: np.ndarray, side: int, p: LungPrior) -> np.ndarray:
    """Inside (True) of one tapered, tilted ellipse; side -1 is the image-left lung."""
    c, s = np.cos(-side * p.tilt), np.sin(-side * p.tilt)
    dx, dy = x - side * p.cx, y - p.cy
    u, v = (dx * c + dy * s) / p.ax, (dy * c - dx * s) / p.ay
    u = u / (1.0 + p.taper * np.clip(v, -1.0, 1.0))  # v is +1 at the base: the ellipse is wider there
    return u * u + v * v <= 1.0


def mask(size: int, prior: LungPrior = PRIOR) -> np.ndarray:
    """bool [size, size]: True on the lung fields of a size x size image."""
    t = (np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0  # pixel centres, as tbray.data.demo draws them
    x, y = np.meshgrid(t, t)
    return _one_lung(x, y, -1, prior) | _one_lung(x, y, 1, prior)


def fill_value(mean: float) -> int:
    """The 8-bit gray the audit paints with: the model's input mean, which its normalisation maps to 0."""
    return int(round(mean * 255))


def apply(images: np.ndarray, control: str, fill: int) -> np.ndarray:
    """A copy of uint8 images [N, S, S] with the lung fields (`outside_lungs`) or the rest (`lungs_only`)
    painted `fill`."""
    if control not in CONTROLS:
        raise ValueError(f"unknown control {control!r}; one of {CONTROLS}")
    lungs = mask(images.shape[-1])
    painted = lungs if control == "outside_lungs" else ~lungs
    out = np.array(images, dtype=np.uint8, copy=True)
    out[:, painted] = fill
    return out


def inside_share(maps: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """Per map [N, S, S] (non-negative), the share of its mass on the lung fields; NaN for an all-zero map."""
    total = maps.sum(axis=(1, 2))
    inside = (maps * lungs).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)
