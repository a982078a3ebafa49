"""Audit a finished search for shortcuts: retrain its best configuration without the lungs and on the lungs
only, score both on the masked test split, and map with Grad-CAM where the best model looks.

    python tune/audit.py results/<name> [--address ADDR]

Adds "shortcut_audit" and "saliency" to the run's report.json (atomically), the section "What the model
looks at" to report.md, lung_mask_examples.png, the Grad-CAM grids and cam_lung_share.csv.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tbray.commands import exits


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tune/audit.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a finished run folder, results/<name>")
    p.add_argument("--address", help="Ray cluster address (default: the search's, else start a local Ray)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        from tbray.rayops import loopback
        from tbray.runs import runfolder

        # The Ray the audit runs on: --address, else the search's own; a Ray it starts here stays on
        # loopback and on a token, as the search's did (set before Ray is imported).
        saved = runfolder.load_config(args.run).address if (args.run / "search.json").is_file() else None
        loopback.unless_joining(args.address or saved)
        from tbray.audit import run as audit_run

        result = audit_run.for_folder(args.run, args.address)
        print(f"tbray: wrote the audit into {args.run / 'report.json'} and {args.run / 'report.md'}")
        print(result["shortcut_audit"]["verdict"])
        return 0

    return exits.run(body)
