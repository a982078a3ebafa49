"""Benchmark streaming prediction (tune/predict.py): images/s and peak memory, PyTorch vs ONNX Runtime.

    python tune/bench_predict.py                      # 3,000 synthetic images at 224 px, 3 repeats each
    python tune/bench_predict.py --images 500 --repeats 2 --model tf_efficientnet_lite0

Synthetic images are written into a temporary folder (kept with --keep DIR); every measurement runs in
its own process. Uses the GPU for PyTorch where there is one (ONNX Runtime uses what its build has).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from tbray.commands import exits


def parser() -> argparse.ArgumentParser:
    from tbray.data import stream

    p = argparse.ArgumentParser(prog="tune/bench_predict.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=3000, help="synthetic images to score")
    p.add_argument("--size", type=int, default=224, help="the model's image size")
    p.add_argument("--file-size", type=int, default=224, help="side of the PNG files (they are resized to --size)")
    p.add_argument("--model", default="efficientnet_b0", help="timm model name")
    p.add_argument("--repeats", type=int, default=3, help="measurements of each engine")
    p.add_argument("--engines", default="torch,onnx", help="comma-separated: torch, onnx")
    p.add_argument("--batch-size", type=int, help="default: tune/predict.py's for the device")
    p.add_argument("--workers", type=int, default=stream.DEFAULT_WORKERS, help="decoding processes")
    p.add_argument("--keep", type=Path, help="write the images and models here and keep them")
    p.add_argument("--child", nargs=2, metavar=("MODEL", "FOLDER"), help=argparse.SUPPRESS)
    return p


def body(args) -> int:
    from tbray.bench import prediction

    if args.child:
        print(json.dumps(prediction.measure_one(Path(args.child[0]), Path(args.child[1]), args.batch_size,
                                                   args.workers)))
        return 0
    import torch

    root = args.keep or Path(tempfile.mkdtemp(prefix="tbray-bench-predict-"))
    folder, pt, onnx = prediction.prepare(root, args.images, args.size, args.model, args.file_size)
    setup = prediction.Setup(folder, pt, onnx, args.images, args.batch_size, args.workers)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"bench: {args.images} images ({args.file_size} px PNG) -> {args.model} at {args.size} px; {gpu}, "
          f"{os.cpu_count()} CPUs, {args.workers} decoding worker(s); {args.repeats} repeats", file=sys.stderr)
    runs = {}
    for engine in args.engines.split(","):
        runs[engine] = []
        for i in range(args.repeats):
            runs[engine].append(prediction.measure(setup, engine))
            print(f"bench: {engine} {i + 1}/{args.repeats}: {runs[engine][-1]['img_s']:.1f} img/s", file=sys.stderr)
    print(prediction.table(runs))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return exits.run(lambda: body(args))


if __name__ == "__main__":  # each measurement runs this file again, with --child, in a fresh process
    sys.exit(main())
