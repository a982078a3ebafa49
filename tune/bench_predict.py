"""Benchmark streaming prediction, PyTorch against ONNX Runtime: `python tune/bench_predict.py --help`."""

import sys

from tbray.commands import bench_predict

if __name__ == "__main__":
    sys.exit(bench_predict.main())
