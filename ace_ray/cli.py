"""The ``ace-ray`` command line. Each subcommand reads a workload YAML (``--workload``) plus ``key=value``
overrides. Some of a command's flags are shorthands for overrides, declared with the command (``synth
--products 100`` = ``data.synth.products=100``), so the same flag can mean something else elsewhere
(``import table --products my.csv`` is a file)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ace_ray.config import ConfigError, Workload, dump_config, parse_override
from ace_ray.data.feature_store import FeatureMismatch
from ace_ray.data.schema import SchemaError
from ace_ray.model.presets import load_with_preset

QUICKSTART = "workloads/quickstart.yaml"  # relative to where the command runs: the checkout

EPILOG = """examples:
  ace-ray synth --out data/shop --products 5000
  ace-ray import fashion-products --src ../shared/data/fashion-products --out data/fp
  ace-ray validate data/shop
  ace-ray features data/shop
  ace-ray pretrain --workload workloads/quickstart.yaml pretrain.train.lr=1e-4
  ace-ray finetune --workload workloads/quickstart.yaml --preset acebert --init runs/<pretrain run>/.../model
  ace-ray tune --space tune_spaces/partitions_gamma.yaml --workload workloads/quickstart.yaml
  ace-ray quickstart --workload workloads/quickstart.yaml data.synth.products=500
Without RAY_ADDRESS a local Ray listening on 127.0.0.1 is started; with it, the command joins that cluster."""


def _common(p: argparse.ArgumentParser, default: str = "built-in defaults") -> None:
    p.add_argument("--workload", metavar="YAML", help=f"workload config file (default: {default})")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. data.synth.seed=3"
    )


def _key(g, *flags: str, key: str, path: bool = False, **kw) -> None:
    """A flag that is a shorthand for the override ``key=value`` (a path made absolute: it is relative to
    where the user is, not to the workspace)."""
    g.add_argument(*flags, dest=f"{'path' if path else 'key'}:{key}", **kw)


def _settings(pairs: list[str]) -> dict:
    """``["nprobe=64", "refine=none"]`` -> ``{"nprobe": 64, "refine": "none"}`` (values read as YAML)."""
    return dict(parse_override(p) for p in pairs)


def _absolute(path: str) -> str:
    """A path the user typed, absolute: relative to where the user is, not to the workspace."""
    return str(Path(path).expanduser().resolve())


def _yaml_list(text: str) -> str:
    """``colour,gender`` -> the override value ``[colour, gender]``."""
    return "[" + ", ".join(w.strip() for w in text.split(",") if w.strip()) + "]"


def _sim_flags(p: argparse.ArgumentParser, what: str) -> None:
    g = p.add_argument_group(f"{what} (shorthands for data.synth.*)")
    _key(g, "--days", key="data.synth.days", type=int, help="days of click log")
    _key(g, "--sessions", key="data.synth.sessions", type=int, help="query sessions per day")
    _key(g, "--seed", key="data.synth.seed", type=int, help="random seed (same seed, same output)")
    _key(g, "--workers", key="data.synth.workers", type=int, help="concurrent Ray tasks (0 = all CPUs)")
    _key(g, "--hide-in-title", key="data.synth.hide_in_title", type=_yaml_list, metavar="ATTRS",
         help="comma-separated attributes taken out of every title, left only in the photo (e.g. colour)")  # fmt: skip


def _train_flags(p: argparse.ArgumentParser, section: str) -> None:
    _key(p, "--root", key="data.root", path=True, help="catalogue directory with features (data.root)")
    _key(
        p,
        "--workers",
        key=f"{section}.train.workers",
        type=int,
        help=f"Ray Train workers ({section}.train.workers)",
    )
    p.add_argument("--resume", metavar="RUN", help="the Ray Train run name of an interrupted run (printed when it "
                   "started): continue it from its latest checkpoint; give the same --workload and overrides")  # fmt: skip
    _common(p)


def _model_flags(p: argparse.ArgumentParser, required: bool) -> None:
    src = p.add_mutually_exclusive_group(required=required)
    src.add_argument("--run", metavar="RUN_ID", help="MLflow run whose model artefact to use")
    src.add_argument("--model", metavar="DIR", help="fine-tuned model directory")
    _key(p, "--root", key="data.root", path=True, help="catalogue directory with features (data.root)")
    _common(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ace-ray",
        description="ACE-BERT multimodal product retrieval on Ray: data, training, evaluation, serving.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="generate the synthetic shop (catalogue, images, click log)",
                       description="Generate a synthetic shop: products with attributes, seller titles, rendered "
                       "photos, and a click log from a position-biased click model. Deterministic by seed; "
                       "runs as parallel Ray tasks.")  # fmt: skip
    _key(p, "--out", key="data.root", path=True, help="catalogue directory (data.root)")
    _key(
        p, "--products", key="data.synth.products", type=int, help="number of products (data.synth.products)"
    )
    _sim_flags(p, "click log")
    _common(p)

    imp = sub.add_parser("import", help="import a catalogue into the data contract",
                         description="Import a catalogue: the fashion-products folder, or your own table.")  # fmt: skip
    imp_sub = imp.add_subparsers(dest="source", required=True, metavar="SOURCE")
    p = imp_sub.add_parser("fashion-products", help="the real fashion-products photos and titles",
                           description="Import ../shared/data/fashion-products (styles.csv + images/). It has no "
                           "click log: impressions are simulated from its attributes and marked as such.")  # fmt: skip
    p.add_argument("--src", required=True, help="the fashion-products folder")
    _key(
        p, "--out", key="data.root", path=True, required=True, help="catalogue directory to write (data.root)"
    )
    _sim_flags(p, "simulated click log")
    _common(p)
    p = imp_sub.add_parser("table", help="your own catalogue from CSV or Parquet",
                           description="Import your catalogue; name which columns hold what. With no "
                           "--impressions, a click log is simulated from the category and --attr-cols.")  # fmt: skip
    p.add_argument("--products", required=True, help="products table (.csv, .tsv or .parquet)")
    p.add_argument("--images", required=True, help="folder the image column's paths are relative to")
    _key(
        p, "--out", key="data.root", path=True, required=True, help="catalogue directory to write (data.root)"
    )
    p.add_argument("--id-col", required=True, help="column with the product id")
    p.add_argument("--title-col", required=True, help="column with the title")
    p.add_argument("--category-col", required=True, help="column with the leaf category")
    p.add_argument("--image-col", required=True, help="column with the image path")
    p.add_argument("--category-path-col", help="column with the category path (default: the category)")
    p.add_argument("--attr-cols", default="", help="comma-separated attribute columns (colour,brand,...)")
    p.add_argument("--impressions", help="click log with day,session_id,query,product_id,position,clicked")
    p.add_argument("--date-format", help="how the click log's day is written, in strptime codes (e.g. "
                   "'%%d/%%m/%%Y'); default: ISO dates (2026-01-31) only")  # fmt: skip
    _sim_flags(p, "simulated click log")
    _common(p)

    p = sub.add_parser("validate", help="check a catalogue, quarantine bad rows, print counts",
                       description="Check the whole data contract. Bad rows are reported with file, row and "
                       "reason and written to quarantine.parquet; counts in = kept + quarantined.")  # fmt: skip
    p.add_argument("path:data.root", metavar="root", help="catalogue directory")
    p.add_argument("--strict", action="store_true", help="exit 1 if any row was quarantined")
    _common(p)

    p = sub.add_parser("features", help="image features: RoI patch features (CNN) and pixel patches",
                       description="Featurise a validated catalogue with Ray Data: decode, edge-detection RoI, "
                       "RoI patch features from a CNN actor pool (GPUs where present), 32x32 pixel patches, "
                       "streamed to a versioned feature store (<root>/features/<version>/). Bad images are "
                       "quarantined with their reason.")  # fmt: skip
    p.add_argument("path:data.root", metavar="root", help="catalogue directory (validated)")
    _key(p, "--backbone", key="data.features.backbone",
         help="efficientnet-lite0 (packaged), an HF model id or a local directory")  # fmt: skip
    _key(p, "--whole-image", key="data.features.roi", action="store_const", const=False,
         help="FashionBERT-style grid patches, no RoI (data.features.roi=false)")  # fmt: skip
    _key(p, "--out", key="data.features.out", path=True, help="feature store root (default <root>/features)")
    _common(p)

    p = sub.add_parser("pretrain", help="pretrain CE-BERT (MLM, masked patches, text-image match) on Ray Train",
                       description="Pretrain CE-BERT on the catalogue's features with Ray Train: N workers (GPUs "
                       "with NCCL and bf16 where present), 1 positive : 3 negative (title, image) pairs, AdamW "
                       "with warm-up, checkpoints to ray.storage_path, restarts after worker failures. Settings "
                       "are under model.* and pretrain.* (see `ace-ray config`).")  # fmt: skip
    _train_flags(p, "pretrain")

    p = sub.add_parser("finetune", help="fine-tune the two towers (ACE-BERT and the paper's variants) on Ray Train",
                       description="Fine-tune shared-weight query and product towers on the train days' clicks: "
                       "bidirectional softmax over in-batch negatives on category-partitioned batches, hot "
                       "queries and adversarial learning by preset. Settings are under finetune.* .")  # fmt: skip
    p.add_argument("--preset", help="twinbert | fashionbert | cebert | acebert | patch | roi_patch | "
                   "roi_patch_pixel | none | hot_query | adversarial (finetune.preset)")  # fmt: skip
    _key(p, "--init", key="finetune.init_from", path=True,
         help="pretrained model directory to start from (finetune.init_from)")  # fmt: skip
    p.add_argument("--register", metavar="NAME", help="register the model in MLflow as NAME (alias candidate): "
                   "serve it as models:/NAME@candidate")  # fmt: skip
    _train_flags(p, "finetune")

    p = sub.add_parser("tune", help="Ray Tune sweep over fine-tuning settings (partitions, gamma, ...)",
                       description="Search the keys of a space file (tune_spaces/*.yaml) with Ray Tune: every trial "
                       "is a fine-tuning on Ray Train, measured on validation days carved from the training "
                       "days (data.val_days), stopped early by ASHA; then the best configuration is trained on "
                       "train + validation days and evaluated once on the test days. Results in "
                       "<ray.storage_path>/tune/<name>-<time>/ (trials.csv, best.yaml, report.md) and in MLflow.")  # fmt: skip
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--space", metavar="YAML", help="search space file (tune_spaces/*.yaml)")
    src.add_argument(
        "--resume", metavar="DIR", help="an interrupted sweep's directory: finished trials are kept"
    )
    p.add_argument("--preset", help="the fine-tuning preset every trial trains (finetune.preset)")
    _key(p, "--init", key="finetune.init_from", path=True,
         help="pretrained model directory every trial starts from (finetune.init_from)")  # fmt: skip
    _key(p, "--root", key="data.root", path=True, help="catalogue directory with features (data.root)")
    _common(p)

    p = sub.add_parser("evaluate", help="GAUC, Recall@K (exact and FAISS), MRR, nDCG vs the baselines",
                       description="Evaluate a fine-tuned model on the test days against a random embedding, BM25 "
                       "over titles and zero-shot MiniLM: GAUC over the test sessions, Recall@10/50/100, MRR and "
                       "nDCG@10 over the whole catalogue (exact search and the ANN index), with breakdowns by "
                       "category, query band and cold products. Settings are under eval.* .")  # fmt: skip
    _model_flags(p, required=False)

    p = sub.add_parser("distill", help="distil the query tower into fewer layers (paper 4.7)",
                       description="Train a student query tower with the first finetune.distill.layers layers of a "
                       "fine-tuned model against its query embeddings; report the recall lost (student queries "
                       "against the teacher's product embeddings) and the encode time saved.")  # fmt: skip
    _model_flags(p, required=True)

    p = sub.add_parser("index", help="embed the catalogue into a FAISS index directory for serving",
                       description="A Ray Data batch job: actors holding the model's product tower embed every "
                       "featurised product (title, train-day hot queries, image features) into a versioned index "
                       "directory: the FAISS index (exact up to 100k products, HNSW above, --kind ivfpq for less "
                       "memory), the row -> product map, the hot-query embedding cache and a manifest naming the "
                       "model's weights. Logged to MLflow beside the model.")  # fmt: skip
    _model_flags(p, required=True)
    p.add_argument(
        "--out", metavar="DIR", help="where index directories go (default <ray.storage_path>/indexes)"
    )
    p.add_argument(
        "--kind", default="auto", choices=("auto", "flat", "hnsw", "ivfpq"), help="FAISS index kind"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="index_settings",
                   help="an index setting (ace_ray/serve/settings.py IndexSettings), e.g. refine=none nprobe=64 "
                   "ef_search=256 k_factor=8 hot_cache=20000; repeat for more")  # fmt: skip

    p = sub.add_parser("serve", help="run the search service (Ray Serve) until Ctrl-C",
                       description="Start the search application: QueryEncoder (batched, autoscaled), ProductIndex "
                       "(FAISS) and the HTTP API (POST /search, POST /similar, GET /healthz) on 127.0.0.1. The "
                       "same as `serve run serve_apps/search.yaml` with these arguments.")  # fmt: skip
    p.add_argument("--index", required=True, metavar="DIR", help="index directory (from `ace-ray index`)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--run", metavar="RUN_ID", help="MLflow run of the model (default: the index's)")
    src.add_argument("--model", dest="serve_model", metavar="DIR|models:/NAME@ALIAS",
                     help="model directory or MLflow registered model")  # fmt: skip
    p.add_argument(
        "--query-model", metavar="DIR|RUN_ID", help="a distilled query tower to encode queries with"
    )
    p.add_argument("--backend", default="auto", choices=("auto", "onnx", "torch"), help="query tower runtime")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    _common(p)

    p = sub.add_parser("reproduce", help="the paper's tables (1, 3, 4) with several seeds, as a Markdown report",
                       description="Pretrain, fine-tune and evaluate every row of the paper's Tables 1, 3 and 4 "
                       "(presets) with every seed in reproduce.seeds, plus the baselines; write a report with "
                       "mean and spread per cell, the matching-loss curves with and without adversarial learning "
                       "(Fig. 6) and embedding maps (Fig. 7). Settings are under reproduce.* .")  # fmt: skip
    _key(p, "--data", key="data.root", path=True, help="catalogue directory, validated (data.root)")
    _key(p, "--resume", key="reproduce.resume", path=True, help="an earlier report directory: continue there, "
         "training only the rows and seeds it lacks (reproduce.resume)")  # fmt: skip
    _key(p, "--report-only", key="reproduce.report_only", action="store_const", const="true",
         help="with --resume: the report of what that directory has finished so far; trains nothing "
         "(reproduce.report_only)")  # fmt: skip
    _key(p, "--reuse", key="reproduce.reuse", action="append", metavar="DIR", type=_absolute,
         help="another report directory (repeatable): a row and seed it trained with the same settings is "
         "evaluated here, not trained again (reproduce.reuse)")  # fmt: skip
    _common(p)

    p = sub.add_parser("quickstart", help="every stage, end to end, small, on this machine",
                       description="Run every stage end to end on the embedded synthetic data.")  # fmt: skip
    _common(p, default=f"{QUICKSTART}, the small job, from the checkout")

    p = sub.add_parser("config", help="print the effective workload config",
                       description="Print the workload after the preset and overrides, as it would be saved with a "
                       "run.")  # fmt: skip
    p.add_argument("--preset", help="apply this fine-tuning preset (finetune.preset)")
    _common(p)
    return parser


def _overrides(args: argparse.Namespace) -> list[str]:
    """The command's flag shorthands first, so explicit key=value overrides win."""
    out = []
    for dest, value in vars(args).items():
        kind, _, key = dest.partition(":")
        if value is None or kind not in ("key", "path"):
            continue
        if isinstance(value, list):  # a flag with several values: a YAML list (JSON strings are YAML)
            value = "[" + ", ".join(json.dumps(v) for v in value) + "]"
        out.append(f"{key}={Path(value).expanduser().resolve() if kind == 'path' else value}")
    return out + list(args.overrides)


def _absolute_paths(args: argparse.Namespace) -> None:
    # File arguments are relative to where the user is, not to the workspace.
    for name in ("products", "images", "impressions", "src", "model", "space"):
        if isinstance(getattr(args, name, None), str):
            setattr(args, name, _absolute(getattr(args, name)))


def _workload(args: argparse.Namespace) -> Workload:
    """The command's workload: ``--workload`` (the quickstart's own file if none) with the preset beneath the
    overrides."""
    path = args.workload
    if path is None and args.command == "quickstart":
        # The built-in defaults are a full-size shop (5,000 products, 4 layers): not what "quickstart" promises.
        path = QUICKSTART
        if not Path(path).is_file():
            raise ConfigError(
                f"no --workload and no {path} here: run it in the ace-ray checkout or name a workload"
            )
    return load_with_preset(path, _overrides(args), getattr(args, "preset", None))


def run(args: argparse.Namespace) -> int:
    from ace_ray import jobs

    _absolute_paths(args)
    workload = _workload(args)
    if args.command == "config":
        print(dump_config(workload), end="")
    elif args.command == "synth":
        jobs.synth(workload)
    elif args.command == "import" and args.source == "fashion-products":
        jobs.import_fashion(workload, args.src)
    elif args.command == "import":
        from ace_ray.data.importers.table import ColumnMap

        cols = ColumnMap(
            id=args.id_col,
            title=args.title_col,
            category=args.category_col,
            image=args.image_col,
            category_path=args.category_path_col,
            attributes=[c.strip() for c in args.attr_cols.split(",") if c.strip()],
        )
        jobs.import_user_table(workload, args.products, args.images, cols, args.impressions, args.date_format)
    elif args.command == "validate":
        report = jobs.validate_catalogue(workload)
        return 1 if args.strict and not report.ok else 0
    elif args.command == "features":
        jobs.features(workload)
    elif args.command == "pretrain":
        jobs.pretrain(workload, args.resume)
    elif args.command == "finetune":
        jobs.finetune(workload, args.resume, args.register)
    elif args.command == "tune":
        from ace_ray.tune.sweep import run_sweep

        run_sweep(workload, args.space, args.resume)
    elif args.command == "evaluate":
        jobs.evaluate(workload, args.model, args.run)
    elif args.command == "distill":
        jobs.distill(workload, args.model, args.run)
    elif args.command == "index":
        out = str(Path(args.out).expanduser().resolve()) if args.out else None
        jobs.index(workload, args.model, args.run, out, {"kind": args.kind, **_settings(args.index_settings)})
    elif args.command == "serve":
        src = args.serve_model or args.run or ""
        src = str(Path(src).resolve()) if src and Path(src).expanduser().is_dir() else src
        qm = args.query_model or ""
        qm = str(Path(qm).resolve()) if qm and Path(qm).expanduser().is_dir() else qm
        jobs.serve(workload, {"index": str(Path(args.index).expanduser().resolve()), "model": src,
                              "query_model": qm, "backend": args.backend}, args.host, args.port)  # fmt: skip
    elif args.command == "reproduce":
        from ace_ray.eval.reproduce import reproduce

        reproduce(workload, command=shlex.join(["ace-ray", *args.argv]))
    elif args.command == "quickstart":
        jobs.quickstart(workload)
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``key=value`` overrides may also follow flags (``features DIR --workload W
    data.test_days=1``: argparse alone assigns positionals only before the first flag)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*getattr(args, "overrides", []), *extra]
    # As typed, for the reports that say how they were made.
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        return run(args)
    except (ConfigError, SchemaError, FeatureMismatch, FileNotFoundError) as exc:
        print(f"ace-ray {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
