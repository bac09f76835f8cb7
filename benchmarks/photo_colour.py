"""Does the photo count? On a synthetic shop whose titles never name the colour (``hide_in_title: [colour]``),
only the photo can tell a red dress from a blue one. Fine-tunes each row (a preset plus overrides) on it and
reports colour precision@10: the share of the top 10 products, over "<colour> <category>" queries, that are
of that colour. A text-only row can only guess (about 1/8); a row whose image path learns must beat it.

    python benchmarks/photo_colour.py [--products 400] [--epochs 6] \
        [--rows twinbert "cebert finetune.fusion=additive" cebert]

A quick probe for issue 16's first question (is the image path learning at all?), minutes where the
fashion-products tables take hours. It scores every product, those the model trained on too, and
trains on the simulated click log, which names the clicked product's colour in few pairs:
``colour_signal.py`` asks the same on held-out products and tells the two causes apart. Prints the figures and appends them, with the machine, to
benchmarks/results/photo_colour.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import record  # noqa: E402

from ace_ray.config import ClickModelConfig, FeaturesConfig, RayConfig, SynthConfig  # noqa: E402
from ace_ray.data import feature_store as fs  # noqa: E402
from ace_ray.data import lexicon  # noqa: E402
from ace_ray.data.features import build_features  # noqa: E402
from ace_ray.data.hot_queries import write_hot_queries  # noqa: E402
from ace_ray.data.schema import GROUND_TRUTH_FILE, read_products  # noqa: E402
from ace_ray.data.synth.generate import synthesize  # noqa: E402
from ace_ray.data.validate import validate  # noqa: E402
from ace_ray.eval.embed import TowerRetriever  # noqa: E402
from ace_ray.model.presets import load_with_preset  # noqa: E402
from ace_ray.runtime import ensure_ray  # noqa: E402
from ace_ray.train.finetune import run_finetune  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "photo_colour.md"
FEATURES = ("data.features.cnn_input=64", "data.features.grid=2")


def colour_hidden_shop(
    root: Path, products: int, sessions: int, clicks: ClickModelConfig | None = None
) -> None:
    """A validated, featurised synthetic shop at ``root`` whose titles never name the colour (4 days)."""
    synth = SynthConfig(
        products=products, days=4, sessions=sessions, shard_size=100, hide_in_title=["colour"]
    )
    synthesize(synth, clicks or ClickModelConfig(), root)
    validate(root)
    build_features(root, FeaturesConfig(cnn_input=64, grid=2, batch_size=32))


def colour_precision(model_dir, root: Path, w) -> float:
    """Share of the top 10 products, over "<colour> <category>" queries, that are of that colour."""
    products = read_products(root)
    truth = pd.read_parquet(root / GROUND_TRUTH_FILE).set_index("product_id").loc[products["product_id"]]
    retriever = TowerRetriever(model_dir, fs.for_workload(w), root, w.eval, w.data.test_days)
    retriever.fit(products)
    pairs = truth.assign(category=products["category"].to_numpy())[["colour", "category"]].drop_duplicates()
    queries = [
        f"{lexicon.surface_forms(c)[0]} {lexicon.surface_forms(cat)[0]}" for c, cat in pairs.to_numpy()
    ]
    _, idx = retriever.search(queries, 10)
    colours = truth["colour"].to_numpy()
    return float(np.mean([(colours[row] == c).mean() for row, c in zip(idx, pairs["colour"], strict=True)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=400)
    ap.add_argument("--sessions", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--rows", nargs="+", default=["twinbert", "cebert finetune.fusion=additive", "cebert"])
    ap.add_argument("--no-record", action="store_true", help="print only")
    args = ap.parse_args()
    ensure_ray(RayConfig(num_cpus=4))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "shop"
        colour_hidden_shop(root, args.products, args.sessions)
        write_hot_queries(root, test_days=1)
        for row in args.rows:
            name, *extra = row.split()
            w = load_with_preset(None, [
                f"workspace={tmp}/{len(rows)}", f"data.root={root}", "data.test_days=1",
                "data.batches.batch_size=32", "data.batches.partitions=4", "model.init=random",
                "model.size=tiny", "model.layers=2", "finetune.train.workers=1", "finetune.train.lr=0.002",
                "finetune.train.warmup_steps=5", f"finetune.train.epochs={args.epochs}",
                "finetune.train.log_every=50", *FEATURES, *extra,
            ], name)  # fmt: skip
            res = run_finetune(w)
            p = colour_precision(res["model_dir"], root, w)
            print(f"[photo_colour] {row}: colour precision@10 {p:.3f}", flush=True)
            rows.append([row, f"{p:.3f}"])
    if not args.no_record:
        record(str(RESULTS), f"colour precision@10, colour only in the photo ({args.products} products, tiny "
               f"random BERT, {args.epochs} epochs)", ["row", "colour precision@10"], rows,
               "python benchmarks/photo_colour.py " + " ".join(sys.argv[1:]))  # fmt: skip


if __name__ == "__main__":
    main()
