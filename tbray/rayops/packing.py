"""--gpus-per-trial as Ray Train workers and the GPU share of each: whole GPUs for DDP, or a fraction of
one GPU for a one-worker trial, so several trials share a GPU (Ray Tune's fractional GPUs).

No Ray import: the command line checks the value before Ray starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tbray.errors import UserError

DDP_SHARED_GPU = "https://github.com/ray-project/ray/issues/48012"  # two DDP ranks on one GPU fail in NCCL
# The default on a GPU cluster: four one-worker trials share each GPU. Measured on one H200 (tbdb-dev,
# tf_efficientnet_lite0 at 224 px, batch 64, 10 epochs): 4 trials at 0.25 GPU finished in a 47 s tuning
# loop, ~476 training images/s, while one trial per GPU ran ~1 trial per 42 s, ~130 images/s; trial
# start-up, not the GPU, bounds a trial of this size. A GPU with little memory may need 0.5 or 1.
DEFAULT_SHARE = 0.25
EPS = 1e-9  # float slack: 1 / 0.1 is 9.999..., yet ten trials of 0.1 GPU fit on one GPU


@dataclass(frozen=True)
class GpuSplit:
    """How one trial's GPUs are held."""

    workers: int  # Ray Train workers (DDP ranks); 1 on CPU or on a GPU fraction
    gpus_per_worker: float  # 1 for DDP, the fraction for a packed trial, 0 on CPU

    @property
    def per_trial(self) -> float:
        return self.workers * self.gpus_per_worker


def split(gpus_per_trial: float) -> GpuSplit:
    """0 -> one CPU worker; 0.25 -> one worker on a quarter GPU; 2 -> two DDP workers, one GPU each.

    A fraction above one (1.5) would put DDP ranks on a shared GPU, which fails; refused in one line.
    """
    if not gpus_per_trial >= 0 or math.isinf(gpus_per_trial):
        raise UserError(f"--gpus-per-trial must be 0, a fraction below 1 or a whole number, got {gpus_per_trial:g}")
    if gpus_per_trial == 0:
        return GpuSplit(workers=1, gpus_per_worker=0.0)
    if gpus_per_trial < 1:
        return GpuSplit(workers=1, gpus_per_worker=gpus_per_trial)
    if abs(gpus_per_trial - round(gpus_per_trial)) > EPS:
        raise UserError(f"--gpus-per-trial {gpus_per_trial:g}: a GPU fraction is for one-worker trials only (below 1, "
                        f"e.g. 0.5); DDP ranks sharing a GPU fail ({DDP_SHARED_GPU}); use a whole number of GPUs")
    return GpuSplit(workers=int(round(gpus_per_trial)), gpus_per_worker=1.0)


def trials_per_gpus(gpus: float, gpus_per_trial: float) -> int:
    """Trials that fit at once on `gpus` whole GPUs: a fractional trial never spans two GPUs."""
    if gpus_per_trial < 1:
        return int(math.floor(gpus + EPS)) * int(math.floor(1 / gpus_per_trial + EPS))
    return int(math.floor(gpus / gpus_per_trial + EPS))
