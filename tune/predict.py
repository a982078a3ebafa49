"""Score chest X-rays with a search's best model: `python tune/predict.py --help`."""

from tbray.commands import exits, predict

if __name__ == "__main__":
    exits.leave(predict.main())
