"""Open one run's viewers (MLflow, optuna-dashboard, TensorBoard) on loopback: `python tune/ui.py --help`."""

from tbray.commands import exits, ui

if __name__ == "__main__":
    exits.leave(ui.main())
