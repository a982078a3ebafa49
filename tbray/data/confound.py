"""The confound check: what acquisition alone tells apart, measured before any trial, in seconds.

A scikit-learn logistic regression that can't see disease-scale detail is cross-validated on the search's
images. It sees only:

    a 16x16 thumbnail          256 gray levels of the whole film: exposure, framing, borders, tints, text
    intensity statistics       mean, std, 1st/50th/99th percentile of the film (uint8, 0-255)
    file facts                 storage mode (L, RGB, I;16, ...), bit depth, original width and height, format

If such a model separates TB from Normal, the classes differ in how their images were made, and a
network can score well by learning the source instead of the disease. On the public TB Chest X-ray
Database (Normal images from RSNA and NIH, TB images from Belarus and NIH), a logistic model on 16x16
thumbnails and five intensity statistics was reported to reach AUROC 0.976. AUROCs come with
stratified-bootstrap 95% intervals over the out-of-fold scores (tbray.stats.assess). Nothing here is
used for any choice: the check only tells.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tbray.stats import assess

THUMBNAIL = 16  # px: far too coarse for TB's lesions, fine enough for exposure, borders, tints and labels
FOLDS = 5  # stratified cross-validation folds (fewer when a class has fewer images)
CHUNK = 256  # films whose statistics are taken at once: 256 x 224^2 float32 is 51 MB, not the whole set
CONFOUNDED = 0.80  # TB-vs-Normal AUROC at or above which the report says so in words
BIT_DEPTH = {"1": 1, "L": 8, "P": 8, "LA": 8, "RGB": 8, "RGBA": 8, "CMYK": 8, "YCbCr": 8, "I;16": 16,
             "I;16B": 16, "I;16L": 16, "I": 32, "F": 32}  # per channel, by Pillow's storage mode
METHOD = (f"logistic regression (scikit-learn, standardised features) on {THUMBNAIL}x{THUMBNAIL} thumbnails, "
          "intensity statistics (mean, std, 1st/50th/99th percentile) and file facts (storage mode, bit depth, "
          "original size, format); stratified {folds}-fold cross-validated AUROC with a bootstrap 95% interval")


def file_facts(path: Path) -> dict:
    """Storage mode, bit depth, width, height and format from the file's header (nothing decoded)."""
    with Image.open(path) as im:
        return {"mode": im.mode, "bits": BIT_DEPTH.get(im.mode, 8), "width": im.width, "height": im.height,
                "format": im.format or Path(path).suffix.lower().lstrip(".")}


def _intensities(images: np.ndarray) -> np.ndarray:
    """Mean, std, 1st/50th/99th percentile of each uint8 film [N, S, S] -> float [N, 5]."""
    flat = images.reshape(len(images), -1).astype(np.float32)
    return np.column_stack([flat.mean(1), flat.std(1), *np.percentile(flat, [1, 50, 99], axis=1)])


def features(images: np.ndarray, facts: pd.DataFrame) -> pd.DataFrame:
    """One row per image: thumbnail pixels, intensity statistics, file facts (categories one-hot)."""
    thumbs = np.stack([np.asarray(Image.fromarray(im).resize((THUMBNAIL, THUMBNAIL), Image.BOX), dtype=np.float32)
                       for im in images]).reshape(len(images), -1)
    stats = np.concatenate([_intensities(images[i:i + CHUNK]) for i in range(0, len(images), CHUNK)])
    table = pd.DataFrame(np.column_stack([thumbs, stats]),
                         columns=[f"thumb_{i}" for i in range(thumbs.shape[1])] + ["mean", "std", "p1", "p50", "p99"])
    numeric = pd.DataFrame({"bits": facts["bits"].to_numpy(float), "log_width": np.log(facts["width"].to_numpy(float)),
                            "log_height": np.log(facts["height"].to_numpy(float))})
    categories = pd.get_dummies(facts[["mode", "format"]].astype(str), dtype=float).reset_index(drop=True)
    return pd.concat([table, numeric, categories], axis=1)


def cross_validated_auroc(x: pd.DataFrame, y: np.ndarray, seed: int, what: str) -> dict | None:
    """Out-of-fold AUROC of the logistic model telling y apart, with its interval; None if a class is too small."""
    folds = min(FOLDS, int(np.bincount(y, minlength=2).min()))
    if folds < 2:
        return None
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    scores = cross_val_predict(model, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                               method="predict_proba")[:, 1]
    auroc = assess.ranking(y, scores, seed, what)["auroc"]
    return {**auroc, "n": int(len(y)), "n_positive": int(y.sum()), "folds": folds}


def check(images: np.ndarray, paths: list[Path], labels: np.ndarray, sources: np.ndarray, seed: int = 0) -> dict:
    """TB vs Normal over all images and within each source, and each source against the rest."""
    facts = pd.DataFrame([file_facts(p) for p in paths])
    x = features(images, facts)
    labels, sources = np.asarray(labels, dtype=int), np.asarray(sources).astype(str)
    record = {"method": METHOD.format(folds=FOLDS), "threshold": CONFOUNDED, "n_features": int(x.shape[1]),
              "storage_modes": _counts(facts, labels, "mode"), "tb_vs_normal": {}, "source_vs_rest": {}}
    names = sorted({str(s) for s in sources})
    for name in ["all", *names] if len(names) > 1 else ["all"]:
        keep = np.ones(len(labels), bool) if name == "all" else sources == name
        record["tb_vs_normal"][name] = cross_validated_auroc(x[keep], labels[keep], seed, f"confound {name}")
    for name in names if len(names) > 1 else []:
        record["source_vs_rest"][name] = cross_validated_auroc(x, (sources == name).astype(int), seed,
                                                               f"source {name}")
    whole = record["tb_vs_normal"]["all"]
    record["confounded"] = bool(whole is not None and whole["value"] >= CONFOUNDED)
    return record


def _counts(facts: pd.DataFrame, labels: np.ndarray, column: str) -> dict:
    """{"Normal": {"RGB": 400}, "Tuberculosis": {"RGB": 236, "L": 160}}: how each class is stored."""
    return {cls: {str(k): int(v) for k, v in facts.loc[labels == y, column].value_counts().items()}
            for y, cls in enumerate(("Normal", "Tuberculosis"))}


def sentence(record: dict) -> str:
    """The check in one line for the console."""
    whole = record["tb_vs_normal"]["all"]
    if whole is None:
        return "confound check: too few images of a class to cross-validate"
    return (f"confound check: a logistic regression on {THUMBNAIL}x{THUMBNAIL} thumbnails, intensity statistics "
            f"and file facts tells TB from Normal at AUROC {_estimate(whole)} ({whole['folds']}-fold, "
            f"{whole['n']} images)")


def warning(record: dict) -> str | None:
    """The words a reader needs when acquisition alone separates the classes, else None."""
    if not record["confounded"]:
        return None
    whole = record["tb_vs_normal"]["all"]
    return (f"the classes can be told apart without looking at disease (AUROC {whole['value']:.3f} >= "
            f"{CONFOUNDED:.2f} from thumbnails, intensities and file facts alone): a network can score as well by "
            "learning where and how the images were made, so internal test figures say little about another "
            "hospital; judge the model on sources it never trained on")


def _estimate(record: dict) -> str:
    return f"{record['value']:.3f} [{record['ci_low']:.3f}, {record['ci_high']:.3f}]"

