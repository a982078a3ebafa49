"""Measure a search's model on labelled X-rays from elsewhere: `python tune/evaluate.py --help`."""

from tbray.commands import exits, evaluate

if __name__ == "__main__":
    exits.leave(evaluate.main())
