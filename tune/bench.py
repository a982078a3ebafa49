"""Benchmark the data path, training step, Ray Train's overhead and start-up: `python tune/bench.py --help`."""

from tbray.commands import exits, bench

if __name__ == "__main__":
    exits.leave(bench.main())
