"""What a ``reproduce`` run has finished, kept in its report directory so the run can be resumed there.

A reproduction trains for hours; when it is interrupted, or widened afterwards (more tables, more seeds),
``reproduce.resume=<report dir>`` continues in that directory and trains only what is missing. The
directory holds the effective workload (``workload.yaml``; a resumed run must match it outside ``FREE``),
the fingerprint of the data it ran on (``data.json``) and one JSON line per finished pretraining or
fine-tuning (``runs.jsonl``). A finished fine-tuning needs nothing outside the
directory (its evaluation directory and training curves are inside it, named relative to it), so a report
directory copied to another machine or clone, with the data imported there again, resumes there: only the
data's content must be the same, not its path, and a pretraining whose model is gone is done again.
"""

from __future__ import annotations

import json
from pathlib import Path

from ace_ray.config import ConfigError, Workload, flatten, load_config, save_config, to_dict
from ace_ray.data.schema import IMPRESSIONS_FILE, PRODUCTS_FILE
from ace_ray.data.validate import file_sha256
from ace_ray.model.presets import PRESETS

# Settings that may differ between the run and its resumption: what to reproduce, where Ray runs, where runs
# are recorded, and where the workspace and the data are (the data is compared by content: ``data.json``).
FREE = ("reproduce.", "ray.", "tracking.", "workspace", "data.root", "data.features.out")
DATA_FILE = "data.json"
# What a fine-tuning entry may also say: the report it was trained for (reproduce.reuse), the pretrained model
# it started from, and the precision it trained in (machines differ: bf16 autocast only where the CPU has it).
FACTS = ("reused_from", "init_from", "autocast")


# What every row's preset sets over the base workload, so the base's value has no effect (the command line
# applies its default preset to the base, a workload file may not).
ROW_SET = frozenset.intersection(*(frozenset(o.split("=")[0] for o in ov) for ov in PRESETS.values())) | {
    "finetune.preset"
}


def _settings(data: dict) -> dict:
    return {k: v for k, v in flatten(data).items() if not k.startswith(FREE) and k not in ROW_SET}


def data_fingerprint(w: Workload) -> dict[str, str]:
    """The sha256 of the catalogue's two tables: the same data wherever it was imported."""
    root = w.path(w.data.root)
    return {name: file_sha256(root / name) for name in (PRODUCTS_FILE, IMPRESSIONS_FILE)}


class Ledger:
    """Finished pretrainings (image input x loss weighting -> model directory) and fine-tunings
    ((preset overrides, seed) -> run id, metrics, evaluation directory) of one report directory."""

    def __init__(self, out: Path, workload: Workload | None = None, resume: bool = False):
        """The ledger of report directory ``out`` for a run of ``workload`` (``resume``: continue there);
        without a workload, another report's ledger, read and never written."""
        self.path = out / "runs.jsonl"
        self.pretrained: dict[tuple, str] = {}
        self.runs: dict[tuple, dict] = {}
        self.trained: dict[tuple, dict] = {}  # fine-tuned but not yet evaluated: {"run_id", "model_dir"}
        self.read_only = workload is None
        if self.read_only:
            self._load()
            return
        saved = out / "workload.yaml"
        data = data_fingerprint(workload)  # hashed once: the impressions table is the largest file read here
        if resume:
            if not saved.is_file():
                raise ConfigError(
                    f"reproduce.resume: {out} has no workload.yaml; it is not a reproduce directory"
                )
            # Loaded as a Workload, so settings added to ace-ray since then read as their defaults.
            self._check_same(to_dict(load_config(Workload, saved)), to_dict(workload), saved)
            self._check_data(out / DATA_FILE, data, workload)
            self._load()
        save_config(workload, saved)
        (out / DATA_FILE).write_text(json.dumps(data, indent=1) + "\n")

    @staticmethod
    def _check_same(before: dict, now: dict, saved: Path) -> None:
        a, b = _settings(before), _settings(now)
        diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        if diff:
            shown = ", ".join(f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in diff[:5])
            raise ConfigError(f"reproduce.resume: the workload differs from {saved} in {len(diff)} setting(s): "
                              f"{shown}; only reproduce.*, ray.*, tracking.* and the paths may change")  # fmt: skip

    @staticmethod
    def _check_data(saved: Path, now: dict[str, str], w: Workload) -> None:
        if not saved.is_file():  # a report directory from before the fingerprint was kept
            return
        before = json.loads(saved.read_text())
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        if changed:
            raise ConfigError(f"reproduce.resume: {w.path(w.data.root) / changed[0]} is not the data {saved.parent} "
                              f"ran on (its sha256 differs from {saved}); resume it on the same data")  # fmt: skip

    def _load(self) -> None:
        if not self.path.is_file():
            return
        lines = self.path.read_text().splitlines()
        gone = []
        for n, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                if n == len(lines):  # cut short by the interruption: that run is simply done again
                    print(f"[reproduce] {self.path}:{n}: incomplete last entry ignored")
                    continue
                raise ConfigError(f"{self.path}:{n}: not a JSON entry ({exc})") from exc
            if entry.get("kind") == "pretrain":
                if Path(entry["model_dir"]).is_dir():
                    self.pretrained[tuple(entry["key"])] = entry["model_dir"]
                else:
                    self._say_gone(n, entry["model_dir"], "pretraining")
            elif entry.get("kind") == "finetune":
                run = {
                    "run_id": entry["run_id"],
                    "metrics": entry["metrics"],
                    "eval_dir": self.path.parent / entry["eval_dir"],  # relative, or absolute as once written
                }
                run |= {k: entry[k] for k in FACTS if k in entry}
                self.runs[(tuple(entry["config"]), entry["seed"])] = run
            elif entry.get("kind") == "trained":
                key = (tuple(entry["config"]), entry["seed"])
                if Path(entry["model_dir"]).is_dir():
                    self.trained[key] = {
                        k: entry[k] for k in ("run_id", "model_dir", "reused_from") if k in entry
                    }
                else:
                    gone.append((n, key, entry["model_dir"]))
            else:
                raise ConfigError(f"{self.path}:{n}: unknown entry kind {entry.get('kind')!r}")
        # A fine-tuned model that is gone matters only where it is still to be evaluated here (its evaluation
        # may come later in the file), or to a report that would reuse it.
        for n, key, model_dir in gone:
            if self.read_only or key not in self.runs:
                self._say_gone(n, model_dir, "fine-tuning")

    def _say_gone(self, n: int, model_dir: str, stage: str) -> None:
        """Line ``n``'s model directory is gone: that stage is done again (or, read for reuse, not reused)."""
        print(f"[reproduce] {self.path}:{n}: {model_dir} is gone; that {stage} is "
              f"{'not reused' if self.read_only else 'redone'}")  # fmt: skip

    def _append(self, entry: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def add_pretrain(self, key: tuple, model_dir: str) -> None:
        self.pretrained[key] = model_dir
        self._append({"kind": "pretrain", "key": list(key), "model_dir": str(model_dir)})

    def add_trained(self, key: tuple, run_id: str, model_dir: str, reused_from: str | None = None) -> dict:
        """A finished fine-tuning, recorded before its evaluation: a run that dies evaluating is resumed by
        evaluating that model, not by training it again (``reused_from``: the report directory it was
        trained for, when ``reproduce.reuse`` took it from there)."""
        self.trained[key] = {"run_id": run_id, "model_dir": str(model_dir)}
        if reused_from:
            self.trained[key]["reused_from"] = str(reused_from)
        config, seed = key
        self._append({"kind": "trained", "config": list(config), "seed": seed, **self.trained[key]})
        return self.trained[key]

    def add_run(self, key: tuple, run: dict) -> None:
        """An evaluated fine-tuning: run id, metrics, evaluation directory, and the ``FACTS`` it has."""
        self.runs[key] = run
        config, seed = key
        eval_dir = Path(run["eval_dir"])
        if eval_dir.is_relative_to(self.path.parent):
            eval_dir = eval_dir.relative_to(self.path.parent)
        self._append({"kind": "finetune", "config": list(config), "seed": seed, "run_id": run["run_id"],
                      "metrics": {k: float(v) for k, v in run["metrics"].items()}, "eval_dir": str(eval_dir),
                      **{k: run[k] for k in FACTS if k in run}})  # fmt: skip
