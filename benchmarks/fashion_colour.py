"""Does the photo's colour reach the fine-tuned towers? For each model of ``ace-ray reproduce`` reports on a
fashion-products import (a ``colour`` column; ``--hide-in-title colour`` takes it out of the titles):
held-out colour accuracy over the cold products (no train-day clicks, so never in a training pair), the
same probe as ``colour_signal.py`` on real photos. For each cold product, the colour c whose query
"<c> <its category>" the model scores highest, against its true colour, among the ``--top`` commonest
colours; beside the commonest colour's share (what always guessing it scores). For a model whose image vector
is added apart from the text (``finetune.fusion`` additive or apart): the share of that image part's variance
over the cold products that lies between colours, and between categories (what the photo path encodes).

    python benchmarks/fashion_colour.py REPORT_DIR [REPORT_DIR ...] [--top 12] [--seeds 0 1 2]

A text-only model on the colour-hidden import can only guess from what the title's other words correlate
with; a model whose image path learnt colour from the clicks must beat it. On an import whose titles name
the colour (the colour oracle's) it shows what reading the colour is worth. Prints the figures and appends
them, with the machine, to benchmarks/results/fashion_colour.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import record  # noqa: E402
from report_models import report_models  # noqa: E402

from ace_ray.config import load_workload  # noqa: E402
from ace_ray.data.clicks import clean_clicks  # noqa: E402
from ace_ray.data.validate import load_clean  # noqa: E402
from ace_ray.eval.attribute_probe import attribute_accuracy  # noqa: E402
from ace_ray.eval.embed import TowerRetriever, product_inputs  # noqa: E402
from ace_ray.runtime import ensure_ray  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "fashion_colour.md"


def cold_products(root: Path, test_days: int, top: int) -> tuple[pd.DataFrame, list[str]]:
    """The catalogue's cold products (as evaluation counts them: no clean train-day click) whose colour is
    one of the ``top`` commonest, and those colours."""
    products, imp = load_clean(root)
    if "colour" not in products:
        raise SystemExit(f"{root}: the catalogue has no `colour` column (a fashion-products import has)")
    clicked = set(clean_clicks(root, test_days, (products, imp))["product_id"])
    colours = products["colour"].value_counts().index[:top].tolist()
    cold = products[~products["product_id"].isin(clicked) & products["colour"].isin(colours)]
    return cold.reset_index(drop=True), colours


def colour_accuracy(model: TowerRetriever, cold: pd.DataFrame, colours: list[str]) -> tuple[float, float]:
    """Share of ``cold`` whose highest-scoring query "<colour> <category>" names its own colour: as scored,
    and with each colour's scores centred over the products (so a colour word that the query tower places
    near every product does not win everywhere; what is left is what the product embeddings say)."""
    model.fit(cold)
    idx = np.arange(len(cold))
    probe = (lambda queries: model.score(queries, idx), cold["category"].str.lower().tolist(),
             cold["colour"].str.lower().tolist(), [c.lower() for c in colours])  # fmt: skip
    return attribute_accuracy(*probe), attribute_accuracy(*probe, centred=True)


def image_parts(
    model: TowerRetriever, cold: pd.DataFrame, n: int = 1000
) -> tuple[np.ndarray, pd.DataFrame] | None:
    """The image parts (before the sum with the text part) of up to ``n`` of the cold products, and those
    products, for a model whose image vector is added apart (``finetune.fusion`` additive or apart); else None."""
    towers = model.towers
    if not towers.additive:
        return None
    sample = cold.sample(min(n, len(cold)), random_state=0)
    ids = sample["product_id"].tolist()
    rows = (
        model.store.read(["patch_features", "pixels"], ids=ids).set_index("product_id").loc[ids].reset_index()
    )
    inputs = product_inputs(
        rows.assign(title=sample["title"].to_numpy(), hot_queries=None),
        model.store.manifest,
        model.info["text"],
    )
    got = []
    hook = towers.image_proj.register_forward_hook(lambda m, i, out: got.append(out.detach().float()))
    with torch.inference_mode():
        towers.eval().encode_products(inputs)
    hook.remove()
    return got[0].numpy(), sample


def between(parts: np.ndarray, labels: pd.Series, least: int = 10) -> float:
    """Share of the image parts' variance that lies between the groups of ``labels`` (row i labels part i;
    groups of at least ``least`` products; random labels give about (groups - 1) / products)."""
    groups = labels.to_numpy()
    counts = pd.Series(groups).value_counts()
    keep = np.isin(groups, counts.index[counts >= least])
    x = parts[keep] - parts[keep].mean(0)
    means = pd.DataFrame(x).groupby(groups[keep]).transform("mean").to_numpy()
    return float((means**2).sum() / (x**2).sum())


def report_rows(report: Path, top: int, seeds: set[int] | None) -> list[list]:
    """One row per fine-tuned model of a reproduce report: method, seed, colour accuracy, commonest share."""
    base = load_workload(report / "workload.yaml")
    root = base.path(base.data.root)
    cold, colours = cold_products(root, base.data.test_days, top)
    majority = float(cold["colour"].value_counts(normalize=True).iloc[0])
    label = f"{Path(base.data.root).name}, {base.finetune.train.max_steps or 'an epoch of'} steps"
    out = []
    for method, seed, _, model in report_models(report, seeds):
        acc, centred = colour_accuracy(model, cold, colours)
        parts = image_parts(model, cold)
        shares = (
            ["-", "-"]
            if parts is None
            else [f"{between(parts[0], parts[1][k]):.2f}" for k in ("colour", "category")]
        )
        print(f"[fashion_colour] {label}: {method} seed {seed}: colour accuracy {acc:.3f}, centred "
              f"{centred:.3f}, over {len(cold):,} cold products (commonest colour {majority:.3f}); image part's variance between "
              f"colours {shares[0]}, between categories {shares[1]}", flush=True)  # fmt: skip
        out.append([f"{label}: {method}", seed, f"{acc:.3f}", f"{centred:.3f}", f"{majority:.3f}", *shares])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", type=Path, help="ace-ray reproduce report directories")
    ap.add_argument("--top", type=int, default=12, help="the commonest colours asked about")
    ap.add_argument("--seeds", type=int, nargs="*", help="only these seeds' models (default: all)")
    ap.add_argument("--no-record", action="store_true", help="print only")
    args = ap.parse_args()
    ensure_ray(load_workload(args.reports[0] / "workload.yaml").ray)
    rows = [
        row for r in args.reports for row in report_rows(r, args.top, set(args.seeds) if args.seeds else None)
    ]
    if not args.no_record:
        record(str(RESULTS), f"held-out colour accuracy of fine-tuned towers, cold products, {args.top} colours",
               ["import, budget: row", "seed", "colour accuracy", "centred", "commonest colour's share",
                "image part: between colours", "between categories"], rows,
               "python benchmarks/fashion_colour.py " + " ".join(sys.argv[1:]))  # fmt: skip


if __name__ == "__main__":
    main()
