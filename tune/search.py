"""Search EfficientNet hyperparameters for TB chest X-rays: `python tune/search.py --help`."""

from tbray.commands import exits, search

if __name__ == "__main__":
    exits.leave(search.main())
