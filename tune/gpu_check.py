"""Where a search's GPU time goes, on one GPU, in one table: `python tune/gpu_check.py --help`."""

from tbray.commands import exits, gpu_check

if __name__ == "__main__":
    exits.leave(gpu_check.main())
