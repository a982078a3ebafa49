"""Score chest X-rays with a search's best model at its saved operating threshold.

    python tune/predict.py results/<name>/best_model.pt IMAGE_OR_FOLDER [...] [--out predictions.csv]
    python tune/predict.py results/<name>/model.onnx FOLDER --out predictions.parquet     # ONNX Runtime
    python tune/predict.py results/<name>/best_model.pt FOLDER --address auto --out p.csv  # on a Ray cluster

Images stream through in batches (memory stays bounded), on a GPU when there is one; unreadable files
get a row with the reason. Rows: path, p_tb, prediction, error, threshold.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tbray.commands import exits
from tbray.errors import ParityError, UserError
from tbray.rayops import loopback


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tune/predict.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="best_model.pt from a run folder, a calibrated copy, or model.onnx")
    p.add_argument("images", type=Path, nargs="+", help="image files or folders (PNG, JPEG)")
    p.add_argument("--threshold", type=float, help="override the saved operating threshold")
    p.add_argument("--out", type=Path, help="write a CSV (or Parquet: a .parquet name) here (default: CSV on stdout)")
    p.add_argument("--onnx", action="store_true", help="score with ONNX Runtime (a .pt model is exported first)")
    p.add_argument("--batch-size", type=int, help="default 256 on a GPU, 32 on a CPU")
    p.add_argument("--workers", type=int, help="decoding processes (default: the cores but one, at most 8)")
    p.add_argument("--address", help="score on this Ray cluster with Ray Data (an address, 'auto', or 'local')")
    p.add_argument("--cam", type=Path, metavar="DIR", help="also write a Grad-CAM overlay of each scored image here "
                   "(a .pt model, scored with PyTorch)")
    return p


def to_config(args: argparse.Namespace):
    """Checked options -> PredictConfig; output paths checked before any image is scored, and before torch loads
    (a slip is refused in about a second, not the seconds torch and timm take to import)."""
    from tbray import outputs
    from tbray.data import dataset

    if args.batch_size is not None and args.batch_size < 1 or args.workers is not None and args.workers < 0:
        raise UserError("--batch-size must be at least 1 and --workers at least 0")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise UserError(f"--threshold is a P(TB) cut-off in [0, 1], got {args.threshold}")
    if args.cam is not None and (args.onnx or args.model.suffix.lower() == ".onnx"):
        raise UserError(f"{args.model}: --cam needs the PyTorch model file (best_model.pt) scored without --onnx")
    if args.out is not None:  # not the model or an image it scores: writing there would destroy it
        scored = dataset.images_under(args.images) if args.out.exists() else []  # listed again only then
        outputs.output_file(args.out, "--out", [args.model, *scored])
    if args.cam is not None:
        outputs.output_folder(args.cam, "--cam")
    from tbray.data import stream
    from tbray.predict import local

    workers = stream.DEFAULT_WORKERS if args.workers is None else args.workers
    return local.PredictConfig(model=args.model, images=args.images, out=args.out, threshold=args.threshold,
                               onnx=args.onnx, batch_size=args.batch_size, workers=workers,
                               address=args.address, cam=args.cam)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        cfg = to_config(args)
        loopback.unless_joining(None if cfg.address == "local" else cfg.address)  # before Ray is imported
        from tbray.model import modelfile
        from tbray.predict import local, scorer

        model = scorer.open_model(cfg.model, cfg.onnx)
        if warning := modelfile.synthetic_warning(model.facts):
            print(warning, file=sys.stderr)
        origin = "--threshold" if cfg.threshold is not None else local.threshold_origin(model.facts)
        threshold = model.facts["threshold"] if cfg.threshold is None else cfg.threshold
        print(f"tbray: threshold {threshold:.4f} from {origin}", file=sys.stderr)
        if cfg.address:
            from tbray.predict import distributed

            distributed.predict_cluster(cfg, model)
        else:
            local.predict(cfg, model)
        if cfg.cam:
            local.write_cams(cfg, model)
        return 0

    # An ONNX graph that disagrees with PyTorch is not the user's doing, and no graph was used: exit 1.
    return exits.run(body, failures=(ParityError,))
