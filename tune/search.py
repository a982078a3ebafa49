"""Search EfficientNet hyperparameters for TB chest X-rays: `python tune/search.py --help`."""

import sys

from tbray.cli import main

if __name__ == "__main__":
    sys.exit(main())
