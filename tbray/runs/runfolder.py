"""The run folder `results/<name>/`: where a search's data decisions, state and outputs live.

Everything a person needs to judge or reuse a run is in this one folder: split.csv, skipped.csv,
search.json (the options), the Optuna study, Ray Tune's experiment, trials.csv and the report.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pandas as pd

from tbray import outputs
from tbray.config import SearchConfig, SearchSpace
from tbray.data import dataset, demo, duplicates, external_split, sources
from tbray.errors import UserError

LOCK = ".lock"  # held (flock) by the search using the folder; not part of the run's content
PREPARED = {LOCK, "split.csv", "skipped.csv", "search.json", "mlflow.db"}  # what a search writes before its first trial
_held: dict[Path, IO] = {}  # this process's locks by run folder, released by `release` or at exit


@dataclass
class Prepared:
    """The data a search trains and tests on, as fixed in split.csv."""

    roots: dict[str, Path]  # source name -> the folder holding its Normal/ and Tuberculosis/
    split: pd.DataFrame  # path, label, split, sha256, phash, source
    skipped: pd.DataFrame  # path, reason, source
    ignored: list[str]
    cross_split_duplicates: pd.DataFrame
    cross_source_duplicates: pd.DataFrame  # pairs from different sources (each pair within one split)
    confound: dict | None = None  # what acquisition alone tells apart (tbray.data.confound), once measured

    @property
    def names(self) -> list[str]:
        """The sources, in the order --data gave them."""
        return list(self.roots)

    def files(self) -> list[Path]:
        """Every row's file on disk, in split order."""
        return sources.files_of(self.split, self.roots)

    def summary(self) -> dict:
        """Counts per split and class, skipped and ignored files, duplicates: for the report."""
        counts = self.split.groupby(["split", "label"]).size()
        table = sources.counts(self.split)
        return {
            "data_root": "; ".join(str(r) for r in self.roots.values()) if len(self.roots) == 1 else
                         "; ".join(f"{n}={r}" for n, r in self.roots.items()),
            "sources": {name: str(root) for name, root in self.roots.items()},
            "source_counts": [{"source": s, "class": c, **{k: int(v) for k, v in row.items()}}
                              for (s, c), row in table.iterrows()],
            "cross_source_duplicates": sources.duplicate_summary(self.cross_source_duplicates),
            "counts": {f"{s}_{'tb' if y else 'normal'}": int(n) for (s, y), n in counts.items()},
            "skipped": int(len(self.skipped)),
            "skipped_files": self.skipped.to_dict("records"),
            "ignored": self.ignored,
            "duplicates": duplicates.summary(self.cross_split_duplicates),
            "confound": self.confound,
        }


def default_name() -> str:
    """A sortable, unique-enough run name."""
    return time.strftime("tb-%Y%m%d-%H%M%S")


def path(cfg: SearchConfig) -> Path:
    return Path(cfg.results) / cfg.name


def cache_dir(cfg: SearchConfig) -> Path:
    return Path(cfg.results) / ".cache"


def study_path(cfg: SearchConfig) -> Path:
    return path(cfg).resolve() / "optuna.db"


def storage_root(cfg: SearchConfig) -> str:
    """Where Tune and Train write: shared storage when given, else the run folder itself."""
    return f"{cfg.storage.rstrip('/')}/{cfg.name}" if cfg.storage else str(path(cfg).resolve())


def remote_filesystem(cfg: SearchConfig):
    """The pyarrow filesystem of --storage when it is a URI (s3://, gs://), else None (a local or NFS path)."""
    if cfg.storage and "://" in cfg.storage:
        import pyarrow.fs

        return pyarrow.fs.FileSystem.from_uri(cfg.storage)[0]
    return None


def resume_command(cfg: SearchConfig) -> str:
    """What to type to continue this search, from any folder: the script and the results by absolute path."""
    script = Path(__file__).resolve().parents[2] / "tune" / "search.py"
    extra = f" --address {shlex.quote(cfg.address)}" if cfg.address else ""
    return (f"python {shlex.quote(str(script) if script.is_file() else 'tune/search.py')} --resume "
            f"--name {shlex.quote(cfg.name)} --results {shlex.quote(os.path.abspath(cfg.results))}{extra}")


def load_config(run_dir: Path) -> SearchConfig:
    """The options a search was started with (search.json); a file tbray did not write is refused in one line."""
    path = run_dir / "search.json"
    try:
        saved = json.loads(path.read_text())
        saved["space"] = SearchSpace(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["space"].items()})
        for key in ("split_file", "results", "weights"):
            saved[key] = Path(saved[key]) if saved[key] is not None else None
        data = saved.get("data") or {}
        # Before several sources, "data" was one folder: its source is named by the folder, as --data PATH is.
        saved["data"] = {Path(data).name: Path(data)} if isinstance(data, str) else {
            name: Path(folder) for name, folder in data.items()}
        saved.setdefault("selection", "pooled")
        saved["external"] = {name: Path(folder) for name, folder in saved.get("external", {}).items()}
        names = {f.name for f in dataclasses.fields(SearchConfig)}
        return SearchConfig(**{k: v for k, v in saved.items() if k in names})
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UserError(f"{path}: can't be read as the search's options ({type(exc).__name__}: {exc}); "
                        "it is written by the search that made this folder") from None


# Where the search runs and reads from, and what follows it (tracking, the audit): taken from this command.
TAKEN_ON_RESUME = {"address", "num_cpus", "data", "mlflow_uri", "shortcut_audit"}
# How a session runs its trials; the resumed search keeps the values it started with (Tune restores them).
KEPT_ON_RESUME = {"max_concurrent", "gpus_per_trial", "cpus_per_worker", "worker_resources", "max_failures",
                  "checkpoint_every"}


def _field(cfg: SearchConfig, dotted: str) -> object:
    """cfg.space.epochs for 'space.epochs': how the CLI names the setting an option fills."""
    value: object = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def check_given(saved: SearchConfig, cfg: SearchConfig, given: dict[str, tuple[str, ...]]) -> None:
    """Refuse options typed with --resume that differ from search.json and would change the search; say which
    differing ones are taken from now or kept as saved, so no option is dropped silently.

    `given` maps each option the user typed (e.g. '--epochs') to the settings it fills ('space.epochs').
    """
    differing = {flag: fields for flag, fields in given.items()
                 if any(_field(saved, f) != _field(cfg, f) for f in fields)}
    refused = [flag for flag, fields in differing.items() if not set(fields) <= TAKEN_ON_RESUME | KEPT_ON_RESUME]
    if refused:
        shown = ", ".join(f"{flag} ({_shown(saved, differing[flag])} there)" for flag in refused)
        raise UserError(f"--resume continues the search as it started; these options differ from its search.json: "
                        f"{shown}; leave them out, or start a new search with another --name")
    taken = [flag for flag, fields in differing.items() if set(fields) <= TAKEN_ON_RESUME]
    kept = [flag for flag in differing if flag not in taken]
    if taken or kept:
        print("tbray: resuming with " + "; ".join(part for part in (
            taken and f"{', '.join(taken)} from the command line",
            kept and f"{', '.join(kept)} ignored (kept as the search started: it sets how trials run)") if part))


def _shown(cfg: SearchConfig, fields: tuple[str, ...]) -> str:
    """The saved value(s) behind one option, for the refusal."""
    values = [_field(cfg, f) for f in fields]
    return " ".join(",".join(map(str, v)) if isinstance(v, tuple) else str(v) for v in values)


def for_resume(cfg: SearchConfig, given: dict[str, tuple[str, ...]] | None = None) -> SearchConfig:
    """The saved options, with what may change between sessions (cluster address, data path) from now.

    `given`: the options typed on the command line and the settings each fills (see check_given).
    """
    run_dir = path(cfg)
    if not (run_dir / "search.json").exists():
        raise UserError(f"{run_dir}: no search to resume there (no search.json)")
    saved = load_config(run_dir)
    check_given(saved, cfg, given or {})
    # A run folder renamed or moved since is resumed where it is now, under its folder's name; with --storage
    # the trials live under the saved name in that storage, which moving the local folder did not rename.
    name = saved.name if saved.storage else cfg.name
    return dataclasses.replace(saved, name=name, resume=True, results=cfg.results, address=cfg.address,
                               num_cpus=cfg.num_cpus, data=_resumed_data(saved.data, cfg.data, run_dir),
                               mlflow_uri=cfg.mlflow_uri or saved.mlflow_uri,
                               shortcut_audit=cfg.shortcut_audit or saved.shortcut_audit)


def _resumed_data(saved: dict[str, Path], given: dict[str, Path], run_dir: Path) -> dict[str, Path]:
    """The sources' folders for a resume: as saved, or where --data says they are now (same sources)."""
    if not given:
        return saved
    if len(saved) == len(given) == 1:  # one source moved and maybe renamed: it keeps its saved name
        return {next(iter(saved)): next(iter(given.values()))}
    if set(given) != set(saved):
        raise UserError(f"--resume: --data names {', '.join(given)}, but {run_dir / 'search.json'} has "
                        f"{', '.join(saved)}; name the same sources (--data NAME=PATH)")
    return {name: given[name] for name in saved}


def data_roots(cfg: SearchConfig) -> dict[str, Path]:
    """The folders to read, by source: the user's, or the synthetic demo set generated on first use."""
    if cfg.demo:
        return {"demo": demo.make(Path(cfg.results) / "demo-data", seed=0, **demo.SEARCH_SET)}
    if not cfg.data:
        raise UserError("no data: pass --data PATH (the folder with Normal/ and Tuberculosis/) or --demo")
    return {name: Path(folder) for name, folder in cfg.data.items()}


def discover(cfg: SearchConfig) -> tuple[dict[str, Path], dataset.Discovery]:
    """Every source checked (tbray.data.dataset.discover), then as one Discovery; the roots by source."""
    found = {name: dataset.discover(folder, min_side=cfg.min_image_size) for name, folder in data_roots(cfg).items()}
    return {name: d.root for name, d in found.items()}, sources.combine(found)


def choose_split(cfg: SearchConfig, found: dataset.Discovery) -> pd.DataFrame:
    """The saved split on resume, a given split file, or a new stratified split."""
    saved = path(cfg) / "split.csv"
    if cfg.resume:
        split = dataset.read_split(saved, found.files)
        if len(split) != len(found.files):
            raise UserError(f"{', '.join(map(str, cfg.data.values()))}: the data set changed since this search started "
                            f"({len(found.files)} usable files now, {len(split)} in {saved}); resume refused")
        return split
    if cfg.split_file is not None:
        if external_split.is_external_split(Path(cfg.split_file)):
            return _external(Path(cfg.split_file), found)
        return dataset.read_split(Path(cfg.split_file), found.files)
    return dataset.make_split(found.files, cfg.seed)


def _external(split_file: Path, found: dataset.Discovery) -> pd.DataFrame:
    """A peer's published split (TB-Net style CSVs) matched to our files by name."""
    try:
        matched, missing, unused = external_split.match(external_split.read(split_file), found.files)
    except ValueError as exc:
        raise UserError(str(exc))
    if missing:
        print(f"tbray: WARNING {len(missing)} file(s) named in {split_file} are missing on disk, "
              f"e.g. {', '.join(missing[:5])}")
    print(f"tbray: external split {split_file}: {len(matched)} files matched, {unused} on disk not used")
    return matched.merge(found.files[["path", "sha256", "phash", "source"]], on="path", how="left",
                         suffixes=("", "_found"))


def lock(run_dir: Path) -> None:
    """Hold an exclusive lock on the run folder for the rest of this search; refuse if another search holds it.

    Two searches with one --name would both pass the "folder exists" check while they scan the data and
    then write over each other's split, study and checkpoints; a second --resume would run the same
    trials twice. flock is released by the kernel however this process ends, so a crash leaves no stale lock.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    if run_dir.resolve() in _held:
        return  # flock would refuse this process's second open file; it already holds the folder
    handle = open(run_dir / LOCK, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"{run_dir}: another search is using this run folder now; wait for it to end or pass "
                        f"another --name")
    _held[run_dir.resolve()] = handle


def release() -> None:
    """Let go of the run-folder locks this process holds (the CLI calls this however it exits)."""
    while _held:
        _held.popitem()[1].close()


def _refuse_taken(cfg: SearchConfig, run_dir: Path) -> bool:
    """A new search never writes into a folder where trials have run; True if it takes over one where none did.

    A start that stopped before its first trial (no GPU for it, a batch size too big, Ctrl-C while the
    images decode) leaves only the split and the options: nothing trained, so a retry may start over there.
    """
    if cfg.resume or not run_dir.exists():
        return False
    names = {p.name for p in run_dir.iterdir()}
    if names - PREPARED:
        raise UserError(f"{run_dir}: run folder exists; pass --resume to continue it, or another --name")
    return bool(names - {LOCK})


@dataclass
class Checked:
    """The data as found and split before anything of the run is written (`check`)."""

    roots: dict[str, Path]  # source name -> the folder holding its Normal/ and Tuberculosis/
    found: dataset.Discovery  # every source's files, skipped and ignored entries, as one
    split: pd.DataFrame  # path, label, split, sha256, phash, source: new, given, or saved on resume
    cross_split_duplicates: pd.DataFrame
    cross_source_duplicates: pd.DataFrame


def check_places(cfg: SearchConfig) -> None:
    """What needs no data scan: --results writable, the name free, each --data folder a data set."""
    _check_writable(Path(cfg.results))
    _refuse_taken(cfg, path(cfg))
    for folder in cfg.data.values():  # the demo set is made with the scan, if asked for
        dataset.find_root(folder)


def check(cfg: SearchConfig) -> Checked:
    """--results writable, the name free, the data checked, the split chosen: the run folder not yet touched."""
    check_places(cfg)  # again if done before: a taken name costs no data scan
    roots, found = discover(cfg)
    split = choose_split(cfg, found)
    pairs = duplicates.cross_split_duplicates(split[["path", "split", "sha256", "phash"]])
    return Checked(roots, found, split, pairs, sources.cross_source_duplicates(split))


def prepare(cfg: SearchConfig, checked: Checked | None = None) -> Prepared:
    """Write the run folder's data files and options, under its lock (the data checked first unless given)."""
    checked = checked or check(cfg)
    run_dir = path(cfg)
    lock(run_dir)
    if _refuse_taken(cfg, run_dir):  # again under the lock: a search with this name may have started meanwhile
        print(f"tbray: {run_dir} holds no trial (an earlier start stopped before its first); starting over there")
    if not cfg.resume:
        dataset.write_split(checked.split, run_dir / "split.csv")
        (run_dir / "search.json").write_text(json.dumps(cfg.to_json(), indent=2))
    found = checked.found
    # path, reason; and source with several (their paths start with it anyway, as in split.csv)
    skipped = found.skipped[["path", "reason"] + (["source"] if len(checked.roots) > 1 else [])]
    outputs.spreadsheet_safe(skipped).to_csv(run_dir / "skipped.csv", index=False)
    prepared = Prepared(checked.roots, checked.split, found.skipped, found.ignored, checked.cross_split_duplicates,
                        checked.cross_source_duplicates)
    _announce(prepared)
    return prepared


def _check_writable(results: Path) -> None:
    """--results must be a folder this process can write to: checked before any data is scanned.

    By trying it (a probe file), not by permission bits, which root and read-only mounts both defeat.
    """
    if results.exists() and not results.is_dir():
        raise UserError(f"{results}: --results is a file, not a folder")
    try:
        results.mkdir(parents=True, exist_ok=True)
        probe = results / f".tbray-write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{results}: cannot write run folders there ({exc.strerror or exc}); pass another --results")


def _announce(p: Prepared) -> None:
    """Tell the user what was found, skipped, ignored and duplicated: nothing is dropped silently."""
    counts = p.split.groupby(["split", "label"]).size().unstack(fill_value=0)
    where = next(iter(p.roots.values())) if len(p.roots) == 1 else f"{len(p.roots)} sources"
    print(f"tbray: data {where}: " + ", ".join(
        f"{s} {counts.loc[s, 0]} Normal + {counts.loc[s, 1]} TB" for s in ("train", "val", "test") if s in counts.index))
    if len(p.roots) > 1:
        print("tbray: images per source, class and split:\n" + sources.counts_text(p.split))
        for row in sources.duplicate_summary(p.cross_source_duplicates):
            print(f"tbray: {row['pairs']} {row['kind']} duplicate pair(s) between sources {row['sources'][0]} and "
                  f"{row['sources'][1]}, each kept within one split")
    if len(p.skipped):
        print(f"tbray: skipped {len(p.skipped)} file(s) (listed in skipped.csv):")
        for row in p.skipped.head(20).itertuples():
            print(f"  {row.path}: {row.reason}")
    if p.ignored:
        print(f"tbray: ignored entries beside the class folders: {', '.join(p.ignored)}")
    if len(p.cross_split_duplicates):
        print(f"tbray: WARNING {len(p.cross_split_duplicates)} duplicate pair(s) across splits (leakage); "
              f"listed in the report")
