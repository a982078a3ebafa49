"""Measure a search's model on labelled X-rays that arrived after the search (an external set).

    python tune/evaluate.py results/<name>/best_model.pt PATH [--name NAME] [--replace] [--out DIR]

Writes external-<NAME>.json and .md (and the scores) beside the model, or into --out DIR: AUROC and
average precision with bootstrap intervals, sensitivity, specificity, PPV and NPV at the model's
threshold with Wilson intervals, the Brier score, and what a threshold chosen there would give.
An earlier evaluation with the same name is kept unless --replace is given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tbray.commands import exits
from tbray.errors import UserError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tune/evaluate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="best_model.pt from a run folder")
    p.add_argument("data", type=Path, help="folder with Normal/ and Tuberculosis/ (or its parent)")
    p.add_argument("--name", help="name of the set in the output file names (default: the folder's name)")
    p.add_argument("--target-sensitivity", type=float, help="for the local threshold (default: the model's)")
    p.add_argument("--replace", action="store_true", help="write over an earlier evaluation with the same name")
    p.add_argument("--out", type=Path, metavar="DIR", help="write the three files into this folder (default: "
                   "beside the model)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        name = args.name or args.data.resolve().name
        if not name.replace("-", "").replace("_", "").isalnum():
            raise UserError(f"--name {name!r}: use letters, digits, '-' and '_' only")
        from tbray.external import site

        json_path, md_path = site.evaluate(args.model, args.data, name, args.target_sensitivity, args.replace,
                                             args.out)
        print(md_path.read_text())
        print(f"tbray: wrote {json_path} and {md_path}")
        return 0

    return exits.run(body)
