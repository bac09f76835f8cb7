"""What the hot queries do to a fine-tuned model's retrieval. For each model of ``ace-ray reproduce``
reports whose product tower reads hot queries: Recall@100 over all test queries, over their warm targets
(products with train-day clicks, so with hot queries) and over their cold targets, and the share of
the top 100 that is cold (beside the catalogue's) and GAUC (the test sessions' shown products ranked); once
with the hot queries evaluation gives the products, once with every product embedded without them (as a cold
one). Also, per report, how often a click's query
is among its product's hot queries on the train days (what a training pair sees) and on the test days.

    python benchmarks/hot_query_effect.py REPORT_DIR [REPORT_DIR ...] [--seeds 0 1 2] [--no-record]

If the same model retrieves warm products better without their hot queries, the tower has learnt to find a
product by the copy of a training query among its hot queries rather than to generalise from them.
Prints the figures and appends them, with the machine, to benchmarks/results/hot_query_effect.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import record  # noqa: E402
from report_models import report_models  # noqa: E402

from ace_ray.config import load_workload  # noqa: E402
from ace_ray.data import feature_store as fs  # noqa: E402
from ace_ray.data.clicks import clean_clicks, first_test_day  # noqa: E402
from ace_ray.data.hot_queries import read_hot_queries  # noqa: E402
from ace_ray.data.validate import load_clean  # noqa: E402
from ace_ray.eval.data import EvalData, load_eval_data  # noqa: E402
from ace_ray.eval.evaluate import evaluate_method  # noqa: E402
from ace_ray.eval.metrics import per_query  # noqa: E402
from ace_ray.runtime import ensure_ray  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "hot_query_effect.md"
K = 100


def query_among_hot(root: Path, test_days: int, hot_k: int) -> tuple[float, float]:
    """Share of the clean clicks on products with hot queries whose query is among them: train days, test days."""
    hot = read_hot_queries(root, test_days, hot_k).set_index("product_id")["hot_queries"].map(set)
    loaded = load_clean(root)
    imp = loaded[1]
    test = imp[
        (pd.to_datetime(imp["day"]) >= pd.Timestamp(first_test_day(root, test_days)))
        & imp["clicked"].astype(bool)
    ]
    shares = []
    for clicks in (clean_clicks(root, test_days, loaded), test):
        warm = clicks[clicks["product_id"].isin(hot.index)]
        shares.append(
            float(np.mean([q in hot[p] for q, p in zip(warm["query"], warm["product_id"], strict=True)]))
        )
    return shares[0], shares[1]


def recalls(model, data: EvalData) -> list[float]:
    """Recall@K over all targets, warm targets, cold targets; the cold share of the top K; GAUC (as
    ``ace-ray evaluate`` measures them)."""
    ev = evaluate_method(model, data, [K])
    top, m = ev["retrieved"], ev["metrics"]
    warm = [(i, t[~data.cold[t]]) for i, t in enumerate(data.targets) if (~data.cold[t]).any()]
    warm_recall = per_query(top[[i for i, _ in warm]], [t for _, t in warm], [K])[f"recall@{K}"].mean()
    return [m[f"recall@{K}"], float(warm_recall), m[f"cold_recall@{K}"], float(data.cold[top[top >= 0]].mean()),
            m["gauc"]]  # fmt: skip


def report_rows(report: Path, seeds: set[int] | None) -> list[list]:
    """One row per hot-query model of a reproduce report and per way of embedding its products."""
    base = load_workload(report / "workload.yaml")
    root = base.path(base.data.root)
    data = load_eval_data(root, fs.for_workload(base), base.data.test_days)
    train_share, test_share = query_among_hot(root, base.data.test_days, base.data.text.hot_k)
    print(f"[hot_query_effect] {root.name}: a click's query is among its product's hot queries: train days "
          f"{train_share:.3f}, test days {test_share:.3f}; cold share of the catalogue {data.cold.mean():.3f}", flush=True)  # fmt: skip
    label = f"{root.name}, {base.finetune.train.max_steps or 'an epoch of'} steps"
    out = []
    for method, seed, _, model in report_models(report, seeds):
        if not model.towers.hot_queries:
            continue
        for hot in (True, False):
            model.towers.hot_queries = (
                hot  # evaluation reads it to give the products their hot queries or not
            )
            r = recalls(model, data)
            how = "as evaluated" if hot else "no product's hot queries"
            print(f"[hot_query_effect] {label}: {method} seed {seed}, {how}: Recall@{K} {r[0]:.3f}, warm "
                  f"{r[1]:.3f}, cold {r[2]:.3f}; cold share of the top {K} {r[3]:.3f}; GAUC {r[4]:.3f}", flush=True)  # fmt: skip
            out.append([f"{label}: {method}", seed, how, *(f"{x:.3f}" for x in r[:4]), f"{data.cold.mean():.3f}", f"{r[4]:.3f}",
                        f"{train_share:.3f} / {test_share:.3f}"])  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", type=Path, help="ace-ray reproduce report directories")
    ap.add_argument("--seeds", type=int, nargs="*", help="only these seeds' models (default: all)")
    ap.add_argument("--no-record", action="store_true", help="print only")
    args = ap.parse_args()
    ensure_ray(load_workload(args.reports[0] / "workload.yaml").ray)
    seeds = set(args.seeds) if args.seeds else None
    rows = [row for r in args.reports for row in report_rows(r, seeds)]
    if not args.no_record:
        record(str(RESULTS), f"hot queries as evaluated and none at all, Recall@{K} and GAUC",
               ["import, budget: row", "seed", "products embedded", f"Recall@{K}", "warm targets", "cold targets",
                f"cold share of top {K}", "cold share of catalogue", "GAUC", "query among hot: train / test clicks"], rows,
               "python benchmarks/hot_query_effect.py " + " ".join(sys.argv[1:]))  # fmt: skip


if __name__ == "__main__":
    main()
