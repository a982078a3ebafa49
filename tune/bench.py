"""Benchmark the data path, training step, Ray Train's overhead and start-up: `python tune/bench.py --help`."""

import sys

from tbray.commands import bench

if __name__ == "__main__":
    sys.exit(bench.main())
