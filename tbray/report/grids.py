"""Grids of images with captions (lung masks, Grad-CAM overlays): one PNG per grid, pyplot-free."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tbray.data import lungs

DPI = 120  # as tbray.report.plots: the report's figures share one resolution
CELL_INCHES = 1.9  # one image with a two-line caption stays legible at DPI


def figure(n: int, columns: int = 6) -> tuple[Figure, list]:
    """An Agg figure with n image cells (axes off) in rows of `columns`; returns it and the n axes."""
    columns = max(1, min(columns, n))
    rows = max(1, -(-n // columns))
    fig = Figure(figsize=(CELL_INCHES * columns, CELL_INCHES * rows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    return fig, list(axes[:n])


def save(fig: Figure, path: Path | str) -> Path:
    """The figure as a PNG at path (folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def save_rgb(image, path: Path | str) -> Path:
    """One uint8 RGB array [H, W, 3] as a PNG at path (folders created); returns the path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def lung_examples_png(images: np.ndarray, labels: np.ndarray, path: Path, per_class: int = 6) -> Path:
    """The mask's outline over up to `per_class` images of each class (Normal first), for a person to check."""
    fields = lungs.mask(images.shape[-1])
    picks = [i for label in (0, 1) for i in np.flatnonzero(labels == label)[:per_class]]
    fig, axes = figure(len(picks), columns=6)
    for ax, i in zip(axes, picks):
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        ax.imshow(np.ma.masked_where(~fields, fields), cmap="autumn", alpha=0.25, vmin=0, vmax=1)
        ax.contour(fields, levels=[0.5], colors="yellow", linewidths=0.8)
        ax.set_title("Tuberculosis" if labels[i] else "Normal", fontsize=8)
    fig.suptitle("Lung fields used by the shortcut audit (anatomical prior), test images")
    return save(fig, path)
