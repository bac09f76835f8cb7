"""The commands as functions: start or join Ray, do the work, record an MLflow run.

``cli.py`` only parses arguments into a ``Workload`` and calls these; tests call them directly.
"""

from __future__ import annotations

import time
from pathlib import Path

from ace_ray import tracking
from ace_ray.config import Workload
from ace_ray.data.features import build_features
from ace_ray.data.hot_queries import read_hot_queries, write_hot_queries
from ace_ray.data.importers.fashion_products import import_fashion_products
from ace_ray.data.importers.table import ColumnMap, import_table
from ace_ray.data.schema import MANIFEST_FILE, QUARANTINE_FILE, REPORT_FILE, Manifest
from ace_ray.data.summary import SUMMARY_FILE, format_summary, summarize
from ace_ray.data.synth.generate import synthesize
from ace_ray.data.validate import Report, format_report, validate
from ace_ray.runtime import ensure_ray


def synth(workload: Workload) -> dict[str, float]:
    """Generate the synthetic shop into ``data.root``."""
    ensure_ray(workload.ray)
    root = workload.path(workload.data.root)
    with tracking.start_run(workload, "synth", tags={"stage": "synth"}):
        figures = synthesize(workload.data.synth, workload.data.clicks, root)
        tracking.log_metrics(figures)
        tracking.log_artifact(root / MANIFEST_FILE)
    print(
        f"synth: {int(figures['products']):,} products, {int(figures['impressions']):,} impressions in {root} "
        f"({figures['products_per_s']:.0f} products/s, {figures['seconds_total']:.1f} s)"
    )
    return figures


def _record_import(workload: Workload, name: str, manifest: Manifest, root: Path, seconds: float) -> None:
    tracking.log_metrics({**manifest.counts, "seconds": seconds})
    tracking.log_artifact(root / MANIFEST_FILE)
    counts = ", ".join(f"{v:,} {k}" for k, v in manifest.counts.items())
    print(f"import {name}: {counts} in {root} (impressions {manifest.impressions}, {seconds:.1f} s)")


def import_fashion(workload: Workload, src: str | Path) -> Manifest:
    """Import the fashion-products folder into ``data.root``."""
    ensure_ray(workload.ray)
    root = workload.path(workload.data.root)
    with tracking.start_run(workload, "import-fashion-products", tags={"stage": "import"}):
        t0 = time.perf_counter()
        manifest = import_fashion_products(src, root, workload.data.synth, workload.data.clicks)
        _record_import(workload, "fashion-products", manifest, root, time.perf_counter() - t0)
    return manifest


def import_user_table(
    workload: Workload,
    products: str | Path,
    images: str | Path,
    cols: ColumnMap,
    impressions: str | Path | None,
) -> Manifest:
    """Import a user's CSV/Parquet catalogue into ``data.root``."""
    ensure_ray(workload.ray)
    root = workload.path(workload.data.root)
    with tracking.start_run(workload, "import-table", tags={"stage": "import"}):
        t0 = time.perf_counter()
        manifest = import_table(
            products, images, root, cols, workload.data.synth, workload.data.clicks, impressions
        )
        _record_import(workload, "table", manifest, root, time.perf_counter() - t0)
    return manifest


def validate_catalogue(workload: Workload) -> Report:
    """Validate ``data.root``, print the report, write the quarantine."""
    ensure_ray(workload.ray)
    root = workload.path(workload.data.root)
    with tracking.start_run(workload, "validate", tags={"stage": "validate"}):
        report = validate(root, workers=workload.data.synth.workers)
        tracking.log_metrics(
            {f"{t}_in": n for t, n in report.counts_in.items()}
            | {f"{t}_kept": n for t, n in report.counts_kept.items()}
            | {f"{t}_quarantined": n for t, n in report.counts_quarantined.items()}
        )
        tracking.log_artifact(root / REPORT_FILE)
        tracking.log_artifact(root / QUARANTINE_FILE)
    print(format_report(report))
    if not report.ok:
        print(f"quarantined rows (file, row, reason) are in {root / QUARANTINE_FILE}")
    return report


def features(workload: Workload) -> dict:
    """Build the image features of ``data.root`` into its feature store."""
    ensure_ray(workload.ray)
    root = workload.path(workload.data.root)
    cfg = workload.data.features
    out = workload.path(cfg.out) if cfg.out else None
    with tracking.start_run(workload, "features", tags={"stage": "features"}):
        stats = build_features(root, cfg, out)
        hot = write_hot_queries(root, workload.data.test_days, workload.data.text.hot_k)
        stats["products_with_hot_queries"] = len(read_hot_queries(root))
        tracking.log_metrics(stats)
        tracking.log_artifact(Path(stats["store"]) / "stats.json")
        tracking.log_artifact(Path(stats["store"]) / "manifest.json")
    print(
        f"features: {stats['featurised']:,} of {stats['products_in']:,} products featurised, "
        f"{stats['quarantined']:,} quarantined, {stats['images_per_s']:.1f} images/s "
        f"({stats['cnn_actors']} CNN actors), store {stats['store']}\n"
        f"hot queries (train days only) for {stats['products_with_hot_queries']:,} products in {hot}"
    )
    return stats


def pretrain(workload: Workload, run_name: str | None = None) -> dict:
    """Pretrain CE-BERT (MLM + MPM + TIP) on Ray Train; ``run_name`` resumes an interrupted run."""
    from ace_ray.train.pretrain import run_pretrain

    res = run_pretrain(workload, run_name)
    held = " ".join(f"{k} {v:.3f}" for k, v in res.get("heldout", {}).items())
    print(f"pretrain: {res['step']} steps ({res['steps_repeated']} repeated after failures), held-out {held}\n"
          f"model {res['model_dir']}\nRay Train run {res['ray_run_name']}; resume it with "
          f"`ace-ray pretrain --resume {res['ray_run_name']}`")  # fmt: skip
    return res


def summary(workload: Workload) -> dict:
    """Print (and record) what the validated catalogue holds for training."""
    root = workload.path(workload.data.root)
    with tracking.start_run(workload, "summary", tags={"stage": "summary"}):
        fig = summarize(root, workload.data.test_days)
        tracking.log_metrics(fig)
        tracking.log_artifact(root / SUMMARY_FILE)
    print(format_summary(fig))
    return fig


def quickstart(workload: Workload) -> None:
    """Every stage that exists, end to end, on the embedded default data."""
    t0 = time.perf_counter()
    steps = [("synth", synth), ("validate", validate_catalogue), ("summary", summary), ("features", features),
             ("pretrain", pretrain)]  # fmt: skip
    for i, (name, step) in enumerate(steps, 1):
        print(f"\n=== quickstart {i}/{len(steps)}: {name} ===", flush=True)
        step(workload)
    print(
        f"\nquickstart finished in {time.perf_counter() - t0:.1f} s; runs in {tracking.tracking_uri(workload)}"
    )
