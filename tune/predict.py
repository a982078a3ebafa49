"""Score chest X-rays with a search's best model at its saved operating threshold.

    python tune/predict.py results/<name>/best_model.pt IMAGE_OR_FOLDER [...] [--out predictions.csv]
"""

import argparse
import sys
from pathlib import Path

from tbray.errors import UserError


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="best_model.pt from a run folder")
    p.add_argument("images", type=Path, nargs="+", help="image files or folders (PNG, JPEG)")
    p.add_argument("--threshold", type=float, help="override the saved operating threshold")
    p.add_argument("--out", type=Path, help="write a CSV here (default: print it)")
    p.add_argument("--cam", type=Path, metavar="DIR", help="also write a Grad-CAM overlay of each scored image here")
    args = p.parse_args()
    try:
        from tbray import inference, predict

        saved = inference.load_model_file(args.model)
        origin = "--threshold" if args.threshold is not None else predict.threshold_origin(saved)
        threshold = saved["threshold"] if args.threshold is None else args.threshold
        print(f"tbray: threshold {threshold:.4f} from {origin}", file=sys.stderr)
        table = predict.run(saved, args.images, args.threshold)
        if args.cam:
            from tbray import saliency

            saliency.write_overlays(saved, list(map(Path, table.loc[table["error"].isna(), "path"])), args.cam)
    except UserError as exc:
        print(f"tbray: error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        table.to_csv(args.out, index=False)
    else:
        print(table.to_csv(index=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
