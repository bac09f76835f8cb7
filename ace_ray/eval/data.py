"""What an offline evaluation is measured on (paper 4.2), built once and shared by every method.

- The catalogue: every validated product with image features (what the service would index); products
  without features are left out of every method alike, and counted.
- Recall/MRR/nDCG: every query with a click on the test days, searched over the whole catalogue; its
  targets are the products clicked for it on the test days.
- GAUC: the test days' query sessions (the shown products, clicked = positive).
- Breakdowns: the query's category (the most common category of its targets), its head / torso / tail band
  by train-day click frequency, and cold products (no train-day clicks, so no hot queries).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ace_ray.data import feature_store as fs
from ace_ray.data.clicks import clean_clicks, first_test_day
from ace_ray.data.validate import load_clean
from ace_ray.eval.metrics import frequency_band


@dataclass
class EvalData:
    products: pd.DataFrame  # product_id, title, category; row i = product index i
    queries: list[str]
    targets: list[np.ndarray]  # product indices clicked per query on the test days
    query_category: np.ndarray
    query_band: np.ndarray  # head | torso | tail
    sessions: pd.DataFrame  # session_id, query, product_idx, clicked (test days, catalogue products only)
    cold: np.ndarray  # bool per product: no clicks on the train days
    counts: dict = field(default_factory=dict)

    def cold_targets(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """(query positions, their cold targets) for the queries that clicked at least one cold product."""
        picked = [(i, t[self.cold[t]]) for i, t in enumerate(self.targets) if self.cold[t].any()]
        return np.array([i for i, _ in picked], dtype=np.int64), [t for _, t in picked]


def load_eval_data(root: str | Path, store: fs.FeatureStore, test_days: int) -> EvalData:
    """The evaluation set of catalogue ``root`` with the products featurised in ``store``."""
    products, imp = load_clean(root)
    featurised = set(store.read(columns=[])["product_id"])
    catalogue = products[products["product_id"].isin(featurised)].reset_index(drop=True)
    index = pd.Series(np.arange(len(catalogue)), index=catalogue["product_id"])
    cutoff = pd.Timestamp(first_test_day(root, test_days))
    day = pd.to_datetime(imp["day"])
    test = imp[day >= cutoff]
    if test.empty:
        raise ValueError(f"{root}: no impressions on the last {test_days} day(s): nothing to evaluate on")
    shown = test[test["product_id"].isin(index.index)]
    sessions = pd.DataFrame({"session_id": shown["session_id"].astype(str).to_numpy(), "query": shown["query"].to_numpy(),
                             "product_idx": index[shown["product_id"]].to_numpy(),
                             "clicked": shown["clicked"].astype(bool).to_numpy()})  # fmt: skip
    clicks = sessions[sessions["clicked"]]
    grouped = clicks.groupby("query", sort=True)["product_idx"].agg(lambda s: np.unique(s.to_numpy()))
    queries, targets = list(grouped.index), list(grouped.to_numpy())
    cats = catalogue["category"].to_numpy()
    query_category = np.array([pd.Series(cats[t]).mode().iloc[0] for t in targets], dtype=object)
    train_clicks = clean_clicks(root, test_days, (products, imp))  # the clicks training read, cleaned alike
    bands = frequency_band(train_clicks["query"].value_counts())
    query_band = np.array([bands.get(q, "tail") for q in queries], dtype=object)
    cold = ~catalogue["product_id"].isin(set(train_clicks["product_id"])).to_numpy()
    counts = {"products": len(products), "catalogue": len(catalogue), "unfeaturised": len(products) - len(catalogue),
              "test_queries": len(queries), "test_sessions": int(sessions["session_id"].nunique()),
              "test_impressions": len(test), "impressions_off_catalogue": len(test) - len(shown),
              "cold_products": int(cold.sum())}  # fmt: skip
    return EvalData(catalogue[["product_id", "title", "category"]], queries, targets, query_category, query_band,
                    sessions, cold, counts)  # fmt: skip
