"""Measure a search's model on labelled X-rays from elsewhere: `python tune/evaluate.py --help`."""

import sys

from tbray.commands import evaluate

if __name__ == "__main__":
    sys.exit(evaluate.main())
