"""What every trial of a search trains with, what Optuna chose for one trial, and the one object a
trial hands its workers: typed, so nothing changes shape between the trial and the worker loop."""

from __future__ import annotations

from dataclasses import dataclass, field

from tbray.config import DEFAULT_CHECKPOINT_EVERY, EVAL_BATCH_SIZE
from tbray.data.preprocess import Input


@dataclass(frozen=True)
class TrainSettings:
    """Fixed for every trial of a search: how one trial trains, whatever Optuna picked."""

    model: str = "tf_efficientnet_lite0"  # timm name; the only EfficientNet with weights bundled offline
    mean: float = 0.5  # of the one gray input channel: from the model's pretrained_cfg (model.gray_stats)
    std: float = 0.5
    num_workers: int = 1  # Ray Train workers per trial (= GPUs per trial, or 1 CPU worker)
    use_gpu: bool = False
    gpus_per_worker: float = 1.0  # below 1 (one worker only): several trials share a GPU
    cpus_per_worker: int = 1  # data sits decoded in memory, so workers need few CPUs
    worker_resources: dict = field(default_factory=dict)  # custom Ray resources each worker asks for, as given
    warmup_epochs: float = 1.0  # linear warm-up before the cosine decay
    eval_batch_size: int = EVAL_BATCH_SIZE
    seed: int = 0
    metric: str = "val_loss"  # the validation metric; each epoch also reports the best so far of the objective
    mode: str = "min"
    selection: str = "pooled"  # how validation ranks a trial (tbray.config.SELECTIONS); sets the objective
    sources: tuple[str, ...] = ()  # the search's sources, in the order of the codes the data carry
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY  # and whenever the metric improves, and at the last epoch
    # Where training images wait between steps: "auto" copies them to a GPU once when they fit
    # (RESIDENT_SHARE of its free memory), else a DataLoader per epoch; "resident" and "loader" force one.
    data_path: str = "auto"


@dataclass(frozen=True)
class TrialParams:
    """What Optuna chose for one trial (the keys of SearchSpace.param_space)."""

    epochs: int
    batch_size: int  # the trial's global batch, split across its workers
    image_size: int
    lr: float
    weight_decay: float
    preprocess: str = "none"  # contrast step before the network (tbray.data.preprocess.EQUALIZE)
    crop: str = "none"  # tbray.data.preprocess.CROPS

    @property
    def input(self) -> Input:
        """The images this trial trains on: its size and the steps before it (the key of its data)."""
        return Input(self.image_size, self.preprocess, self.crop)

    @classmethod
    def from_tune(cls, config: dict) -> "TrialParams":
        """Tune's config dict for the trial, as one typed object."""
        return cls(epochs=int(config["epochs"]), batch_size=int(config["batch_size"]),
                   image_size=int(config["image_size"]), lr=float(config["lr"]),
                   weight_decay=float(config["weight_decay"]), preprocess=config.get("preprocess", "none"),
                   crop=config.get("crop", "none"))


@dataclass(frozen=True)
class TrialSpec:
    """Everything one trial's workers train with: the one object from the trial to the worker loop."""

    params: TrialParams  # what Optuna chose
    settings: TrainSettings  # what every trial of the search shares
    data: object  # ray.ObjectRef of {"train": {...}, "val": {...}} as params.input, one copy per node
    weights: object | None  # ray.ObjectRef of the pretrained backbone state dict, or None (random init)
    started: float  # time.time() when the trial started, for the start-up figure in the history
    fold: int | None = None  # leave-source-out: the source (index) left out of training and validated on
