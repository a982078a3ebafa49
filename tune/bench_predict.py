"""Benchmark streaming prediction, PyTorch against ONNX Runtime: `python tune/bench_predict.py --help`."""

from tbray.commands import exits, bench_predict

if __name__ == "__main__":
    exits.leave(bench_predict.main())
