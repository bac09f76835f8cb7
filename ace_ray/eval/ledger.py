"""What a ``reproduce`` run has finished, kept in its report directory so the run can be resumed there.

A reproduction trains for hours; when it is interrupted, or widened afterwards (more tables, more seeds),
``reproduce.resume=<report dir>`` continues in that directory and trains only what is missing. The
directory holds the effective workload (``workload.yaml``; a resumed run must match it outside
``reproduce.*`` and ``ray.*``) and one JSON line per finished pretraining or fine-tuning (``runs.jsonl``).
"""

from __future__ import annotations

import json
from pathlib import Path

from ace_ray.config import ConfigError, Workload, flatten, load_config, save_config, to_dict

# Sections that may differ between the run and its resumption: what to reproduce, and where Ray runs.
FREE = ("reproduce.", "ray.")


def _settings(data: dict) -> dict:
    return {k: v for k, v in flatten(data).items() if not k.startswith(FREE)}


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
        if resume:
            if not saved.is_file():
                raise ConfigError(
                    f"reproduce.resume: {out} has no workload.yaml; it is not a reproduce directory"
                )
            # Loaded as a Workload, so settings added to ace-ray since then read as their defaults.
            self._check_same(to_dict(load_config(Workload, saved)), to_dict(workload), saved)
            self._load()
        save_config(workload, saved)

    @staticmethod
    def _check_same(before: dict, now: dict, saved: Path) -> None:
        a, b = _settings(before), _settings(now)
        diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        if diff:
            shown = ", ".join(f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in diff[:5])
            raise ConfigError(f"reproduce.resume: the workload differs from {saved} in {len(diff)} setting(s): "
                              f"{shown}; only reproduce.* and ray.* may change")  # fmt: skip

    def _load(self) -> None:
        if not self.path.is_file():
            return
        lines = self.path.read_text().splitlines()
        for n, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                if n == len(lines):  # cut short by the interruption: that run is simply done again
                    print(f"[reproduce] {self.path}:{n}: incomplete last entry ignored")
                    continue
                raise ConfigError(f"{self.path}:{n}: not a JSON entry ({exc})") from exc
            if entry.get("kind") == "pretrain":
                if self._kept(n, entry["model_dir"], "pretraining"):
                    self.pretrained[tuple(entry["key"])] = entry["model_dir"]
            elif entry.get("kind") == "finetune":
                run = {
                    "run_id": entry["run_id"],
                    "metrics": entry["metrics"],
                    "eval_dir": Path(entry["eval_dir"]),
                }
                if "reused_from" in entry:
                    run["reused_from"] = entry["reused_from"]
                self.runs[(tuple(entry["config"]), entry["seed"])] = run
            elif entry.get("kind") == "trained":
                if self._kept(n, entry["model_dir"], "fine-tuning"):
                    self.trained[(tuple(entry["config"]), entry["seed"])] = {
                        k: entry[k] for k in ("run_id", "model_dir", "reused_from") if k in entry
                    }
            else:
                raise ConfigError(f"{self.path}:{n}: unknown entry kind {entry.get('kind')!r}")

    def _kept(self, n: int, model_dir: str, stage: str) -> bool:
        """Whether line ``n``'s model directory is still there; if not, that stage is done again."""
        if Path(model_dir).is_dir():
            return True
        print(f"[reproduce] {self.path}:{n}: {model_dir} is gone; that {stage} is "
              f"{'not reused' if self.read_only else 'redone'}")  # fmt: skip
        return False

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
        self.runs[key] = run
        config, seed = key
        self._append({"kind": "finetune", "config": list(config), "seed": seed, "run_id": run["run_id"],
                      "metrics": {k: float(v) for k, v in run["metrics"].items()}, "eval_dir": str(run["eval_dir"]),
                      **({"reused_from": run["reused_from"]} if "reused_from" in run else {})})  # fmt: skip
