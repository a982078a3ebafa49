"""Where a search's GPU time goes, on one GPU, in one table: `python tune/gpu_check.py --help`."""

import sys

from tbray.commands import gpu_check

if __name__ == "__main__":
    sys.exit(gpu_check.main())
