"""The facts a model carries besides its weights, checked one way whether they come from a .pt file or an
ONNX graph's metadata: threshold and where it came from, a site calibration, provenance, image size,
intensity normalisation and the preprocessing steps.

`problem(facts)` says what is wrong in words naming the field, or None; both readers turn it into one
line and exit 2 before any image is read.
"""

from __future__ import annotations

import math
from numbers import Real

from tbray.data import preprocess

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 2048  # EfficientNet's smallest useful input; larger than any it was built for
MEAN_RANGE = (0.0, 1.0)  # images reach the network as (x / 255 - mean) / std, so mean is an intensity in [0, 1]
STD_RANGE = (1e-3, 10.0)  # a std outside this turns every score into 0, 1 or NaN (1e-308 once gave empty cells)

# Keys each record must have, with their types, because predict and calibrate print or use them.
RECORDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "threshold_source": {"kind": str, "n": int, "n_tb": int, "target_sensitivity": Real},
    "calibration": {"site_data": str, "date": str, "n": int, "n_tb": int, "sensitivity": Real, "specificity": Real},
    "provenance": {"synthetic": bool, "sources": dict},
}


def _number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _record_problem(key: str, record) -> str | None:
    """What is wrong with one record (threshold_source, calibration, provenance), or None."""
    if not isinstance(record, dict):
        return f"{key} is not a record (a dict), but {type(record).__name__}"
    for field, kind in RECORDS[key].items():
        if field not in record:
            return f"{key} has no {field!r} (a tbray-written record always has it)"
        value = record[field]
        wrong_bool = kind is not bool and isinstance(value, bool)
        if not isinstance(value, kind) or wrong_bool or (kind is Real and not _number(value)):
            return f"{key}[{field!r}] {value!r} is not a {'number' if kind is Real else kind.__name__}"
    return None


def problem(facts: dict) -> str | None:
    """What is wrong with a model's facts (not its weights), or None. `facts` holds what the file holds."""
    size, threshold = facts.get("image_size"), facts.get("threshold")
    if not isinstance(size, int) or isinstance(size, bool) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        return f"image_size {size!r} is not a whole number of pixels between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE}"
    if not isinstance(threshold, float) or not 0 <= threshold <= 1:  # NaN fails both comparisons
        return f"threshold {threshold!r} is not a probability"
    for key, (low, high) in (("mean", MEAN_RANGE), ("std", STD_RANGE)):
        value = facts.get(key)
        if not _number(value) or not low <= value <= high:
            return f"{key} {value!r} is not a number between {low:g} and {high:g}"
    for key, choices in (("preprocess", preprocess.EQUALIZE), ("crop", preprocess.CROPS)):  # absent: none
        if facts.get(key, "none") not in choices:
            return f"{key} {facts[key]!r} is not one of {', '.join(choices)}"
    for key in RECORDS:  # records that predict, calibrate and the report read, when present
        if facts.get(key) is not None and (found := _record_problem(key, facts[key])):
            return found
    if not isinstance(facts.get("model_name"), str):
        return "model_name is not a text"
    return None
