"""Fine-tunings of other ``reproduce`` report directories that a reproduction takes instead of training again.

A report's rows often repeat runs another report already made (an ablation's baseline row, Table 1's rows
after a levers run with the same settings), each hours on a small machine. ``reproduce.reuse`` names such
directories; a row and seed is taken from one when the workload its run was started with (MLflow keeps it)
equals the one this reproduction would train with, outside what only names or places the run, and its
pretraining is one this report may share. The model is evaluated again here, so every figure in a report
comes from one evaluation code. Nothing in the other directories is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ace_ray import tracking
from ace_ray.config import ConfigError, Workload, flatten, to_dict
from ace_ray.eval.ledger import Ledger

# Settings that do not change what a fine-tuning learns: where and how its reproduction runs (the workspace
# holds its outputs; the paths it reads are compared resolved, below), the labels, the pretrained model
# (compared as a pretraining this report may share, below) and the baselines (not evaluated with a row).
IGNORED = (
    "reproduce.",
    "ray.",
    "workspace",
    "name",
    "finetune.init_from",
    "finetune.preset",
    "eval.baselines",
)
GAME = "finetune.adversarial."
PRETRAIN = "pretrain."
PATHS = (
    "data.root",
    "data.features.out",
)  # relative to the workspace: "." and its absolute path are one place


def training_settings(w: Workload, pretrained: bool = True) -> dict:
    """The flattened workload less ``IGNORED`` (and the game's settings in a run without the game, the
    pretraining's in a run that started from none), with its data paths made absolute: two runs with equal
    settings are the same experiment."""
    flat = {k: v for k, v in flatten(to_dict(w)).items() if not k.startswith(IGNORED)}
    if flat[f"{GAME}mode"] == "none":  # no game: how it would be played changes nothing
        flat = {k: v for k, v in flat.items() if not k.startswith(GAME) or k == f"{GAME}mode"}
    if not pretrained:  # TwinBERT starts from model.init: a report that varies the pretraining shares it
        flat = {k: v for k, v in flat.items() if not k.startswith(PRETRAIN)}
    return flat | {k: str(w.path(flat[k])) for k in PATHS if flat.get(k)}


@dataclass
class Candidate:
    """A fine-tuning recorded in another report directory."""

    source: Path  # its report directory
    run_id: str
    model_dir: str | None  # recorded for runs trained but not evaluated there; else the MLflow artefact
    init_from: str | None  # the pretrained model it started from (None: TwinBERT's own initialisation)
    settings: dict


def candidates(sources: list[str | Path], w: Workload) -> list[Candidate]:
    """Every fine-tuning recorded in ``sources`` (report directories), with the workload it ran with."""
    found = []
    for src in map(Path, sources):
        if not (src / "runs.jsonl").is_file():
            raise ConfigError(f"reproduce.reuse: {src} has no runs.jsonl; it is not a reproduce directory")
        ledger = Ledger(src)  # read only
        runs = {r["run_id"]: None for r in ledger.runs.values()}  # evaluated: the model is in MLflow
        runs |= {r["run_id"]: r["model_dir"] for r in ledger.trained.values()}
        for run_id, model_dir in runs.items():
            try:
                ran = tracking.run_workload(w, run_id)
            except Exception as exc:  # MLflow raises several types for an unknown run or a missing artefact
                print(
                    f"[reproduce] reuse: {src}: run {run_id} is not in {tracking.tracking_uri(w)} ({exc}); skipped"
                )
                continue
            init = ran.finetune.init_from
            found.append(
                Candidate(src, run_id, model_dir, init, training_settings(ran, pretrained=bool(init)))
            )
    return found


def match(wanted: Workload, pretrained: str | None, found: list[Candidate]) -> tuple[Candidate | None, str]:
    """The candidate that ran ``wanted``'s settings from a pretraining this report may share, and why not
    when none did. ``pretrained``: this report's pretraining for the row's image input (None if it has none
    yet, then the candidate's is adopted); a TwinBERT row (no ``init_from``) needs a candidate without one."""
    twin = wanted.finetune.preset == "twinbert"
    settings = training_settings(wanted, pretrained=not twin)
    same = [c for c in found if c.settings == settings]
    if not same:
        return None, "no recorded run has these settings"
    for c in same:
        if twin and c.init_from is None:
            return c, ""
        shareable = c.init_from and c.init_from == (pretrained or c.init_from) and Path(c.init_from).is_dir()
        if not twin and shareable:
            return c, ""
    return None, (f"{len(same)} recorded run(s) have these settings, but not a pretraining this report has "
                  f"({pretrained or 'none yet'}) or one that is still there")  # fmt: skip
