"""The Optuna study in optuna.db: a resumed search continues it, so it must be there and readable.

Tune restores its OptunaSearch searcher from a pickle that keeps, for every trial it is running, the
Optuna trial it asked the study for. A study rebuilt from the finished trials (optuna.create_study,
study.add_trial) gets new trial records; the restored searcher then reports the restarted trial to a
record that is not there (KeyError 'Record does not exist.'), and Tune offers no public way to restore
an experiment with another searcher. So a resume without a readable study is refused before anything
is written, with what the user can do instead.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import sqlalchemy.exc

from tbray.errors import UserError

STUDY_NAME = "tbray"


def url(path: Path) -> str:
    """The SQLAlchemy URL of the study file, as OptunaSearch and optuna-dashboard open it."""
    return f"sqlite:///{path}"


def readable(path: Path) -> bool:
    """Whether the file holds the study, checked read-only: an unreadable file is left exactly as it was
    (RDBStorage opened for writing would create its tables in an empty or missing file)."""
    storage_url = f"sqlite:///file:{path}?mode=ro&uri=true"
    try:
        optuna.load_study(study_name=STUDY_NAME, storage=optuna.storages.RDBStorage(storage_url))
    except (sqlalchemy.exc.SQLAlchemyError, KeyError, ValueError, RuntimeError):
        return False
    return True


def check_resumable(path: Path, run_dir: Path) -> None:
    """Refuse, in one line, to resume Tune's experiment without the study its searcher continues."""
    if path.is_file() and readable(path):
        return
    problem = "is missing" if not path.exists() else "can't be read as an Optuna study (left as it is)"
    finished = run_dir / "trials.csv"
    where = f"{finished} and {run_dir / 'tune'}" if finished.is_file() else f"{run_dir / 'tune'}"
    raise UserError(f"{path} {problem}, and the resumed search needs the study it was using: put optuna.db back "
                    f"from a backup, or start a new search with another --name (the trials so far are in {where})")


def check_startable(path: Path) -> None:
    """Before a resumed search's first trial: a study file there must read, or the searcher fails on it."""
    if path.exists() and not readable(path):
        raise UserError(f"{path} can't be read as an Optuna study (left as it is); no trial has run yet, so nothing "
                        f"is lost by deleting it: delete it and resume")
