"""The fine-tuned models of ``ace-ray reproduce`` reports, one at a time, as retrievers: what the benchmarks
that look inside a report's models (fashion_colour.py, hot_query_effect.py) iterate over."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from ace_ray import tracking
from ace_ray.config import load_workload
from ace_ray.data import feature_store as fs
from ace_ray.eval.embed import TowerRetriever
from ace_ray.model.presets import PRESETS


def method_name(config: list[str]) -> str:
    """A run's overrides as its row is written: the first preset they start with, then the rest."""
    for name, overrides in PRESETS.items():
        if config[: len(overrides)] == overrides:
            return " ".join([name, *config[len(overrides) :]])
    return " ".join(config)


def report_models(
    report: Path, seeds: set[int] | None = None
) -> Iterator[tuple[str, int, dict, TowerRetriever]]:
    """(method, seed, the run's line in ``runs.jsonl`` (its overrides, MLflow run id and the metrics its
    evaluation recorded), its model as a retriever) for each fine-tuned model of ``report``
    (those of ``seeds`` only, if given; a report still in progress gives its finished runs); each model is
    downloaded from the report's MLflow store to a temporary directory that lives until the next one, and a
    run the store does not have (carried over from another machine's report) is skipped, saying so."""
    runs = [json.loads(line) for line in (report / "runs.jsonl").read_text().splitlines()]
    # A report still training (or stopped) has no results.csv yet: its runs are named from their overrides.
    results = report / "results.csv"
    # Rows of one config (cebert, roi_patch_pixel and none in Tables 1, 3, 4) share a run: all are named.
    methods = pd.read_csv(results).groupby("run_id")["method"].agg(" / ".join) if results.is_file() else {}
    base = load_workload(report / "workload.yaml")
    for run in (r for r in runs if r["kind"] == "finetune" and (seeds is None or r["seed"] in seeds)):
        w = load_workload(report / "workload.yaml", run["config"])
        with tempfile.TemporaryDirectory() as tmp:
            try:
                model_dir = tracking.download_model(base, run["run_id"], tmp)
            except Exception as exc:  # MLflow raises several types for a run its store does not have
                # A ledger entry carried over from another machine's report: its model stayed there.
                print(f"[report_models] {report}: run {run['run_id']} (seed {run['seed']}) is not in "
                      f"{tracking.tracking_uri(base)} ({type(exc).__name__}); skipped")  # fmt: skip
                continue
            model = TowerRetriever(
                model_dir, fs.for_workload(w), w.path(w.data.root), w.eval, w.data.test_days
            )
            yield methods.get(run["run_id"], method_name(run["config"])), run["seed"], run, model
