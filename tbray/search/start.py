"""What a search checks before Ray, Optuna's searcher and the trial code load.

Those imports take about 5 s on 2 cores; a slip in --data, --external, --results or --name is refused
before them, with nothing written. Cheapest first: a resume's study; the folders' places (no file read);
the model (timm, the one heavy import here); then every image of the data and external sets, which may
be thousands of files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tbray.config import SearchConfig
from tbray.data import dataset
from tbray.runs import runfolder


@dataclass
class Checked:
    """Everything a search found before it writes or starts anything."""

    weights: dict | None  # the backbone's starting weights; None: random initialisation
    weights_source: str  # where they came from, for the console
    data: runfolder.Checked  # the --data sources and the split
    external: dict[str, dataset.Discovery]  # each --external set, before copies of the search's images leave it


def finished(cfg: SearchConfig) -> bool:
    """A resume of a search that had finished: its summary again, and nothing else to do."""
    report = runfolder.path(cfg) / "report.json"
    if not (cfg.resume and report.exists()):
        return False
    from tbray.report import page

    print(page.summary_table(json.loads(report.read_text())))
    print(f"(search {cfg.name!r} had already finished; nothing to resume)")
    return True


def check(cfg: SearchConfig) -> Checked:
    """Every check a search passes before it writes its run folder or starts Ray; a UserError names the slip."""
    if cfg.resume:
        _check_study(cfg)
    runfolder.check_places(cfg)
    for name, folder in cfg.external.items():
        with dataset.named(f"--external {name}"):
            dataset.find_root(folder)
    from tbray.model import factory  # timm and torch, for the model's name and weights

    factory.check_name(cfg.model)
    state, source = factory.pretrained_state(cfg.model, cfg.weights, cfg.pretrained)
    external = {}
    for name, folder in cfg.external.items():  # read before anything is written: a bad set leaves no run folder
        with dataset.named(f"--external {name}"):
            external[name] = dataset.discover(folder, min_side=cfg.min_image_size)
    return Checked(state, source, runfolder.check(cfg), external)


def _check_study(cfg: SearchConfig) -> None:
    """A resume needs the Optuna study its searcher was using (read-only; Ray's Tune loads here)."""
    from ray import tune

    from tbray.search import study

    if tune.Tuner.can_restore(f"{runfolder.storage_root(cfg)}/tune"):
        study.check_resumable(runfolder.study_path(cfg), runfolder.path(cfg))
    else:
        study.check_startable(runfolder.study_path(cfg), cfg.name)
