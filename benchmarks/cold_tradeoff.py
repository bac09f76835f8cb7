"""What a model's cold-product Recall@100 is worth beside its overall Recall@100. A cold product (no train-day
clicks) competes with warm ones whose scores may carry their popularity (the sampling-bias correction,
``finetune.logq_correction``, teaches that on purpose), so one figure mixes how well the tower reads a new
product with how far it ranks new products below known ones. Adding a constant b to every cold product's
score moves along that trade-off; this traces it for each fine-tuned model of ``ace-ray reproduce`` reports
(b from 0 up: Recall@100, cold Recall@100, GAUC and cold GAUC, each as ``ace-ray evaluate`` measures it) and
compares the methods at equal overall Recall@100, where the trade-off no longer decides.

    python benchmarks/cold_tradeoff.py REPORT_DIR [REPORT_DIR ...] [--seeds 0 1 2] [--no-record]

Nothing is selected here: b = 0 is what evaluation reports (checked against each run's recorded metrics).
Prints the figures, appends them with the machine to benchmarks/results/cold_tradeoff.md and draws the mean
curves to benchmarks/results/cold_tradeoff.png (--png).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import record  # noqa: E402
from report_models import report_models  # noqa: E402

from ace_ray.config import load_workload  # noqa: E402
from ace_ray.data import feature_store as fs  # noqa: E402
from ace_ray.eval import report as plots  # noqa: E402
from ace_ray.eval.baselines import topk_rows  # noqa: E402
from ace_ray.eval.data import EvalData, load_eval_data  # noqa: E402
from ace_ray.eval.metrics import cold_gauc, gauc, per_query  # noqa: E402
from ace_ray.runtime import ensure_ray  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "cold_tradeoff.md"
K = 100
BOOSTS = np.round(np.arange(0.0, 0.121, 0.01), 3)  # cosine units; gamma 20 makes 0.1 a logit of 2


def curve(q: np.ndarray, p: np.ndarray, data: EvalData, boosts=BOOSTS) -> pd.DataFrame:
    """Recall@K, cold Recall@K and GAUC with ``b`` added to every cold product's score, one row per b."""
    cold_q, cold_t = data.cold_targets()
    s = data.sessions
    q_of = pd.Series(np.arange(len(data.queries)), index=data.queries)
    sessions = s[s["query"].isin(q_of.index)]  # every test query with a click is embedded once
    pairs = np.einsum(
        "ij,ij->i", q[q_of[sessions["query"]].to_numpy()], p[sessions["product_idx"].to_numpy()]
    )
    scores = q @ p.T
    sid, clicked = sessions["session_id"].to_numpy(), sessions["clicked"].to_numpy()
    cold_s = data.cold[sessions["product_idx"].to_numpy()]
    rows = []
    for b in boosts:
        _, top = topk_rows(scores + b * data.cold[None, :], K)
        boosted = pairs + b * cold_s
        rows.append({
            "boost": float(b),
            f"recall@{K}": float(per_query(top, data.targets, [K])[f"recall@{K}"].mean()),
            f"cold_recall@{K}": float(per_query(top[cold_q], cold_t, [K])[f"recall@{K}"].mean()),
            "gauc": gauc(sid, clicked, boosted)["gauc"],
            "cold_gauc": cold_gauc(sid, clicked, boosted, cold_s)["cold_gauc"],
        })  # fmt: skip
    return pd.DataFrame(rows)


def cold_at(c: pd.DataFrame, overall: float) -> float:
    """Cold Recall@K where the curve's overall Recall@K equals ``overall`` (linear between its points; NaN
    outside it). Raising b trades overall recall for cold recall, so both move monotonically along it."""
    x, y = c[f"recall@{K}"].to_numpy(), c[f"cold_recall@{K}"].to_numpy()
    order = np.argsort(x)
    if not x.min() <= overall <= x.max():
        return float("nan")
    return float(np.interp(overall, x[order], y[order]))


def at_level(mean: pd.DataFrame, seeds: list[pd.DataFrame], overall: float) -> str:
    """Cold Recall@K at ``overall`` along the mean curve, then mean ± std over the seeds' own curves (the
    spread a margin must exceed); ``n`` where some seed's curve does not reach that overall recall."""
    per_seed = np.array([cold_at(c, overall) for c in seeds])
    reached = per_seed[~np.isnan(per_seed)]
    cell = f"{cold_at(mean, overall):.3f}"
    if len(reached) > 1:
        cell += f" ({reached.mean():.3f} ± {reached.std(ddof=1):.3f}"
        cell += ")" if len(reached) == len(seeds) else f", n={len(reached)})"
    elif len(reached) == 1 and len(seeds) > 1:
        cell += f" ({reached[0]:.3f}, n=1)"
    return cell


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", type=Path, help="ace-ray reproduce report directories")
    ap.add_argument("--seeds", type=int, nargs="*", help="only these seeds' models (default: all)")
    ap.add_argument("--png", type=Path, default=RESULTS.with_suffix(".png"), help="where to draw the curves")
    ap.add_argument("--no-record", action="store_true", help="print only")
    args = ap.parse_args()
    ensure_ray(load_workload(args.reports[0] / "workload.yaml").ray)
    seeds = set(args.seeds) if args.seeds else None
    curves: dict[str, list[pd.DataFrame]] = defaultdict(list)
    for rep in args.reports:
        base = load_workload(rep / "workload.yaml")
        data = load_eval_data(base.path(base.data.root), fs.for_workload(base), base.data.test_days)
        for method, seed, run, model in report_models(rep, seeds):
            model.fit(data.products)
            c = curve(model.embed_queries(data.queries), model.product_embeddings, data)
            # b = 0 is the evaluation itself, up to rank flips between scores equal in float32 (an embedding
            # batched otherwise differs in the last bits): one flip moves a recall by 1/1,101 queries.
            for key in (f"recall@{K}", f"cold_recall@{K}", "gauc", "cold_gauc"):
                if key in run["metrics"] and abs(c[key].iloc[0] - run["metrics"][key]) > 2e-3:
                    raise SystemExit(f"{rep}: {method} seed {seed}: {key} {c[key].iloc[0]:.5f} here, "
                                     f"{run['metrics'][key]:.5f} recorded")  # fmt: skip
            name = f"{base.path(base.data.root).name}: {method}"
            curves[name].append(c)
            first = c.iloc[0]
            print(f"[cold_tradeoff] {name} seed {seed}: b=0 Recall@{K} {first[f'recall@{K}']:.4f} cold "
                  f"{first[f'cold_recall@{K}']:.4f} GAUC {first['gauc']:.4f} cold GAUC {first['cold_gauc']:.4f}",
                  flush=True)  # fmt: skip
    means = {name: pd.concat(cs).groupby("boost").mean().reset_index() for name, cs in curves.items()}
    top = min(c[f"recall@{K}"].max() for c in means.values())  # the best overall recall every method reaches
    levels = [float(np.floor(top * 100) - i) / 100 for i in range(5)]
    equal = [[name, *(at_level(c, curves[name], lv) for lv in levels)] for name, c in means.items()]
    rows = [[name, len(curves[name]), f"{r['boost']:.2f}", f"{r[f'recall@{K}']:.3f}", f"{r[f'cold_recall@{K}']:.3f}",
             f"{r['gauc']:.3f}", f"{r['cold_gauc']:.3f}"] for name, c in means.items() for r in c.to_dict("records")]  # fmt: skip
    for row in rows:
        print("[cold_tradeoff]", " | ".join(map(str, row)))
    print("[cold_tradeoff] cold Recall@100 at overall Recall@100", levels)
    for row in equal:
        print("[cold_tradeoff]", " | ".join(row))
    labels = {textwrap.fill(n.replace("finetune.", ""), 48): c for n, c in means.items()}
    plots.plot_curves(labels, args.png, x=f"recall@{K}", y=f"cold_recall@{K}",
                      title="Cold products boosted by b = 0 (right) to 0.12 (mean over seeds)")  # fmt: skip
    if not args.no_record:
        command = "python benchmarks/cold_tradeoff.py " + " ".join(sys.argv[1:])
        record(str(RESULTS), f"overall and cold-product Recall@{K} as cold products' scores are raised by b",
               ["import: row", "seeds", "b", f"Recall@{K}", f"cold Recall@{K}", "GAUC", "cold GAUC"], rows, command)  # fmt: skip
        record(str(RESULTS), f"cold-product Recall@{K} at equal overall Recall@{K}: along each mean curve "
               "(mean ± std of each seed's own curve)",
               ["import: row", *(f"at {lv:.2f}" for lv in levels)], equal, command)  # fmt: skip


if __name__ == "__main__":
    main()
