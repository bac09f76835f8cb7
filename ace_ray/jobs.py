"""The commands as functions: start or join Ray, do the work, record an MLflow run.

``cli.py`` only parses arguments into a ``Workload`` and calls these; tests call them directly.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from ace_ray import tracking
from ace_ray.config import Workload, with_overrides
from ace_ray.data import feature_store as fs
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
    date_format: str | None = None,
) -> Manifest:
    """Import a user's CSV/Parquet catalogue into ``data.root``; ``date_format`` reads a non-ISO day column."""
    ensure_ray(workload.ray)
    root = workload.path(workload.data.root)
    with tracking.start_run(workload, "import-table", tags={"stage": "import"}):
        t0 = time.perf_counter()
        manifest = import_table(
            products, images, root, cols, workload.data.synth, workload.data.clicks, impressions, date_format
        )
        _record_import(workload, "table", manifest, root, time.perf_counter() - t0)
    return manifest


def validate_catalogue(workload: Workload) -> Report:
    """Validate ``data.root``, print the report, write the quarantine."""
    ensure_ray(workload.ray)
    root = workload.path(workload.data.root)
    with tracking.start_run(workload, "validate", tags={"stage": "validate"}):
        report = validate(root, workers=workload.data.synth.workers, min_side=workload.data.features.min_side)
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
        stats["products_with_hot_queries"] = len(read_hot_queries(root, workload.data.test_days,
                                                                  workload.data.text.hot_k))  # fmt: skip
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


def finetune(workload: Workload, run_name: str | None = None, register: str | None = None) -> dict:
    """Fine-tune the two towers (the workload's preset) on Ray Train; ``run_name`` resumes a run;
    ``register`` registers the model in MLflow under that name (alias ``candidate``)."""
    from ace_ray.train.finetune import run_finetune

    res = run_finetune(workload, run_name)
    print(f"finetune ({workload.finetune.preset}): {res['step']} steps ({res['steps_repeated']} repeated after "
          f"failures), final matching loss {res['loss']:.3f}, {res['samples_per_s']:.1f} pairs/s\n"
          f"model {res['model_dir']}\nMLflow run {res['run_id']}; Ray Train run {res['ray_run_name']}")  # fmt: skip
    if register:
        tracking.register_model(workload, res["run_id"], register)
    return res


def evaluate(workload: Workload, model_dir: str | Path | None = None, run_id: str | None = None) -> dict:
    """Evaluate a fine-tuned model (a directory, or the model of MLflow run ``run_id``) against the
    baselines on the test days; print the table, write the report, record the run."""
    import tempfile

    from ace_ray.eval.evaluate import run_evaluation, summary_table
    from ace_ray.model.encoder import read_info

    ensure_ray(workload.ray)
    root = workload.path(workload.data.root)
    out = workload.path(workload.ray.storage_path) / "eval" / time.strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory() as tmp:
        if run_id:
            model_dir = tracking.download_model(workload, run_id, tmp)
        tags = {"stage": "evaluate", "model_run_id": run_id or "", "model_dir": str(model_dir or "")}
        with tracking.start_run(workload, "evaluate", tags=tags):
            # Named for the preset the model was fine-tuned with, not the workload's default.
            name = read_info(model_dir).get("preset", "model") if model_dir else "model"
            res = run_evaluation(model_dir, root, fs.for_workload(workload), workload.data.test_days,
                                 workload.eval, out, name=name)  # fmt: skip
            flat = {f"{m}/{k.replace('@', '_at_')}": v for m, d in res.items() if not m.startswith("_")
                    for k, v in d.items()}  # fmt: skip
            tracking.log_metrics({**flat, **res["_counts"]})
            tracking.log_artifacts(out, "evaluation")
    print(f"\nevaluation on the last {workload.data.test_days} day(s) "
          f"({res['_counts']['test_queries']:,} queries, {res['_counts']['catalogue']:,} products):\n"
          f"{summary_table(res)}\nreport {out / 'report.md'}")  # fmt: skip
    return res


def distill(workload: Workload, model_dir: str | Path | None = None, run_id: str | None = None) -> dict:
    """Distil the query tower of a fine-tuned model (a directory or MLflow run ``run_id``) into fewer
    layers; report the recall it loses (student queries against the teacher's product embeddings) and
    the encode time it saves."""
    import copy
    import tempfile

    from ace_ray.eval.data import load_eval_data
    from ace_ray.eval.embed import TowerRetriever
    from ace_ray.eval.evaluate import evaluate_method
    from ace_ray.eval.report import metrics_table
    from ace_ray.model.towers import load_towers
    from ace_ray.train.distill import distill as run_distill

    ensure_ray(workload.ray)
    root, cfg = workload.path(workload.data.root), workload.finetune.distill
    store = fs.for_workload(workload)
    with tempfile.TemporaryDirectory() as tmp:
        if run_id:
            model_dir = tracking.download_model(workload, run_id, tmp)
        out = workload.path(workload.ray.storage_path) / "distill" / time.strftime("%Y%m%d-%H%M%S") / "model"
        with tracking.start_run(workload, "distill", tags={"stage": "distill", "model_run_id": run_id or ""}):
            fig = run_distill(
                model_dir, root, workload.data.test_days, cfg, out, workload.finetune.train.seed
            )
            data = load_eval_data(root, store, workload.data.test_days)
            teacher = TowerRetriever(
                model_dir, store, root, workload.eval, workload.data.test_days, name="teacher"
            )
            ks = list(workload.eval.ks)
            res = {"teacher": evaluate_method(teacher, data, ks)["metrics"]}
            # The student searches the teacher's product embeddings: only the query side changes.
            student = copy.copy(teacher)
            student.towers, student.name = load_towers(out)[0], f"student ({cfg.layers} layers)"
            res["student"] = evaluate_method(student, data, ks, fit=False)["metrics"]
            res["teacher"]["ms_per_query"] = fig["teacher_ms_per_query"]
            res["student"]["ms_per_query"] = fig["student_ms_per_query"]
            k = f"recall@{max(ks)}"
            fig.update(recall_lost=res["teacher"][k] - res["student"][k],
                       speedup=fig["teacher_ms_per_query"] / fig["student_ms_per_query"])  # fmt: skip
            tracking.log_metrics({**{f"{m}/{key.replace('@', '_at_')}": v for m, d in res.items()
                                     for key, v in d.items()}, **fig})  # fmt: skip
            tracking.log_artifacts(out, "model")
    table = metrics_table([{"method": n, **m} for n, m in res.items()], ["gauc", *[f"recall@{k}" for k in ks],
                                                                          "ms_per_query"])  # fmt: skip
    print(f"\ndistilled query tower ({cfg.layers} layers) on {fig['queries']:,} train-day queries:\n{table}\n"
          f"{k} lost: {fig['recall_lost']:.4f}; query encoding {fig['speedup']:.2f}x faster\nmodel {out}")  # fmt: skip
    return {**res, **fig, "model_dir": str(out)}


def index(workload: Workload, model_dir: str | Path | None = None, run_id: str | None = None,
          out: str | Path | None = None, settings: dict | None = None) -> Path:  # fmt: skip
    """Embed the catalogue with a fine-tuned model (a directory or MLflow run ``run_id``) into a versioned
    index directory under ``out`` (default ``<ray.storage_path>/indexes``); log it to MLflow beside the
    model (in the model's run when there is one). ``settings``: ``IndexSettings`` keys."""
    import tempfile

    from ace_ray.serve.index_dir import IndexManifest
    from ace_ray.serve.index_job import build_index_dir
    from ace_ray.serve.settings import IndexSettings, from_mapping

    cfg = from_mapping(IndexSettings, {"batch_size": workload.eval.batch_size, "actors": workload.eval.embed_actors,
                                       **(settings or {})})  # fmt: skip
    ensure_ray(workload.ray)
    root = workload.path(workload.data.root)
    out_root = Path(out) if out else workload.path(workload.ray.storage_path) / "indexes"
    with tempfile.TemporaryDirectory() as tmp:
        if run_id:
            model_dir = tracking.download_model(workload, run_id, tmp)
        tags = {"stage": "index", "model_run_id": run_id or "", "model_dir": str(model_dir or "")}
        with tracking.start_run(workload, "index", tags=tags):
            path = build_index_dir(model_dir, root, fs.for_workload(workload), out_root, cfg,
                                   workload.data.test_days, run_id or "")  # fmt: skip
            m = IndexManifest.read(path)
            tracking.log_metrics({"products": m.products, "hot_queries": m.hot_queries, "dim": m.dim,
                                  "skipped_products": m.skipped_products, "seconds": m.params["seconds"]})  # fmt: skip
            tracking.log_artifact(path / "manifest.json")
            if not run_id:
                tracking.log_artifacts(path, f"index/{m.version}")
        if run_id:  # beside the model it belongs to
            with tracking.start_run(workload, "index", run_id=run_id):
                tracking.log_artifacts(path, f"index/{m.version}")
    print(f"index {m.version}: {m.products:,} products ({m.kind}, {m.dim}-d), {m.hot_queries:,} hot queries "
          f"cached, {m.skipped_products:,} products without features skipped, {m.params['seconds']:.1f} s\n"
          f"index directory {path}")  # fmt: skip
    return path


def serve(
    workload: Workload, settings: dict, host: str = "127.0.0.1", port: int = 8000, block: bool = True
) -> str:
    """Start the search application (``ServiceSettings`` keys in ``settings``) on ``host:port``; with
    ``block``, serve until Ctrl-C or SIGTERM, then shut it down. Returns the URL."""
    from ray import serve as ray_serve

    from ace_ray.serve.app import start

    ensure_ray(workload.ray)
    settings = {"tracking_uri": tracking.tracking_uri(workload), **settings}
    url = start(settings, host, port)
    print(f"search service at {url} (POST /search, POST /similar, GET /healthz); Ctrl-C stops it", flush=True)
    if not block:
        return url
    # SIGTERM (`kill`, `ray job stop`) is how a service is stopped: as Ctrl-C, a clean end (exit 0), not the
    # error exit of the other commands. Either way the shutdown below runs, which on a cluster is what
    # removes the application: Serve's applications outlive the driver that deployed them.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping the search service", flush=True)
    finally:
        ray_serve.shutdown()
    print("search service stopped", flush=True)
    return url


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


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
    """Every stage, end to end, on the embedded default data: the pretrained model starts the fine-tuning,
    and the fine-tuned one is evaluated against the baselines."""
    from ace_ray.serve.demo import demo as search_demo

    t0 = time.perf_counter()

    state: dict = {}
    steps = [("synth", synth), ("validate", validate_catalogue), ("summary", summary), ("features", features),
             ("pretrain", lambda w: state.update(pretrained=pretrain(w)["model_dir"])),
             ("finetune", lambda w: state.update(model=finetune(with_overrides(w, [f"finetune.init_from={state['pretrained']}"]))["model_dir"])),
             ("evaluate", lambda w: evaluate(w, state["model"])),
             ("index", lambda w: state.update(index=index(w, state["model"]))),
             ("serve", lambda w: search_demo(state["model"], state["index"]))]  # fmt: skip
    for i, (name, step) in enumerate(steps, 1):
        print(f"\n=== quickstart {i}/{len(steps)}: {name} ===", flush=True)
        step(workload)
    print(
        f"\nquickstart finished in {time.perf_counter() - t0:.1f} s; runs in {tracking.tracking_uri(workload)}"
    )
