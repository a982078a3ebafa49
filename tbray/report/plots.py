"""PNG figures for the run report; each function writes one file and returns its Path.

Our own figures are built on matplotlib's object-oriented API with the Agg canvas, so
they never touch pyplot's global figure list or the user's backend.  Optuna's plotting
helpers do use pyplot; those figures are closed right after saving.
"""

from __future__ import annotations

import contextlib
import textwrap
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import optuna
import optuna.visualization.matplotlib as optuna_plots
import pandas as pd
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay

from tbray import CLASS_NAMES
from tbray.stats.metrics import confusion

DPI = 120
OPERATING_POINT_STYLE = {"marker": "o", "markersize": 9, "color": "crimson", "linestyle": "none"}


def _figure(n_rows: int = 1, figsize: tuple[float, float] = (5.5, 4.5), **subplot_kw):
    """Return a pyplot-free Agg figure and its axes (an array of them when n_rows > 1)."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(n_rows, 1, **subplot_kw)


def _save(fig: Figure, path: Path | str) -> Path:
    """Save fig as PNG at path (creating folders) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.15)  # no label clipped at the edge
    return path


def message_png(path: Path | str, title: str, message: str) -> Path:
    """Write a PNG that shows why a plot could not be drawn."""
    fig, ax = _figure(figsize=(6, 3))
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, textwrap.fill(message, 60), ha="center", va="center", wrap=True)
    return _save(fig, path)


def _operating_point(labels, scores, threshold: float) -> dict:
    """Return sensitivity, specificity and precision (None if undefined) at threshold."""
    (tn, fp), (fn, tp) = confusion(labels, scores, threshold)
    return {
        "sensitivity": tp / (tp + fn),
        "specificity": tn / (tn + fp),
        "precision": tp / (tp + fp) if tp + fp else None,
    }


def roc_curve_png(labels, scores, threshold: float, path: Path | str, title: str = "ROC curve (test)") -> Path:
    """Write the ROC curve with AUROC in the legend and the operating point marked."""
    fig, ax = _figure()
    RocCurveDisplay.from_predictions(labels, scores, pos_label=1, name="model", ax=ax, plot_chance_level=True)
    point = _operating_point(labels, scores, threshold)
    ax.plot(
        1 - point["specificity"], point["sensitivity"], **OPERATING_POINT_STYLE,
        label=f"threshold {threshold:.3f} (sens {point['sensitivity']:.2f}, spec {point['specificity']:.2f})",
    )
    ax.set(title=title, xlabel="1 - specificity (false positive rate)",
           ylabel="sensitivity (true positive rate)")
    ax.legend(loc="lower right")
    return _save(fig, path)


def pr_curve_png(labels, scores, threshold: float, path: Path | str,
                 title: str = "Precision-recall curve (test)") -> Path:
    """Write the precision-recall curve with AP in the legend and the operating point marked."""
    fig, ax = _figure()
    PrecisionRecallDisplay.from_predictions(
        labels, scores, pos_label=1, name="model", ax=ax, plot_chance_level=True)
    point = _operating_point(labels, scores, threshold)
    if point["precision"] is not None:  # undefined when nothing is predicted TB
        ax.plot(
            point["sensitivity"], point["precision"], **OPERATING_POINT_STYLE,
            label=f"threshold {threshold:.3f} "
                  f"(recall {point['sensitivity']:.2f}, precision {point['precision']:.2f})",
        )
    ax.set(title=title, xlabel="recall (sensitivity)", ylabel="precision (PPV)", ylim=(0, 1.02))
    # Below the axes: inside, the legend covers the chance line wherever the prevalence puts it.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize="small")
    return _save(fig, path)


def confusion_matrix_png(cm, path: Path | str, title: str) -> Path:
    """Write a 2x2 confusion matrix (rows true, columns predicted) labelled Normal / Tuberculosis."""
    fig, ax = _figure(figsize=(4.5, 4))
    display = ConfusionMatrixDisplay(np.asarray(cm), display_labels=list(CLASS_NAMES))
    display.plot(ax=ax, colorbar=False, values_format="d", cmap="Blues")
    ax.set_title(title)
    return _save(fig, path)


def reliability_png(calibration: dict, path: Path | str) -> Path:
    """Write a reliability diagram with a histogram of scores per bin underneath."""
    fig, (top, bottom) = _figure(2, figsize=(5.5, 6), sharex=True, height_ratios=(3, 1))
    filled = [b for b in calibration["bins"] if b["count"]]
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    top.plot(
        [b["mean_score"] for b in filled], [b["fraction_tb"] for b in filled],
        marker="o", label="model",
    )
    top.set(ylabel="fraction of images that are TB", xlim=(0, 1), ylim=(0, 1))
    top.set_title(f"Reliability (test): Brier {calibration['brier']:.3f}, ECE {calibration['ece']:.3f}")
    top.legend(loc="upper left")
    bins = calibration["bins"]
    bottom.bar(
        [(b["lower"] + b["upper"]) / 2 for b in bins], [b["count"] for b in bins],
        width=[b["upper"] - b["lower"] for b in bins], edgecolor="white",
    )
    bottom.set(xlabel="predicted P(TB)", ylabel="images")
    return _save(fig, path)


def _study_problem(study: optuna.Study | None, min_complete: int) -> str | None:
    """Return why an Optuna plot cannot be drawn for study, or None if it can."""
    if study is None:
        return "No Optuna study was recorded for this run."
    if len(study.directions) != 1:
        return "The study has several objectives; these plots need a single one."
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(completed) < min_complete:
        return f"Only {len(completed)} completed trial(s); at least {min_complete} are needed."
    return None


def _save_pyplot(ax: Axes, path: Path | str) -> Path:
    """Save the pyplot figure owning ax, then close it so pyplot does not keep it alive."""
    try:
        ax.figure.set_size_inches(7, 4.5)
        ax.figure.tight_layout()
        return _save(ax.figure, path)
    finally:
        plt.close(ax.figure)


@contextlib.contextmanager
def _optuna_plots_are_experimental():
    """Optuna warns on every call of its matplotlib plots that they are experimental; silenced at these
    calls only, so any other warning still shows."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def search_history_png(trials: pd.DataFrame, objective: str, mode: str, chosen: str | None, path: Path | str) -> Path:
    """Each trial's best `objective` in the order Tune started them, named by Tune id, with the best so far
    and the chosen trial marked: the search's progress in the words trials.csv and the console use."""
    column, title = f"best_{objective}", "Search history"
    if trials.empty or column not in trials or trials[column].isna().all():
        return message_png(path, title, f"No trial reported {objective} yet.")
    values = trials[column].to_numpy(dtype=float)
    order = np.arange(1, len(trials) + 1)
    best = np.fmin.accumulate(values) if mode == "min" else np.fmax.accumulate(values)
    fig, ax = _figure(figsize=(7, 4.5))
    ax.plot(order, values, "o", color="tab:blue", label="each trial's best epoch")
    ax.plot(order, best, "-", color="tab:orange", drawstyle="steps-post", label="best so far")
    if chosen is not None and chosen in set(trials["trial_id"]):
        i = int(np.flatnonzero(trials["trial_id"].to_numpy() == chosen)[0])
        ax.plot(order[i], values[i], **OPERATING_POINT_STYLE, label=f"chosen: {chosen}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(trials) <= 20:
        ax.set_xticks(order, trials["trial_id"].astype(str), rotation=45, ha="right", fontsize="small")
    ax.set(xlabel="trial (Tune id, in the order started)", ylabel=f"{objective} ({'lower' if mode == 'min' else 'higher'} is better)",
           title=f"{title}: {len(trials)} trial(s)")
    ax.legend(fontsize="small")
    return _save(fig, path)


def _varying_params(study: optuna.Study) -> list[str]:
    """Return the names of parameters that take more than one value across completed trials."""
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    names = sorted({name for trial in completed for name in trial.params})
    return [name for name in names if len({repr(t.params.get(name)) for t in completed}) > 1]


IMPORTANCE_MIN_TRIALS = 8  # fANOVA on fewer finished trials ranks noise


def optuna_importance_png(study: optuna.Study | None, path: Path | str) -> Path:
    """Write Optuna's parameter importances over the parameters that varied, from at least
    IMPORTANCE_MIN_TRIALS finished trials, or a message PNG saying why they are unavailable."""
    title = "Hyperparameter importance"
    problem = _study_problem(study, min_complete=IMPORTANCE_MIN_TRIALS)
    if problem is None and not _varying_params(study):
        problem = "No hyperparameter varied across the completed trials."
    if problem:
        return message_png(path, title, problem)
    try:
        n = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        with matplotlib.rc_context(), _optuna_plots_are_experimental():
            ax = optuna_plots.plot_param_importances(study, params=_varying_params(study))
            for where in ("left", "center"):  # Optuna's own title (on the left), replaced by one that says
                ax.set_title("", loc=where)  # how much it rests on
            ax.set_title(f"{title}: fANOVA over {n} finished trials, parameters that varied")
            ax.set_xlabel("share of the search metric's variance explained")
            if ax.get_legend() is not None:
                ax.get_legend().remove()  # "Objective Value": one series, named on the x axis
            return _save_pyplot(ax, path)
    except Exception as error:  # noqa: BLE001 - a missing importance plot must never lose the evaluation
        return message_png(path, title, f"Parameter importances could not be computed: {error}")


def metric_per_epoch_png(history: pd.DataFrame, objective: str, chosen: str | None, path: Path | str) -> Path:
    """The search metric per epoch, one line per trial, the chosen trial drawn thick; train loss beside it."""
    title = f"{objective} per epoch"
    missing = {"trial_id", "epoch", objective} - set(history.columns)
    if missing or history.empty:
        reason = f"history lacks column(s) {sorted(missing)}" if missing else "history is empty"
        return message_png(path, title, f"Nothing to plot: {reason}.")
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, sharex=True)
    groups = history.sort_values("epoch").groupby("trial_id", sort=True)
    for trial_id, trial in groups:
        mine = trial_id == chosen
        style = {"linewidth": 3 if mine else 1, "zorder": 3 if mine else 2, "alpha": 1 if mine or chosen is None else 0.6}
        line, = left.plot(trial["epoch"], trial[objective], marker=".", label=f"{trial_id}{' (chosen)' if mine else ''}", **style)
        if "train_loss" in trial:
            right.plot(trial["epoch"], trial["train_loss"], marker=".", color=line.get_color(), **style)
    if "train_loss" not in history:
        right.text(0.5, 0.5, "no training loss in this history", ha="center", va="center", transform=right.transAxes)
    left.set(xlabel="epoch", ylabel=objective, title=f"Validation: {objective}")
    right.set(xlabel="epoch", ylabel="train_loss", title="Training loss (weighted BCE)")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if groups.ngroups <= 12:  # beyond that the legend hides the lines
        left.legend(title="trial (Tune id)", fontsize="small")
    return _save(fig, path)


def roc_curves_png(curves: dict[str, tuple], path: Path | str,
                   title: str = "ROC: internal test and external sets") -> Path:
    """Write one ROC plot with a curve per data set, each with its operating point at the model's threshold.

    `curves` maps a set's name to (labels, scores, threshold).
    """
    fig, ax = _figure(figsize=(6, 5))
    for i, (name, (labels, scores, threshold)) in enumerate(curves.items()):
        shown = RocCurveDisplay.from_predictions(labels, scores, pos_label=1, name=name, ax=ax,
                                                 plot_chance_level=i == len(curves) - 1)
        point = _operating_point(labels, scores, threshold)
        ax.plot(1 - point["specificity"], point["sensitivity"], marker="o", markersize=8, linestyle="none",
                color=shown.line_.get_color(), markeredgecolor="black")
    ax.set(title=title, xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)")
    ax.legend(loc="lower right", title="dots: the model's threshold", fontsize="small")
    return _save(fig, path)
