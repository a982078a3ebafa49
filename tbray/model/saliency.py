"""Grad-CAM (the `grad-cam` package) on the model's last convolutional stage: where it looks for TB.

Every map is taken for the TB logit (the model's one output), so it shows the evidence the model weighs
towards TB on any image, Normal or TB. Per image, the share of the map's mass that falls on the lung fields
(tbray.data.lungs) says whether that evidence sits on the lungs; a map spread evenly would put the mask's area
share there, which the report prints beside it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from tbray import outputs
from tbray.data import dataset, lungs, preprocess
from tbray.data.preprocess import Input
from tbray.model import augment, scoring
from tbray.report import grids

CAP = 8  # images per overlay grid: enough to see a pattern, few enough to read
GROUPS = {  # file -> (title, which images)
    "cam_true_positives.png": "Most confident true positives",
    "cam_false_negatives.png": "False negatives (TB called Normal), most confident first",
    "cam_false_positives.png": "Most confident false positives",
}


def target_layer(net: torch.nn.Module) -> torch.nn.Module:
    """The last convolutional stage of a timm EfficientNet: its head conv's norm+activation (bn2)."""
    return net.bn2 if hasattr(net, "bn2") else net.blocks[-1]


def maps(saved: dict, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Grad-CAM for the TB logit, float [N, S, S] in [0, 1] (each map scaled to its own maximum)."""
    on = scoring.device()
    net = scoring.build(saved, on).eval()
    out = []
    with GradCAM(model=net, target_layers=[target_layer(net)]) as cam:
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(on)
            x = augment.prepare(batch, saved["mean"], saved["std"], train=False)
            out.append(cam(input_tensor=x, targets=[ClassifierOutputTarget(0)] * len(x)))
    return np.concatenate(out).astype(np.float32)


def overlay(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """uint8 RGB: the gray image under the map's colours (grad-cam's own blend)."""
    rgb = np.repeat((image.astype(np.float32) / 255.0)[..., None], 3, axis=2)
    return show_cam_on_image(rgb, cam, use_rgb=True, image_weight=0.6)


def groups(labels: np.ndarray, scores: np.ndarray, threshold: float, cap: int = CAP) -> dict[str, np.ndarray]:
    """Indices per overlay grid: the most confident TPs, the FNs (lowest P(TB) first), the most confident FPs."""
    called = scores >= threshold
    order = np.argsort(-scores, kind="stable")  # most TB-like first
    tp = [i for i in order if labels[i] == 1 and called[i]][:cap]
    fn = [i for i in order[::-1] if labels[i] == 1 and not called[i]][:cap]
    fp = [i for i in order if labels[i] == 0 and called[i]][:cap]
    return dict(zip(GROUPS, map(np.asarray, (tp, fn, fp))))


def grid_png(images, cams, captions: list[str], title: str, path: Path) -> Path:
    """One PNG of overlays with a caption under each."""
    fig, axes = grids.figure(len(captions), columns=4)
    for ax, image, cam, caption in zip(axes, images, cams, captions):
        ax.imshow(overlay(image, cam))
        ax.set_title(caption, fontsize=7)
    fig.suptitle(title)
    return grids.save(fig, path)


def share_summary(shares: np.ndarray, labels: np.ndarray) -> dict:
    """Median and quartiles of the lung share per class; images whose map is empty are counted apart."""
    out = {}
    for name, label in (("normal", 0), ("tb", 1)):
        s = shares[labels == label]
        ok = s[np.isfinite(s)]
        q1, med, q3 = np.percentile(ok, [25, 50, 75]) if len(ok) else (None, None, None)
        out[name] = {"n": int(len(ok)), "empty_maps": int(len(s) - len(ok)), "median": med, "q1": q1, "q3": q3,
                     "below_half": int((ok < 0.5).sum())}
    return out


def report(saved: dict, images: np.ndarray, labels: np.ndarray, scores: np.ndarray, paths: list[str],
           run_dir: Path) -> dict:
    """Grad-CAM of every test image: the overlay grids, cam_lung_share.csv, and the report's record."""
    cams = maps(saved, images)
    mask = lungs.mask(images.shape[-1])
    shares = lungs.inside_share(cams, mask)
    outputs.spreadsheet_safe(pd.DataFrame({"path": paths, "label": labels, "score": scores, "lung_share": shares})).to_csv(
        run_dir / "cam_lung_share.csv", index=False)
    counts = {}
    for file, idx in groups(labels, scores, saved["threshold"]).items():
        if len(idx):
            captions = [f"{Path(paths[i]).name[:22]}\nP(TB) {scores[i]:.3f}, " +
                        (f"lungs {shares[i]:.0%}" if np.isfinite(shares[i]) else "empty map") for i in idx]
            grid_png(images[idx], cams[idx], captions, GROUPS[file], run_dir / file)
        counts[file] = int(len(idx))
    summary = share_summary(shares, labels)
    medians = [c["median"] for c in summary.values() if c["median"] is not None]
    mostly_outside = bool(medians) and min(medians) < 0.5
    return {"method": "Grad-CAM (grad-cam) for the TB logit on the last conv stage", "grids": counts,
            "lung_share": summary, "uniform_share": float(mask.mean()), "mostly_outside": mostly_outside}


def write_overlays(saved: dict, files: list[Path], out_dir: Path) -> list[Path]:
    """One overlay PNG per image file (`tune/predict.py --cam DIR`), named after the file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = np.stack([preprocess.to_input(dataset.load_gray(f), Input.of_model(saved)) for f in files])
    written, taken = [], set()
    for f, image, cam in zip(files, images, maps(saved, images)):
        name, n = Path(f).stem, 1
        while name in taken:  # the same file name in two folders
            n += 1
            name = f"{Path(f).stem}-{n}"
        taken.add(name)
        path = out_dir / f"{name}.cam.png"
        grids.save_rgb(overlay(image, cam), path)
        written.append(path)
    return written
