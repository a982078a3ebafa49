"""Command-line options -> SearchConfig; user errors become one line and exit code 2."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from tbray import interrupt, loopback, packing, runfolder
from tbray.config import SearchConfig, SearchSpace
from tbray.errors import SearchFailed, UserError


def _ints(text: str) -> tuple[int, ...]:
    """'10,20,30' -> (10, 20, 30); every value a positive integer."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


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


def parser() -> argparse.ArgumentParser:
    defaults, space_defaults = SearchConfig(), SearchSpace()
    p = argparse.ArgumentParser(prog="tune/search.py", description=(
        "Search EfficientNet hyperparameters for TB vs Normal chest X-rays with Ray Tune + Optuna, then "
        "evaluate the best checkpoint once on the held-out test split."))
    data = p.add_argument_group("data")
    data.add_argument("--data", type=Path, help="TB_Chest_Radiography_Database/ (Normal/, Tuberculosis/) or its parent")
    data.add_argument("--demo", action="store_true", help="use a generated synthetic data set (not medical)")
    data.add_argument("--split-file", type=Path, help="reuse a split.csv, or a folder of TB-Net style split CSVs")
    data.add_argument("--external", action="append", default=[], type=_external, metavar="NAME=PATH",
                      help="labelled X-rays from elsewhere, scored once by the best model (repeatable)")
    data.add_argument("--min-image-size", type=_positive, default=defaults.min_image_size, help="skip smaller images (px)")
    space = p.add_argument_group("search space")
    space.add_argument("--epochs", type=_ints, default=space_defaults.epochs, help="choices, e.g. 10,20,30")
    space.add_argument("--batch-sizes", type=_ints, default=space_defaults.batch_sizes, help="choices, e.g. 16,32,64")
    space.add_argument("--image-sizes", type=_ints, default=space_defaults.image_sizes, help="choices, e.g. 224,256,320")
    space.add_argument("--lr-range", type=float, nargs=2, default=(space_defaults.lr_min, space_defaults.lr_max), metavar=("MIN", "MAX"))
    search = p.add_argument_group("search")
    search.add_argument("--model", default=defaults.model, help="any timm EfficientNet, e.g. efficientnet_b0")
    search.add_argument("--weights", type=Path, help="start from this state dict (loaded with weights_only=True)")
    search.add_argument("--no-pretrained", action="store_true", help="random initialisation")
    search.add_argument("--num-samples", type=_positive, default=defaults.num_samples, help="trials in total")
    search.add_argument("--max-concurrent", type=_positive, help="default: what the cluster's GPUs allow")
    search.add_argument("--gpus-per-trial", type=float, help="DDP workers per trial, one GPU each (0: CPU); "
                        "a fraction (0.5, 0.25) packs one-worker trials onto a GPU (default with GPUs: 0.25)")
    search.add_argument("--cpus-per-worker", type=_positive, default=defaults.cpus_per_worker)
    search.add_argument("--worker-resource", action="append", default=[], type=_resource, metavar="NAME=AMOUNT",
                        help="a custom Ray resource each worker asks for (repeatable)")
    search.add_argument("--metric", default=defaults.metric, choices=["val_auroc", "val_loss", "val_f1", "val_accuracy",
                                                               "val_sensitivity", "val_specificity"])
    search.add_argument("--mode", default=None, choices=["max", "min"], help="default: min for val_loss, else max")
    search.add_argument("--grace-period", type=_positive, default=defaults.grace_period, help="ASHA: epochs before a stop")
    search.add_argument("--max-failures", type=int, default=defaults.max_failures, help="worker restarts per trial")
    search.add_argument("--checkpoint-every", type=_positive, default=defaults.checkpoint_every, metavar="K",
                        help="checkpoint every K epochs, besides when the metric improves and at the last epoch")
    search.add_argument("--target-sensitivity", type=float, default=defaults.target_sensitivity)
    search.add_argument("--seed", type=int, default=defaults.seed)
    search.add_argument("--shortcut-audit", action="store_true",
                        help="then retrain the best configuration without the lungs and on the lungs only (README)")
    run = p.add_argument_group("run")
    run.add_argument("--results", type=Path, default=defaults.results, help="run folders go here")
    run.add_argument("--name", help="run folder name (default: a timestamp)")
    run.add_argument("--resume", action="store_true", help="continue the search in --name")
    run.add_argument("--address", help="Ray cluster address ('auto' on a cluster node); default: start local Ray")
    run.add_argument("--storage", help="shared storage for checkpoints: s3://bucket/prefix or an NFS path")
    run.add_argument("--num-cpus", type=_positive, help="local Ray only: CPUs to use")
    run.add_argument("--mlflow-uri", help="MLflow tracking server (default: results/NAME/mlflow.db)")
    return p


# Options whose value is not the SearchConfig field of the same name; --name, --results and --resume say
# which search to continue, so they are never compared with it.
_FIELDS = {"epochs": ("space.epochs",), "batch_sizes": ("space.batch_sizes",), "image_sizes": ("space.image_sizes",),
           "lr_range": ("space.lr_min", "space.lr_max"), "no_pretrained": ("pretrained",),
           "worker_resource": ("worker_resources",)}
_WHICH_SEARCH = {"name", "results", "resume"}


def given_options(argv: list[str] | None) -> dict[str, tuple[str, ...]]:
    """The options the user typed (not argparse's defaults), each with the SearchConfig settings it fills.

    Parsed again into a namespace that holds a marker for every option (argparse fills in a default only
    where the namespace has none), so an option typed with its default value still counts as typed. The
    repeatable options (default []) can't hold the marker, as argparse appends to it: typed if not empty.
    """
    p, unset = parser(), object()
    defaults = vars(p.parse_args([]))
    marked = argparse.Namespace(**{dest: unset for dest, value in defaults.items() if not isinstance(value, list)})
    typed = [dest for dest, value in vars(p.parse_args(argv, marked)).items() if value is not unset and value != []]
    return {f"--{dest.replace('_', '-')}": _FIELDS.get(dest, (dest,)) for dest in typed
            if dest not in _WHICH_SEARCH}


def _absolute(path: Path | None) -> Path | None:
    """The path from the current folder, made absolute (without following links) so that search.json
    and the printed resume command mean the same files from any folder a resume is started in."""
    return Path(os.path.abspath(path)) if path is not None else None


def to_config(args: argparse.Namespace) -> SearchConfig:
    """Validated options; a contradiction is a UserError naming the option."""
    if args.data is not None and args.demo:
        raise UserError("--data and --demo exclude each other")
    lo, hi = args.lr_range
    if not 0 < lo <= hi < math.inf:  # NaN fails every comparison, inf only the last
        raise UserError(f"--lr-range needs 0 < MIN <= MAX, both finite, got {lo} {hi}")
    if not 0 <= args.seed < 2**32:  # numpy, scikit-learn and Optuna's sampler all take this range only
        raise UserError(f"--seed must be in [0, 2**32), got {args.seed}")
    if not 0 < args.target_sensitivity <= 1:
        raise UserError(f"--target-sensitivity must be in (0, 1], got {args.target_sensitivity}")
    if args.gpus_per_trial is not None:
        packing.split(args.gpus_per_trial)  # a fraction above 1 (DDP ranks sharing a GPU) refused here
    if args.resume and not args.name:
        raise UserError("--resume needs --name NAME (the run folder under --results)")
    external_sets = {name: _absolute(folder) for name, folder in args.external}
    if len(external_sets) < len(args.external):
        raise UserError("--external names must differ")
    space = SearchSpace(epochs=args.epochs, batch_sizes=args.batch_sizes, image_sizes=args.image_sizes,
                        lr_min=lo, lr_max=hi)
    name = args.name or runfolder.default_name()
    if "/" in name or name in (".", ".."):
        raise UserError(f"--name must be a plain folder name, got {name!r}")
    return SearchConfig(
        data=_absolute(args.data), demo=args.demo, split_file=_absolute(args.split_file),
        results=_absolute(args.results), name=name, seed=args.seed, model=args.model, weights=_absolute(args.weights),
        pretrained=not args.no_pretrained, space=space,
        num_samples=args.num_samples, max_concurrent=args.max_concurrent, gpus_per_trial=args.gpus_per_trial,
        cpus_per_worker=args.cpus_per_worker, worker_resources=dict(args.worker_resource), metric=args.metric,
        mode=args.mode or ("min" if args.metric == "val_loss" else "max"), grace_period=args.grace_period,
        max_failures=args.max_failures, checkpoint_every=args.checkpoint_every, target_sensitivity=args.target_sensitivity, external=external_sets,
        min_image_size=args.min_image_size, address=args.address, storage=args.storage, resume=args.resume,
        num_cpus=args.num_cpus, mlflow_uri=args.mlflow_uri, shortcut_audit=args.shortcut_audit,
    )


def main(argv: list[str] | None = None) -> int:
    """Parse, run, and turn user errors into one line on stderr with exit code 2."""
    args = parser().parse_args(argv)
    cfg = None
    interrupt.install()  # SIGTERM stops like Ctrl-C; search.run installs it again once Ray has started
    try:
        cfg = to_config(args)
        if cfg.resume:
            cfg = runfolder.for_resume(cfg, given_options(argv))
        loopback.unless_joining(cfg.address)  # before Ray is imported
        from tbray import search  # Ray and torch load only once the options are known to be sane

        return search.run(cfg)
    except UserError as exc:
        print(f"tbray: error: {exc}", file=sys.stderr)
        return 2
    except SearchFailed as exc:
        print(f"tbray: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = f"; continue with: {runfolder.resume_command(cfg)}" if cfg else ""
        print(f"tbray: {interrupt.reason()}{hint}", file=sys.stderr)
        return interrupt.exit_code()
    finally:
        _disconnect()
        runfolder.release()


def _disconnect() -> None:
    """Leave Ray cleanly: a local Ray stops, a cluster keeps running without this driver."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
