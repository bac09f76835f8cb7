"""``ace-ray evaluate``: a fine-tuned model against the baselines on the test days (paper 4.2).

Every method (the model and each baseline) is a ``Retriever`` over the same catalogue; each gets GAUC on
the test sessions, Recall@K / MRR / nDCG@10 by exact search over the whole catalogue, and breakdowns by
category, head / torso / tail query band and cold products. The model is also searched through the ANN
index the service would use, and the recall that costs and the speed-up it buys are reported.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from ace_ray.config import EvalConfig
from ace_ray.data import feature_store as fs
from ace_ray.eval import index as faiss_index
from ace_ray.eval import report
from ace_ray.eval.baselines import Retriever, make_baselines, topk_rows
from ace_ray.eval.data import EvalData, load_eval_data
from ace_ray.eval.embed import TowerRetriever
from ace_ray.eval.metrics import cold_gauc, gauc, per_query

SUMMARY = ["gauc", "recall@10", "recall@50", "recall@100", "mrr", "ndcg@10"]


def evaluate_method(method: Retriever, data: EvalData, ks: list[int], fit: bool = True) -> dict:
    """Fit ``method`` on the catalogue (unless already fitted) and measure it: the headline metrics,
    per-query rows (for the breakdowns) and the retrieved lists."""
    t0 = time.perf_counter()
    if fit:
        method.fit(data.products)
    fit_s = time.perf_counter() - t0
    _, retrieved = method.search(data.queries, max(ks))
    rows = per_query(retrieved, data.targets, ks)
    s = data.sessions
    impressions = (s["session_id"].to_numpy(), s["clicked"].to_numpy(),
                   method.score(s["query"].tolist(), s["product_idx"].to_numpy()))  # fmt: skip
    g = gauc(*impressions)
    cold_g = cold_gauc(*impressions, data.cold[s["product_idx"].to_numpy()])
    cold_q, cold_t = data.cold_targets()
    cold = per_query(retrieved[cold_q], cold_t, ks).mean() if len(cold_q) else pd.Series(dtype=float)
    among_cold = _among_cold(method, data, cold_q, cold_t, ks)
    out = {"gauc": g["gauc"], **{k: float(v) for k, v in rows.mean().items()}, "mrr": float(rows["rr"].mean()),
           "gauc_sessions": g["sessions"], "gauc_skipped_sessions": g["skipped_sessions"], "fit_s": fit_s,
           **cold_g, **{f"cold_{k}": float(v) for k, v in cold.items() if k.startswith("recall")},
           **{f"cold_among_cold_{k}": float(v) for k, v in among_cold.items() if k.startswith("recall")}}  # fmt: skip
    out.pop("rr", None)
    return {"metrics": out, "per_query": rows, "retrieved": retrieved}


def _among_cold(method: Retriever, data: EvalData, cold_q: np.ndarray, cold_t: list[np.ndarray],
                ks: list[int]) -> pd.Series:  # fmt: skip
    """Recall@K of the cold targets when only the cold products compete (each query scored against every
    cold product). Beside the whole-catalogue figure it tells a tower that places cold products badly from
    one that ranks warm products (hot queries, memorised titles) above them."""
    pool = np.flatnonzero(data.cold)
    if not len(cold_q):
        return pd.Series(dtype=float)
    # One query at a time: a catalogue of millions has hundreds of thousands of cold products.
    top = np.concatenate(
        [topk_rows(method.score([data.queries[i]] * len(pool), pool)[None], max(ks))[1] for i in cold_q]
    )
    return per_query(np.where(top >= 0, pool[np.maximum(top, 0)], -1), cold_t, ks).mean()


def ann_figures(model: TowerRetriever, q: np.ndarray, data: EvalData, cfg: EvalConfig) -> dict:
    """The model searched through the service's ANN index (``q``: its query embeddings): its Recall@K, and
    against exact search."""
    params = {"hnsw_m": cfg.hnsw_m, "ef_search": cfg.ef_search} if cfg.index == "hnsw" else {}
    cmp = faiss_index.compare(model.product_embeddings, q, max(cfg.ks), kind=cfg.index, **params)
    rows = per_query(cmp["ann_ids"], data.targets, cfg.ks)
    return {**{f"ann_{k}": float(rows[k].mean()) for k in rows if k.startswith("recall")},
            "ann_overlap_with_exact": cmp["ann_recall"], "exact_ms_per_query": cmp["exact_ms_per_query"],
            "ann_ms_per_query": cmp["ann_ms_per_query"], "ann_speedup": cmp["speedup"]}  # fmt: skip


def breakdown(results: dict[str, dict], data: EvalData, by: np.ndarray, label: str, ks: list[int]) -> str:
    """A Markdown table of Recall@max(K) per method for each value of ``by`` (query category or band)."""
    k = f"recall@{max(ks)}"
    frame = pd.DataFrame({name: r["per_query"][k].to_numpy() for name, r in results.items()})
    frame[label] = by
    table = frame.groupby(label).mean()
    table.insert(0, "queries", frame.groupby(label).size())
    rows = [{label: idx, **row.to_dict(), "queries": int(row["queries"])} for idx, row in table.iterrows()]
    return report.metrics_table(rows, ["queries", *results], name_key=label)


def run_evaluation(model_dir: str | Path | None, root: str | Path, store: fs.FeatureStore, test_days: int,
                   cfg: EvalConfig, out_dir: str | Path, name: str = "model") -> dict:  # fmt: skip
    """Evaluate the model (if any) and the configured baselines; write ``report.md`` and the embedding map
    into ``out_dir``. Returns {method: metrics} plus the data counts under ``"_counts"``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_eval_data(root, store, test_days)
    methods: list[Retriever] = make_baselines(list(cfg.baselines))
    model = TowerRetriever(model_dir, store, root, cfg, test_days, name) if model_dir else None
    if model is not None:
        methods.insert(0, model)
    results = {}
    for m in methods:
        print(
            f"[evaluate] {m.name}: {len(data.queries):,} queries over {len(data.products):,} products",
            flush=True,
        )
        results[m.name] = evaluate_method(m, data, list(cfg.ks))
    metrics = {n: r["metrics"] for n, r in results.items()}
    sections = [("Data", report.metrics_table([{"item": k, "count": v} for k, v in data.counts.items()], ["count"],
                                               name_key="item"))]  # fmt: skip
    if not methods:  # eval.baselines=[] and no model (reproduce's baseline pass): the data counts alone
        report.write_report(out_dir / "report.md", "Evaluation", sections)
        return {"_counts": data.counts}
    cols = [c for c in SUMMARY if any(c in m for m in metrics.values())]
    sections.append(("Retrieval (exact search)", report.metrics_table([{"method": n, **m} for n, m in metrics.items()],
                                                                      cols)))  # fmt: skip
    if model is not None:
        q = model.embed_queries(data.queries)
        metrics[model.name].update(ann_figures(model, q, data, cfg))
        ann_cols = [c for c in metrics[model.name] if c.startswith("ann_") or c.endswith("_per_query")]
        sections.append((f"ANN index ({cfg.index}) vs exact search",
                         report.metrics_table([{"method": model.name, **metrics[model.name]}], ann_cols)))  # fmt: skip
        png = report.plot_embedding_map(q, model.product_embeddings, data.query_category,
                                        data.products["category"].to_numpy(), out_dir / "embedding_map.png",
                                        title=f"{model.name}: queries (x) and products (o) by category",
                                        max_points=cfg.map_points)  # fmt: skip
        metrics[model.name]["centroid_gap"] = report.centroid_gap(q, model.product_embeddings)
        sections.append(("Embedding map", report.figure_link(png, out_dir / "report.md", "embedding map")))
    cold_cols = [c for c in next(iter(metrics.values())) if c.startswith("cold_")]
    sections.append((f"Cold products ({data.counts['cold_products']:,}: no train-day clicks, no hot queries)",
                     report.metrics_table([{"method": n, **m} for n, m in metrics.items()], cold_cols)))  # fmt: skip
    sections.append(("Recall by query band (train-day click frequency)",
                     breakdown(results, data, data.query_band, "band", list(cfg.ks))))  # fmt: skip
    sections.append(("Recall by query category", breakdown(results, data, data.query_category, "category",
                                                            list(cfg.ks))))  # fmt: skip
    report.write_report(out_dir / "report.md", "Evaluation", sections)
    return {**metrics, "_counts": data.counts}


def summary_table(results: dict) -> str:
    """The headline table (one row per method) as Markdown, with the cold products' Recall@100 (where only
    title and photo can help) and the ANN index's."""
    rows = [{"method": n, **m} for n, m in results.items() if not n.startswith("_")]
    cols = [*SUMMARY, "cold_recall@100", "ann_recall@100"]
    return report.metrics_table(rows, [c for c in cols if any(c in r for r in rows)])
