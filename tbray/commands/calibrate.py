"""Choose a model's operating threshold on a site's own labelled X-rays (site calibration).

    python tune/calibrate.py MODEL PATH --target-sensitivity 0.90 --out NEW_MODEL

The threshold rule is the search's: among thresholds that reach the target sensitivity on the site's
images, the best specificity. NEW_MODEL is a copy of MODEL with the new threshold and a calibration
record (the site data's hash, n, and the sensitivity and specificity reached, with intervals);
MODEL itself is never changed. `tune/predict.py` says which threshold it uses and where it came from.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tbray.commands import exits
from tbray.errors import UserError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tune/calibrate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="a tbray model file (best_model.pt)")
    p.add_argument("data", type=Path, help="the site's labelled folder: Normal/ and Tuberculosis/ (or its parent)")
    p.add_argument("--target-sensitivity", type=float, default=0.90, help="WHO triage target: 0.90")
    p.add_argument("--out", type=Path, required=True, help="the new model file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        if not 0 < args.target_sensitivity <= 1:
            raise UserError(f"--target-sensitivity must be in (0, 1], got {args.target_sensitivity}")
        from tbray.external import site

        record = site.calibrate(args.model, args.data, args.target_sensitivity, args.out)
        print(site.calibration_text(record))
        print(f"tbray: wrote {args.out} (the original {args.model} is unchanged)")
        return 0

    return exits.run(body)
