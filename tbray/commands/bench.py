"""Benchmark tbray's data path, training step, Ray Train overhead and trial start-up; prints one table.

    python tune/bench.py --demo                      # CPU here, GPU where there is one
    python tune/bench.py --demo --regime-only        # only the GPU-speed regime (trial/bare, start-up ratios)
    python tune/bench.py --data ~/data/TB_Chest_Radiography_Database
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from tbray.commands import exits
from tbray.rayops import loopback


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tune/bench.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="a data set root (default: the demo set with --demo)")
    p.add_argument("--demo", action="store_true", help="benchmark on the generated synthetic demo set")
    p.add_argument("--model", default="tf_efficientnet_lite0", help="timm model name")
    p.add_argument("--weights", type=Path, help="a weights file for --model instead of its bundled pretrained ones")
    p.add_argument("--image-size", type=int, default=224, help="image size of the data path and step sections")
    p.add_argument("--batch-size", type=int, default=None, help="default 16 on CPU, 128 on GPU")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default 10 on CPU, 50 on GPU)")
    p.add_argument("--images", type=int, default=256, help="images timed through the naive data path")
    p.add_argument("--loader-workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader processes")
    p.add_argument("--skip-ray", action="store_true", help="only the data path and the bare step")
    p.add_argument("--cpu-threads", type=int, default=max(1, (os.cpu_count() or 1) - 1),
                   help="CPU only: training threads in both loops (default: all cores but one, left to Ray)")
    p.add_argument("--regime-repeats", type=int, default=3, help="GPU-speed regime rounds (0: skip the section)")
    p.add_argument("--regime-epochs", type=int, default=20, help="epochs of each regime run")
    p.add_argument("--regime-only", action="store_true", help="only the GPU-speed regime section")
    return p


def regime_for(args, gpu: bool):
    """On a GPU, the search's own model at 224 px with its weights; on a CPU, a model as fast as a GPU epoch."""
    from tbray.bench import regime

    if gpu:
        return regime.Regime(model=args.model, image_size=224, batch_size=64, epochs=args.regime_epochs, cpus=1,
                             use_gpu=True, pretrained=True, weights=args.weights)
    return regime.Regime(epochs=args.regime_epochs, cpus=args.cpu_threads)


def step_sections(args, root, split, device, gpu: bool) -> list:
    """The data path, the bare training step, and the same step inside a Ray Train worker."""
    import torch

    from tbray.bench import pipeline
    from tbray.bench.pipeline import Row
    from tbray.model import factory as tbmodel

    rows = pipeline.data_path(root, split, args.image_size, Path(tempfile.mkdtemp()), args.loader_workers, device,
                              args.images)
    state = tbmodel.pretrained_state(args.model, args.weights, True)[0]
    bare, util = pipeline.gpu_utilisation(
        lambda: pipeline.step_loop(args.model, state, args.image_size, args.batch_size, args.steps, device))
    rows.append(Row("training step, bare PyTorch loop", bare, "img/s",
                    f"{args.steps} steps of {args.batch_size} after warm-up, {torch.get_num_threads()} threads"))
    if gpu:
        rows.append(Row("GPU utilisation during the bare loop", util, "%", torch.cuda.get_device_name()))
    if not args.skip_ray:
        cpus = 1 if gpu else args.cpu_threads  # Ray gives the worker as many threads as CPUs
        inside = pipeline.in_ray_train(args.model, args.weights, args.image_size, args.batch_size, args.steps, gpu,
                                       cpus)
        rows.append(Row("training step, inside a Ray Train worker", inside["img_s"], "img/s",
                        f"overhead {100 * (1 - inside['img_s'] / bare):+.1f}% vs bare, {inside['threads']} threads"))
        rows.append(Row("trial start-up: Tune trial -> first step in the worker", inside["startup_s"], "s",
                        "worker group, imports, weights"))
        rows.append(Row("whole one-trial Tune run (wall)", inside["trial_s"], "s"))
        if gpu:
            n = pipeline.PUBLIC_TRAIN_IMAGES
            per_epoch = n / inside["img_s"]
            rows.append(Row(f"one 30-epoch trial on {n:,} images (compute, projected)",
                            30 * per_epoch + inside["startup_s"], "s", f"30 x {n} / img/s + start-up"))
    return rows


def body(args) -> int:
    loopback.unless_joining(None)  # before Ray's import: the bench's own Ray on loopback, on a token, like a search's
    import torch

    from tbray.bench import pipeline, regime
    from tbray.data import demo
    from tbray.rayops import cluster

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    args.batch_size = args.batch_size or (128 if gpu else 16)
    args.steps = args.steps or (50 if gpu else 10)
    root = args.data or demo.make(Path("results") / "demo-data", **demo.SEARCH_SET)
    root, split = pipeline.split_for_bench(root)
    print(f"bench: {len(split)} images from {root}; device {torch.cuda.get_device_name() if gpu else 'cpu'} "
          f"({os.cpu_count()} CPUs); model {args.model} at {args.image_size} px, batch {args.batch_size}",
          file=sys.stderr)
    if not gpu:
        torch.set_num_threads(args.cpu_threads)
    if not args.skip_ray:  # first, so every loop shares the machine with Ray's own processes
        cluster.start_local(os.cpu_count())  # a Ray of its own, beside any other local Ray
    rows = [] if args.regime_only else step_sections(args, root, split, device, gpu)
    if not args.skip_ray and args.regime_repeats > 0:
        rows += regime.measure(regime_for(args, gpu), args.regime_repeats)
    print(pipeline.format_table(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return exits.run(lambda: body(args))
