"""Open one run's viewers (MLflow, optuna-dashboard, TensorBoard) on loopback: `python tune/ui.py --help`."""

import sys

from tbray.commands import ui

if __name__ == "__main__":
    sys.exit(ui.main())
