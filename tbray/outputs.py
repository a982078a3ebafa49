"""Files a user names for a command to write (--out, --cam): checked before any work, so a slip in a path
costs one line, not a scored folder, and never a file the command reads."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from tbray.errors import UserError


def output_file(out: Path, flag: str, reads: Iterable[Path] = ()) -> Path:
    """`out` as a file this command may write: not a folder, in a folder that exists, and none of the files
    it reads (`reads`: the model, the images), which writing would destroy."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"{out}: is a folder; {flag} takes a file name")
    if not out.resolve().parent.is_dir():
        raise UserError(f"{out}: its folder does not exist")
    for path in reads if out.exists() else ():  # a file not there yet can't be one the command reads
        if Path(path).exists() and os.path.samefile(path, out):
            raise UserError(f"{out}: {flag} would overwrite {path}, which this command reads; name another file")
    return out


def output_folder(folder: Path, flag: str) -> Path:
    """`folder` as one this command may create or add files to: not an existing file."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: is a file; {flag} takes a folder")
    return folder


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write then rename, so a reader (or a later run) never finds half a file: a kill leaves the old one whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # the pid: two commands never share a temporary file
    try:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only, missing or full destination: one line, the first error kept
        raise UserError(f"{path}: can't be written ({exc.strerror or exc})") from None
    finally:
        discard(tmp)  # gone after the rename; after a failure, no partial copy is left
    return path


def discard(path: Path) -> None:
    """Remove a temporary file if it is there; a failure here never hides the error that led to it."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError:
        pass


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as the start of a formula (OWASP)


def spreadsheet_safe(frame):
    """A copy of a table whose text cells can't run as spreadsheet formulas: a cell that starts with one of
    FORMULA_START gets a leading apostrophe, as OWASP's CSV-injection advice says. For the CSVs a person
    opens (scores, predictions, skipped files); split.csv keeps exact paths, as tbray reads it back."""
    from pandas.api.types import is_numeric_dtype  # pandas loads only where a table is written

    out = frame.copy()
    for column in [c for c in out.columns if not is_numeric_dtype(out[c])]:  # text: object or pandas' str
        out[column] = out[column].map(lambda v: "'" + v if isinstance(v, str) and v.startswith(FORMULA_START) else v)
    return out
