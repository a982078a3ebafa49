"""The Optuna study in optuna.db: its trials labelled with Tune's ids, and a resume that needs it readable.

A resumed search continues the study, so it must be there and readable.

Tune restores its OptunaSearch searcher from a pickle that keeps, for every trial it is running, the
Optuna trial it asked the study for. A study rebuilt from the finished trials (optuna.create_study,
study.add_trial) gets new trial records; the restored searcher then reports the restarted trial to a
record that is not there (KeyError 'Record does not exist.'), and Tune offers no public way to restore
an experiment with another searcher. So a resume without a readable study is refused before anything
is written, with what the user can do instead.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import sqlalchemy.exc
from ray.tune.search.optuna import OptunaSearch

from tbray.errors import UserError


def url(path: Path) -> str:
    """The SQLAlchemy URL of the study file, as OptunaSearch and optuna-dashboard open it."""
    return f"sqlite:///{path}"


def name(path: Path, run_name: str) -> str:
    """The study's name in a run folder's optuna.db: the run's own name, so optuna-dashboard lists each search
    by it. A file whose one study has another name keeps it: a folder renamed since its search started, or
    one an older tbray started (it named every study "tbray"), still resumes and reports."""
    if path.is_file():
        try:
            names = optuna.study.get_all_study_names(storage=f"sqlite:///file:{path}?mode=ro&uri=true")
        except (sqlalchemy.exc.SQLAlchemyError, ValueError, RuntimeError):
            names = []
        if run_name not in names and len(names) == 1:
            return names[0]
    return run_name


def create(path: Path, run_name: str, metric: str, mode: str) -> str:
    """The study, made before the searcher opens it so it carries the metric's name (optuna-dashboard then
    says best_val_loss, not "Objective 0"); returns its name."""
    study_name = name(path, run_name)
    direction = "minimize" if mode == "min" else "maximize"
    study = optuna.create_study(study_name=study_name, storage=url(path), direction=direction, load_if_exists=True)
    with warnings.catch_warnings():  # "experimental" since Optuna 3.2, and still the only way to name it
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([metric])
    return study_name


def load(path: Path, run_name: str) -> optuna.Study:
    """The run folder's study, whichever name it has (see `name`)."""
    return optuna.load_study(study_name=name(path, run_name), storage=url(path))


class RunFolderStorage(optuna.storages.RDBStorage):
    """The study's SQLite storage; when Tune unpickles it on --resume it opens the study where the run
    folder is now. Tune saves the searcher, and this storage's URL with it, in its experiment state, so a
    run folder renamed or moved since would otherwise send the restored searcher to a file not there."""

    resumed_at: str | None = None  # this session's study URL, set before Tuner.restore unpickles the searcher

    def __setstate__(self, state: dict) -> None:
        super().__setstate__({**state, "url": RunFolderStorage.resumed_at or state["url"]})


def readable(path: Path, run_name: str) -> bool:
    """Whether the file holds the study, checked read-only: an unreadable file is left exactly as it was
    (RDBStorage opened for writing would create its tables in an empty or missing file)."""
    storage_url = f"sqlite:///file:{path}?mode=ro&uri=true"
    try:
        optuna.load_study(study_name=name(path, run_name), storage=optuna.storages.RDBStorage(storage_url))
    except (sqlalchemy.exc.SQLAlchemyError, KeyError, ValueError, RuntimeError):
        return False
    return True


def check_resumable(path: Path, run_dir: Path) -> None:
    """Refuse, in one line, to resume Tune's experiment without the study its searcher continues."""
    if path.is_file() and readable(path, run_dir.name):
        return
    problem = "is missing" if not path.exists() else "can't be read as an Optuna study (left as it is)"
    finished = run_dir / "trials.csv"
    where = f"{finished} and {run_dir / 'tune'}" if finished.is_file() else f"{run_dir / 'tune'}"
    raise UserError(f"{path} {problem}, and the resumed search needs the study it was using: put optuna.db back "
                    f"from a backup, or start a new search with another --name (the trials so far are in {where})")


def check_startable(path: Path, run_name: str) -> None:
    """Before a resumed search's first trial: a study file there must read, or the searcher fails on it."""
    if path.exists() and not readable(path, run_name):
        raise UserError(f"{path} can't be read as an Optuna study (left as it is); no trial has run yet, so nothing "
                        f"is lost by deleting it: delete it and resume")


class LabelledOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch that also writes on each Optuna trial its Tune trial id and how it ended.

    User attributes `tune_trial_id` and `tune_status` (completed, stopped_early or error, the words of
    trials.csv) let optuna-dashboard and trials.csv be matched. Optuna accepts attributes only while a
    trial runs, so they are set when Tune asks for the trial and just before the searcher closes it.
    The Optuna trial is found by its parameters among the RUNNING ones: Ray's searcher exposes no map.
    """

    def __init__(self, *args, storage: optuna.storages.RDBStorage, study_name: str, **kwargs):
        super().__init__(*args, storage=storage, study_name=study_name, **kwargs)
        self._labels = {"storage": storage, "study": study_name, "numbers": {}, "configs": {}}  # kept in Tune's saves

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if isinstance(config, dict) and trial_id not in self._labels["numbers"]:
            storage = self._labels["storage"]
            study_id = storage.get_study_id_from_name(self._labels["study"])
            running = storage.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            numbers = [t.number for t in running if t.params == config]
            if len(numbers) == 1:  # a tie of continuous parameters can't be told apart: left unlabelled
                self._labels["numbers"][trial_id], self._labels["configs"][trial_id] = numbers[0], config
                self._set(trial_id, "tune_trial_id", trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            # A killed driver's trial had finished (its study says COMPLETE) but Tune had not saved it so: the
            # resume restarts it from its last checkpoint, and it reports its last epoch once more. Ray's
            # searcher ignores a second completion in the same way.
            pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._labels["numbers"]:
            epochs = self._labels["configs"][trial_id].get("epochs", 0)
            reached = (result or {}).get("epoch", 0)
            self._set(trial_id, "tune_status", "error" if error else "completed" if reached >= epochs else "stopped_early")
        super().on_trial_complete(trial_id, result=result, error=error)

    def _set(self, trial_id: str, key: str, value: str) -> None:
        storage = self._labels["storage"]
        study_id = storage.get_study_id_from_name(self._labels["study"])
        number = storage.get_trial_id_from_study_id_trial_number(study_id, self._labels["numbers"][trial_id])
        try:
            storage.set_trial_user_attr(number, key, value)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # closed already (a resumed search's orphan): its attributes stay as they were
