"""tbray: distributed hyperparameter search for EfficientNet TB chest X-ray classifiers."""

__version__ = "0.1.0"
CLASS_NAMES = ("Normal", "Tuberculosis")  # label 0, label 1 (the positive class)
