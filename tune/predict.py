"""Score chest X-rays with a search's best model: `python tune/predict.py --help`."""

import sys

from tbray.commands import predict

if __name__ == "__main__":
    sys.exit(predict.main())
