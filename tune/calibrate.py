"""Choose a model's operating threshold on a site's own labelled X-rays (site calibration).

    python tune/calibrate.py MODEL PATH --target-sensitivity 0.90 --out NEW_MODEL

The threshold rule is the search's: among thresholds that reach the target sensitivity on the site's
images, the best specificity. NEW_MODEL is a copy of MODEL with the new threshold and a calibration
record (the site data's hash, n, and the sensitivity and specificity reached, with intervals);
MODEL itself is never changed. `tune/predict.py` says which threshold it uses and where it came from.
"""

import argparse
import sys
from pathlib import Path

from tbray.errors import UserError


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="a tbray model file (best_model.pt)")
    p.add_argument("data", type=Path, help="the site's labelled folder: Normal/ and Tuberculosis/ (or its parent)")
    p.add_argument("--target-sensitivity", type=float, default=0.90, help="WHO triage target: 0.90")
    p.add_argument("--out", type=Path, required=True, help="the new model file")
    args = p.parse_args()
    try:
        if not 0 < args.target_sensitivity <= 1:
            raise UserError(f"--target-sensitivity must be in (0, 1], got {args.target_sensitivity}")
        from tbray import site

        record = site.calibrate(args.model, args.data, args.target_sensitivity, args.out)
    except UserError as exc:
        print(f"tbray: error: {exc}", file=sys.stderr)
        return 2
    print(site.calibration_text(record))
    print(f"tbray: wrote {args.out} (the original {args.model} is unchanged)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
