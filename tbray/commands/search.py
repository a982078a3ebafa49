"""`tune/search.py`: command-line options -> SearchConfig -> the search.

Each option is declared once, in OPTIONS: its flag, the SearchConfig field(s) it fills, how its text
becomes their value, and its help. Defaults come from SearchConfig and SearchSpace themselves, so the
parser, `--help`, the config and the resume check (`given_options`) can't disagree.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tbray.commands import exits
from tbray.config import SELECTIONS, THRESHOLD_RULES, SearchConfig, SearchSpace
from tbray.data import preprocess
from tbray.errors import UserError
from tbray.rayops import loopback, packing
from tbray.runs import runfolder


def _ints(text: str) -> tuple[int, ...]:
    """'10,20,30' -> (10, 20, 30); every value a positive integer."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _names(allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    """A parser of 'none,clahe' -> ('none', 'clahe'), each value one of `allowed`."""
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
        if not values or any(v not in allowed for v in values):
            raise argparse.ArgumentTypeError(f"expected comma-separated choices of {', '.join(allowed)}, got {text!r}")
        return values
    return parse


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _resource(text: str) -> tuple[str, float]:
    """'accelerator_type:A100=0.01' -> ('accelerator_type:A100', 0.01)."""
    name, sep, amount = text.rpartition("=")
    try:
        value = float(amount)
    except ValueError:
        value = -1
    if not sep or not name or value <= 0:
        raise argparse.ArgumentTypeError(f"expected NAME=AMOUNT with AMOUNT > 0, got {text!r}")
    return name, value


def _external(text: str) -> tuple[str, Path]:
    """'site=/data/site' -> ('site', Path('/data/site')); the name becomes part of file names."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    if not name.replace("-", "").replace("_", "").isalnum():
        raise argparse.ArgumentTypeError(f"name {name!r}: use letters, digits, '-' and '_' only")
    return name, Path(path)


def _source(text: str) -> tuple[str, Path]:
    """'site=/data/site' -> ('site', ...); a plain path is named by its folder: '/data/tbdb-dev' -> 'tbdb-dev'."""
    name, sep, path = text.partition("=")
    if not sep or "/" in name:  # a path that holds '=' further on is still a path
        path = text
        name = Path(os.path.abspath(text)).name
    if not name or not path:
        raise argparse.ArgumentTypeError(f"expected PATH or NAME=PATH, got {text!r}")
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise argparse.ArgumentTypeError(f"source name {name!r}: use letters, digits, '-', '_' and '.' only "
                                         "(or name it: NAME=PATH)")
    return name, Path(path)


def _absolute(path: Path | None) -> Path | None:
    """The path from the current folder, made absolute (without following links) so that search.json
    and the printed resume command mean the same files from any folder a resume is started in."""
    return Path(os.path.abspath(path)) if path is not None else None


@dataclass(frozen=True)
class Option:
    """One command-line option: where its value goes in SearchConfig and how it gets there."""

    flag: str  # --name-of-option
    fields: tuple[str, ...]  # the SearchConfig fields it fills, dotted into SearchSpace ("space.epochs")
    help: str
    group: str  # the --help section
    parse: dict = field(default_factory=dict)  # argparse's type, action, nargs, metavar, choices
    to_config: Callable = lambda value: (value,)  # parsed value -> one value per field
    aliases: tuple[str, ...] = ()  # other spellings users of Ray Tune and timm type

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")


OPTIONS = [
    Option("--data", ("data",), "TB_Chest_Radiography_Database/ (Normal/, Tuberculosis/) or its parent; repeat it "
           "for several sources, each named by its folder or as NAME=PATH", "data",
           {"action": "append", "type": _source, "metavar": "[NAME=]PATH"},
           lambda pairs: ({name: _absolute(folder) for name, folder in pairs},)),
    Option("--demo", ("demo",), "use a generated synthetic data set (not medical)", "data", {"action": "store_true"}),
    Option("--split-file", ("split_file",), "reuse a split.csv, or a folder of TB-Net style split CSVs", "data",
           {"type": Path}, lambda v: (_absolute(v),)),
    Option("--external", ("external",), "labelled X-rays from elsewhere, scored once by the best model (repeatable)",
           "data", {"action": "append", "type": _external, "metavar": "NAME=PATH"},
           lambda pairs: ({name: _absolute(folder) for name, folder in pairs},)),
    Option("--min-image-size", ("min_image_size",), "skip smaller images (px)", "data", {"type": _positive}),
    Option("--epochs", ("space.epochs",), "epochs Optuna chooses from (comma-separated)", "search space",
           {"type": _ints}),
    Option("--batch-sizes", ("space.batch_sizes",), "batch sizes Optuna chooses from (comma-separated)",
           "search space", {"type": _ints}),
    Option("--image-sizes", ("space.image_sizes",), "square image sizes Optuna chooses from (comma-separated)",
           "search space", {"type": _ints}, aliases=("--img-size",)),
    Option("--lr-range", ("space.lr_min", "space.lr_max"), "learning-rate range, searched log-uniformly",
           "search space", {"type": float, "nargs": 2, "metavar": ("MIN", "MAX")}, tuple),
    Option("--weight-decay-range", ("space.weight_decay_min", "space.weight_decay_max"), "AdamW weight-decay "
           "range, searched log-uniformly", "search space", {"type": float, "nargs": 2, "metavar": ("MIN", "MAX")},
           tuple),
    Option("--preprocess", ("space.preprocess",), "contrast steps Optuna chooses from (comma-separated): "
           "none, equalize (histogram equalisation), clahe (OpenCV's CLAHE)", "search space",
           {"type": _names(preprocess.EQUALIZE)}),
    Option("--crop", ("space.crop",), "crops Optuna chooses from (comma-separated): none, lungs (the lung-field "
           "prior's box, before the resize)", "search space", {"type": _names(preprocess.CROPS)}),
    Option("--model", ("model",), "any timm EfficientNet, e.g. efficientnet_b0", "search"),
    Option("--weights", ("weights",), "start from this state dict (loaded with weights_only=True)", "search",
           {"type": Path}, lambda v: (_absolute(v),), aliases=("--initial-checkpoint",)),
    Option("--no-pretrained", ("pretrained",), "random initialisation", "search", {"action": "store_true"},
           lambda v: (not v,)),
    Option("--num-samples", ("num_samples",), "trials in total", "search", {"type": _positive}),
    Option("--max-concurrent", ("max_concurrent",), "default: what the cluster's GPUs allow", "search",
           {"type": _positive}),
    Option("--gpus-per-trial", ("gpus_per_trial",), "DDP workers per trial, one GPU each (0: CPU); a fraction "
           "(0.5, 0.25) packs one-worker trials onto a GPU (default with GPUs: 0.25)", "search", {"type": float}),
    Option("--cpus-per-worker", ("cpus_per_worker",), "CPUs each Ray Train worker asks for", "search",
           {"type": _positive}),
    Option("--worker-resource", ("worker_resources",), "a custom Ray resource each worker asks for (repeatable)",
           "search", {"action": "append", "type": _resource, "metavar": "NAME=AMOUNT"}, lambda v: (dict(v),)),
    Option("--metric", ("metric",), "the validation metric the search optimises", "search",
           {"choices": ["val_auroc", "val_loss", "val_f1", "val_accuracy", "val_sensitivity", "val_specificity"]}),
    Option("--selection", ("selection",), "how validation ranks a configuration: " + "; ".join(
           f"{k}: {v}" for k, v in SELECTIONS.items()) + " (default: pooled with one source, worst-source with "
           "more)", "search", {"choices": list(SELECTIONS)}),
    Option("--mode", ("mode",), "default: min for val_loss, else max", "search", {"choices": ["max", "min"]}),
    Option("--grace-period", ("grace_period",), "ASHA: epochs before a stop", "search", {"type": _positive}),
    Option("--reduction-factor", ("reduction_factor",), "ASHA: keep the best 1/N of the trials at each rung", "search",
           {"type": _positive, "metavar": "N"}),
    Option("--max-failures", ("max_failures",), "worker restarts per trial", "search", {"type": int}),
    Option("--checkpoint-every", ("checkpoint_every",), "checkpoint every K epochs, besides when the metric "
           "improves and at the last epoch", "search", {"type": _positive, "metavar": "K"}),
    Option("--target-sensitivity", ("target_sensitivity",), "the operating threshold is chosen on validation "
           "for this sensitivity (WHO triage target)", "search", {"type": float}),
    Option("--threshold-rule", ("threshold_rule",), "point: validation sensitivity reaches the target; "
           "lower-bound: its 95%% lower bound does (needs about 35+ validation TB images, costs specificity)",
           "search", {"choices": list(THRESHOLD_RULES)}),
    Option("--seed", ("seed",), "the split, Optuna's sampler and training", "search", {"type": int}),
    Option("--shortcut-audit", ("shortcut_audit",), "then retrain the best configuration without the lungs and "
           "on the lungs only (docs/method.md)", "search", {"action": "store_true"}),
    Option("--results", ("results",), "run folders go here", "run", {"type": Path}, lambda v: (_absolute(v),)),
    Option("--name", ("name",), "run folder name (default: a timestamp)", "run"),
    Option("--resume", ("resume",), "continue the search in --name", "run", {"action": "store_true"}),
    Option("--address", ("address",), "Ray cluster address ('auto' on a cluster node); default: start local Ray",
           "run"),
    Option("--storage", ("storage",), "shared storage for checkpoints: s3://bucket/prefix or an NFS path", "run"),
    Option("--num-cpus", ("num_cpus",), "local Ray only: CPUs to use", "run", {"type": _positive}),
    Option("--mlflow-uri", ("mlflow_uri",), "MLflow tracking server (default: results/NAME/mlflow.db)", "run"),
]
# Options that say which search to continue, so a resume never compares them with the saved search.
WHICH_SEARCH = {"--name", "--results", "--resume"}


def _default(option: Option):
    """The option's argparse default, read from SearchConfig (and SearchSpace) so it is stated once."""
    if option.parse.get("action") == "append":
        return []
    if option.parse.get("action") == "store_true":
        return False
    if option.flag == "--mode":
        return None  # follows --metric
    config, space = SearchConfig(), SearchSpace()
    values = [getattr(space, f[6:]) if f.startswith("space.") else getattr(config, f) for f in option.fields]
    return tuple(values) if len(values) > 1 else values[0]


def _shown(option: Option, default) -> str:
    """' (default: 10,20,30)' for --help; nothing for flags and options without a default."""
    if default is None or default is False or default == []:
        return ""
    if isinstance(default, tuple):
        default = (" " if option.parse.get("nargs") else ",").join(map(str, default))
    return f" (default: {default})"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tune/search.py", description=(
        "Search EfficientNet hyperparameters for TB vs Normal chest X-rays with Ray Tune + Optuna, then "
        "evaluate the best checkpoint once on the held-out test split."))
    groups = {}
    for option in OPTIONS:
        group = groups.get(option.group) or groups.setdefault(option.group, p.add_argument_group(option.group))
        default = _default(option)
        group.add_argument(option.flag, *option.aliases, dest=option.dest, default=default, help=option.help + _shown(option, default), **option.parse)
    return p


def given_options(argv: list[str] | None) -> dict[str, tuple[str, ...]]:
    """The options the user typed (not argparse's defaults), each with the SearchConfig settings it fills.

    Parsed again into a namespace that holds a marker for every option (argparse fills in a default only
    where the namespace has none), so an option typed with its default value still counts as typed. The
    repeatable options (default []) can't hold the marker, as argparse appends to it: typed if not empty.
    """
    p, unset = parser(), object()
    marked = argparse.Namespace(**{o.dest: unset for o in OPTIONS if o.parse.get("action") != "append"})
    typed = vars(p.parse_args(argv, marked))
    return {o.flag: o.fields for o in OPTIONS
            if typed[o.dest] is not unset and typed[o.dest] != [] and o.flag not in WHICH_SEARCH}


def check(args: argparse.Namespace) -> None:
    """What argparse can't see: contradictions and ranges; each a UserError naming the option."""
    if args.data and args.demo:
        raise UserError("--data and --demo exclude each other")
    if len({name for name, _ in args.data}) < len(args.data):
        raise UserError("--data names must differ: name each source, --data NAME=PATH")
    sources = len(args.data) or int(args.demo)
    if args.selection not in (None, "pooled") and not args.resume and sources < 2:
        raise UserError(f"--selection {args.selection} compares sources: give two or more --data (one given)")
    for flag, (lo, hi) in (("--lr-range", args.lr_range), ("--weight-decay-range", args.weight_decay_range)):
        if not 0 < lo <= hi < math.inf:  # NaN fails every comparison, inf only the last
            raise UserError(f"{flag} needs 0 < MIN <= MAX, both finite, got {lo} {hi}")
    if args.reduction_factor < 2:
        raise UserError(f"--reduction-factor must be at least 2 (ASHA keeps 1/N at each rung), got {args.reduction_factor}")
    if not 0 <= args.seed < 2**32:  # numpy, scikit-learn and Optuna's sampler all take this range only
        raise UserError(f"--seed must be in [0, 2**32), got {args.seed}")
    if not 0 < args.target_sensitivity <= 1:
        raise UserError(f"--target-sensitivity must be in (0, 1], got {args.target_sensitivity}")
    if args.gpus_per_trial is not None:
        packing.split(args.gpus_per_trial)  # a fraction above 1 (DDP ranks sharing a GPU) refused here
    if args.resume and not args.name:
        raise UserError("--resume needs --name NAME (the run folder under --results)")
    if len({name for name, _ in args.external}) < len(args.external):
        raise UserError("--external names must differ")
    if args.name is not None and ("/" in args.name or args.name in (".", "..")):
        raise UserError(f"--name must be a plain folder name, got {args.name!r}")


def to_config(args: argparse.Namespace) -> SearchConfig:
    """Checked options -> SearchConfig, each option's value through its own `to_config`."""
    check(args)
    values = {}
    for option in OPTIONS:
        values.update(zip(option.fields, option.to_config(getattr(args, option.dest))))
    space = SearchSpace(**{k[6:]: v for k, v in values.items() if k.startswith("space.")})
    config = {k: v for k, v in values.items() if not k.startswith("space.")}
    config["name"] = config["name"] or runfolder.default_name()
    config["mode"] = config["mode"] or ("min" if config["metric"] == "val_loss" else "max")
    if not config["resume"]:  # a resume keeps the rule its search started with (search.json)
        config["selection"] = config["selection"] or ("worst-source" if len(config["data"]) > 1 else "pooled")
    return SearchConfig(space=space, **config)


def main(argv: list[str] | None = None) -> int:
    """Parse, run the search; errors and signals become exit codes (tbray.commands.exits)."""
    args = parser().parse_args(argv)
    cfg = None

    def body() -> int:
        nonlocal cfg
        cfg = to_config(args)
        if cfg.resume:
            cfg = runfolder.for_resume(cfg, given_options(argv))
        loopback.unless_joining(cfg.address)  # before Ray is imported
        from tbray.search import start

        if start.finished(cfg):
            return 0
        checked = start.check(cfg)
        from tbray.search import run  # Ray, Optuna and the trial code load only once the inputs are known sane

        return run.search(cfg, checked)

    try:
        return exits.run(body, resume=lambda: runfolder.resume_command(cfg) if cfg else None)
    finally:
        runfolder.release()
