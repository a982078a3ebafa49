"""Search EfficientNet hyperparameters for TB chest X-rays: `python tune/search.py --help`."""

import sys

from tbray.commands import search

if __name__ == "__main__":
    sys.exit(search.main())
