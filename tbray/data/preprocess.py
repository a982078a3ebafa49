"""What a film goes through before the network: an optional crop to the lungs, the resize, an optional
contrast equalisation. The same steps wherever an image is scored (tbray.data.cache for the search,
tbray.data.stream for predict, export's check and the Ray Data predictor, Grad-CAM).

Intensity range: uint8 in, 0 (black) to 255 (white), as `tbray.data.dataset.load_gray` leaves a film; uint8
out, same range. Equalisation comes from OpenCV (`cv2.equalizeHist`, `cv2.createCLAHE`), loaded only when
a step asks for it. Sources differ most in exposure and contrast, which equalisation flattens; the crop
drops the borders, markers and text that say where a film was made (the lung-field prior of
tbray.data.lungs, with a margin), so both are in the search space to be tried, not assumed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from tbray.data import dataset, lungs

EQUALIZE = ("none", "equalize", "clahe")  # --preprocess: none, global histogram equalisation, CLAHE
CROPS = ("none", "lungs")  # --crop: the whole film, or the lung-field prior's bounding box with MARGIN
MARGIN = 0.05  # of the image side, added around the prior's box (the prior is already drawn generously)
CLAHE_CLIP, CLAHE_TILES = 2.0, 8  # OpenCV's clip limit and an 8x8 tile grid, the values its docs start from


@dataclass(frozen=True)
class Input:
    """What one trial's network sees: the image size and the steps before it. Hashable, so it keys caches."""

    size: int
    preprocess: str = "none"  # one of EQUALIZE
    crop: str = "none"  # one of CROPS

    @property
    def steps(self) -> str:
        """'' for the plain resize (so caches of searches before these steps keep their names), else e.g.
        'lungs-clahe'."""
        return "" if (self.preprocess, self.crop) == ("none", "none") else f"{self.crop}-{self.preprocess}"

    @classmethod
    def of(cls, item: "Input | int") -> "Input":
        """An Input from itself or from a bare image size (no steps)."""
        return item if isinstance(item, Input) else cls(int(item))

    @classmethod
    def of_model(cls, saved: dict) -> "Input":
        """The Input a model file, checkpoint or ONNX model's facts record (no steps if it predates them)."""
        return cls(int(saved["image_size"]), saved.get("preprocess", "none"), saved.get("crop", "none"))


@functools.lru_cache(maxsize=1)
def lung_box() -> tuple[float, float, float, float]:
    """(top, bottom, left, right) as fractions of the image: the lung prior's bounding box plus MARGIN."""
    rows, cols = np.nonzero(lungs.mask(512))
    top, bottom = rows.min() / 512 - MARGIN, (rows.max() + 1) / 512 + MARGIN
    left, right = cols.min() / 512 - MARGIN, (cols.max() + 1) / 512 + MARGIN
    return float(max(0.0, top)), float(min(1.0, bottom)), float(max(0.0, left)), float(min(1.0, right))


def crop_lungs(gray: np.ndarray) -> np.ndarray:
    """The lung prior's box (with its margin) of a uint8 film of any size."""
    top, bottom, left, right = lung_box()
    h, w = gray.shape
    return gray[int(round(top * h)):int(round(bottom * h)), int(round(left * w)):int(round(right * w))]


def equalize(gray: np.ndarray, how: str) -> np.ndarray:
    """uint8 -> uint8: global histogram equalisation, or CLAHE (local, contrast-limited)."""
    if how == "none":
        return gray
    import cv2  # OpenCV loads only when a search or model asks for equalisation

    image = np.ascontiguousarray(gray, dtype=np.uint8)
    if how == "equalize":
        return cv2.equalizeHist(image)
    if how == "clahe":
        return cv2.createCLAHE(clipLimit=CLAHE_CLIP, tileGridSize=(CLAHE_TILES, CLAHE_TILES)).apply(image)
    raise ValueError(f"unknown preprocessing {how!r}; one of {', '.join(EQUALIZE)}")


def to_input(gray: np.ndarray, spec: Input) -> np.ndarray:
    """A decoded film as the network's uint8 [size, size] input: crop, resize, equalise, in that order."""
    if spec.crop == "lungs":
        gray = crop_lungs(gray)
    elif spec.crop != "none":
        raise ValueError(f"unknown crop {spec.crop!r}; one of {', '.join(CROPS)}")
    return equalize(dataset.resize(gray, spec.size), spec.preprocess)


def describe(spec: Input) -> str:
    """The steps in words, for ONNX metadata and the console."""
    crop = "cropped to the lung-field prior's box (tbray.data.preprocess.lung_box)" if spec.crop == "lungs" else "the whole film"
    after = {"none": "", "equalize": ", then histogram-equalised (cv2.equalizeHist)",
             "clahe": f", then CLAHE (cv2.createCLAHE clipLimit={CLAHE_CLIP}, tiles {CLAHE_TILES}x{CLAHE_TILES})"}
    return f"{crop}, resized (bilinear) to {spec.size}x{spec.size}{after[spec.preprocess]}"
