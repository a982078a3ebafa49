"""Typed configuration: the search space, the fixed training settings and the search itself."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

EVAL_BATCH_SIZE = 128  # scoring keeps no gradients, so it takes bigger batches than training; used everywhere
# Epochs between routine checkpoints (improvements and the last epoch are always saved): chosen from
# tune/bench.py's GPU-speed regime, see docs/benchmarks.md "Lean epochs".
DEFAULT_CHECKPOINT_EVERY = 5


@dataclass(frozen=True)
class SearchSpace:
    """What Optuna may choose per trial; each list can be overridden on the command line."""

    epochs: tuple[int, ...] = (10, 20, 30)  # ASHA cuts weak trials early, so long schedules stay affordable
    batch_sizes: tuple[int, ...] = (16, 32, 64)  # per trial, split across its workers
    image_sizes: tuple[int, ...] = (224, 256, 320)  # square; the data set is 512x512
    lr_min: float = 5e-5  # AdamW fine-tuning range for an ImageNet backbone
    lr_max: float = 1e-3
    weight_decay_min: float = 1e-5  # decoupled weight decay (AdamW), log-uniform
    weight_decay_max: float = 1e-1
    # Steps before the network (tbray.data.preprocess), searched when given more than "none":
    preprocess: tuple[str, ...] = ("none",)  # contrast: none, equalize (histogram), clahe
    crop: tuple[str, ...] = ("none",)  # none, or lungs (the lung-field prior's box)

    def param_space(self) -> dict:
        """The Tune search space that OptunaSearch converts to Optuna distributions."""
        from ray import tune  # imported here: the command line decides how a local Ray binds before Ray loads

        return {
            "epochs": tune.choice(list(self.epochs)),
            "batch_size": tune.choice(list(self.batch_sizes)),
            "image_size": tune.choice(list(self.image_sizes)),
            "lr": tune.loguniform(self.lr_min, self.lr_max),
            "weight_decay": tune.loguniform(self.weight_decay_min, self.weight_decay_max),
            # Only when searched: a choice of one would show in every plot of parameter importance.
            **({"preprocess": tune.choice(list(self.preprocess))} if self.preprocess != ("none",) else {}),
            **({"crop": tune.choice(list(self.crop))} if self.crop != ("none",) else {}),
        }


# How the search ranks a configuration (--selection), after DomainBed (Gulrajani and Lopez-Paz, 2021):
SELECTIONS = {
    "pooled": "validation images of every source together",
    "worst-source": "the worst of the per-source validation figures, so no source carries the search",
    "leave-source-out": "each source left out of training in turn and scored on its validation images; the mean",
}
# How the operating threshold's sensitivity must reach the target (tbray.stats.threshold): the rule -> its words.
THRESHOLD_RULES = {
    "point": "reaches the target",
    "lower-bound": "has a 95% lower bound that reaches the target",
}


def objective(metric: str, selection: str) -> str:
    """The name of the figure Tune, Optuna and ASHA rank by (best_<it> so far): the metric, per selection."""
    return {"pooled": metric, "worst-source": f"worst_{metric}", "leave-source-out": f"heldout_{metric}"}[selection]


@dataclass
class SearchConfig:
    """Everything `python tune/search.py` can be told; one run folder per `name`."""

    # Source name -> its folder (Normal/, Tuberculosis/, or their parent); one per --data, in order given.
    data: dict[str, Path] = field(default_factory=dict)
    demo: bool = False  # generate and use the synthetic demo set instead
    split_file: Path | None = None  # reuse a split.csv, or a TB-Net style folder of split CSVs
    results: Path = Path("results")  # run folders live here
    name: str | None = None  # run folder name; default: a timestamp
    seed: int = 0  # split, Optuna's sampler and training
    model: str = "tf_efficientnet_lite0"
    weights: Path | None = None  # a state dict to start from, before timm's and the bundled weights
    pretrained: bool = True
    space: SearchSpace = field(default_factory=SearchSpace)
    num_samples: int = 16  # trials Optuna proposes in total
    max_concurrent: int | None = None  # default: cluster GPUs // GPUs per trial (CPUs without GPUs)
    gpus_per_trial: float | None = None  # default: 0.25 (4 trials a GPU, tbray.rayops.packing) with GPUs, else 0 (CPU)
    cpus_per_worker: int = 1
    worker_resources: dict = field(default_factory=dict)  # e.g. {"accelerator_type:A100": 0.01}
    metric: str = "val_loss"  # unlike val_auroc, it does not saturate on separable validation (docs/method.md)
    # How validation ranks configurations (SELECTIONS); None: pooled with one source, worst-source with more.
    selection: str | None = None
    mode: str = "min"
    grace_period: int = 3  # ASHA: epochs every trial gets before it can be stopped
    reduction_factor: int = 3  # ASHA: keep the best 1/3 at each rung
    max_failures: int = 2  # Ray Train worker restarts per trial, from its latest checkpoint
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY  # epochs between routine checkpoints (TrainSettings)
    target_sensitivity: float = 0.90  # WHO triage target; picks the threshold on validation
    threshold_rule: str = "point"  # tbray.stats.threshold.RULES: the point, or its 95% lower bound, reaches it
    external: dict = field(default_factory=dict)  # name -> folder of labelled X-rays from elsewhere, scored once
    min_image_size: int = 64  # smaller files can't be chest X-rays; skipped
    address: str | None = None  # Ray cluster to join; default starts a local Ray
    storage: str | None = None  # shared storage (s3://, gs://, NFS path) for multi-node runs
    resume: bool = False
    num_cpus: int | None = None  # local Ray only: CPUs to offer (default: all)
    mlflow_uri: str | None = None  # MLflow tracking server; default: SQLite in the run folder (tbray.search.tracking)
    shortcut_audit: bool = False  # retrain the best configuration on lung-free / lungs-only images (two more runs)

    def __post_init__(self):
        # One folder, as before several sources (and as `--data PATH` gives it): its source is named by it.
        if isinstance(self.data, (str, Path)):
            self.data = {Path(self.data).name: Path(self.data)}
        elif self.data is None:
            self.data = {}

    @property
    def objective(self) -> str:
        """What the search optimises: `metric` as `selection` measures it (pooled when unresolved)."""
        return objective(self.metric, self.selection or "pooled")

    def to_json(self) -> dict:
        """A JSON-able copy for report.json and the resume check."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = str(value)
        out["external"] = {name: str(folder) for name, folder in self.external.items()}
        out["data"] = {name: str(folder) for name, folder in self.data.items()}
        out["space"] = {k: list(v) if isinstance(v, tuple) else v for k, v in out["space"].items()}
        return out
