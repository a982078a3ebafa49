"""Files a user names for a command to write (--out, --cam): checked before any work, so a slip in a path
costs one line, not a scored folder, and never a file the command reads."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
import sys
from collections.abc import Iterable, Iterator
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


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")  # the pid: two commands never share a temporary file


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write then rename, so a reader (or a later run) never finds half a file: a kill leaves the old one whole."""
    path = Path(path)
    clear_stale(path)
    tmp = _temporary(path)
    try:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only, missing or full destination: one line, the first error kept
        raise UserError(f"{path}: can't be written ({exc.strerror or exc})") from None
    finally:
        discard(tmp)  # gone after the rename; after a failure, Ctrl-C or SIGTERM, no partial copy is left
    return path


def clear_stale(path: Path) -> None:
    """Remove the temporary copies of `path` that killed commands left (SIGKILL runs no cleanup): those
    whose pid is no live process. A live process's copy is its own business."""
    path = Path(path)
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:-len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            discard(tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def discard(path: Path) -> None:
    """Remove a temporary file if it is there; a failure here never hides the error that led to it."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError:
        pass


@contextlib.contextmanager
def held(folder: Path, what: str) -> Iterator[None]:
    """An exclusive lock on `folder` while a command works towards writing `what` there (an flock on the folder
    itself, so no lock file is left behind; the kernel releases it if the holder dies). A second command
    waits its turn, told so, then finds the first one's files: two evaluations given one name can't both
    write, and neither's figures are lost without a word."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as exc:
        raise UserError(f"{folder}: can't be written ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"tbray: waiting for another command writing {what} in {folder}", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


MANIFEST = ".sha256"  # a set's manifest: `sha256sum` format, so `sha256sum -c` checks it too


def write_set(files: dict[Path, str | bytes], manifest: Path) -> None:
    """Files that belong together, in place as one set: all written under temporary names first, the old
    manifest removed, each renamed in, and the manifest (each file's sha256) written last. A kill at any
    point leaves either the old set whole, or files without a manifest that matches them, which `set_problem`
    calls cut off: never a mix that passes for whole."""
    blobs = {Path(p): data.encode("utf-8") if isinstance(data, str) else data for p, data in files.items()}
    temporary = {p: _temporary(p) for p in blobs}
    try:
        for path, tmp in temporary.items():
            clear_stale(path)
            tmp.write_bytes(blobs[path])
        Path(manifest).unlink(missing_ok=True)
        for path, tmp in temporary.items():
            os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"{path}: can't be written ({exc.strerror or exc})") from None
    finally:
        for tmp in temporary.values():
            discard(tmp)
    write_atomic(manifest, "".join(f"{hashlib.sha256(b).hexdigest()}  {p.name}\n" for p, b in blobs.items()))


def set_problem(manifest: Path, names: list[str]) -> str | None:
    """Why the set of `names` beside `manifest` is not whole (cut off, or changed since), or None when it is.
    None also when none of its files is there: no set at all."""
    manifest = Path(manifest)
    present = [n for n in names if (manifest.parent / n).exists()]
    if not manifest.is_file():
        return f"{', '.join(present)} without the manifest {manifest.name} written last" if present else None
    try:
        lines = dict(reversed(line.split("  ", 1)) for line in manifest.read_text().splitlines() if "  " in line)
    except (OSError, UnicodeDecodeError) as exc:
        return f"its manifest {manifest.name} is unreadable ({exc})"
    for name in names:
        file = manifest.parent / name
        if lines.get(name) is None or not file.is_file():
            return f"{name} is missing from the set its manifest {manifest.name} lists"
        if hashlib.sha256(file.read_bytes()).hexdigest() != lines[name]:
            return f"{name} is not the file its manifest {manifest.name} records (cut off, or changed since)"
    return None


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
