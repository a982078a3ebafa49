"""`make gpu-check`: where a search's GPU time goes, on one GPU, in one table (tbray.bench.gpu_check).

    python tune/gpu_check.py            # on a machine with one GPU: about 7 minutes
    python tune/gpu_check.py --smoke    # the same code at toy sizes on a CPU (no GPU figures)
"""

from __future__ import annotations

import argparse

from tbray.commands import exits
from tbray.rayops import loopback


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tune/gpu_check.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="toy sizes on the CPU, to rehearse the script")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        loopback.unless_joining(None)  # before Ray is imported: its own Ray on loopback, on a token
        import torch

        from tbray.bench import gpu_check, pipeline
        from tbray.errors import UserError

        check = gpu_check.Check()
        if args.smoke:
            check = check.smoke()
        elif not torch.cuda.is_available():
            raise UserError("no GPU here (torch.cuda.is_available() is False): run it where one is, or --smoke")
        print(pipeline.format_table(gpu_check.run(check)))
        return 0

    return exits.run(body)
