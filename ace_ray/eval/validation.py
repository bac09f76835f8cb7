"""Validation while fine-tuning: Recall@K of the validation days' queries, what sweeps select on and early
stopping reads. Never the test days: the validation days are the ``data.val_days`` days just before them,
and training reads neither (``DataConfig.held_out_days``).

The set (queries, their clicked products, the products searched) is built once on the driver; the
training worker embeds it with the current towers at every checkpoint (``validation_recall``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ace_ray.data import feature_store as fs
from ace_ray.data.clicks import first_test_day
from ace_ray.data.hot_queries import read_hot_queries
from ace_ray.data.validate import load_clean, load_clean_products
from ace_ray.eval.metrics import recall_at_k


@dataclass
class ValidationSet:
    """Queries clicked on the validation days, their targets (positions in ``pool``) and the products
    searched (every target plus a seeded sample of the others)."""

    queries: list[str]
    targets: list[list[int]]
    pool: list[str]
    k: int
    first_day: str  # the first validation day
    end_day: str  # the first test day (excluded)

    def to_dict(self) -> dict:
        return asdict(self)


def build_validation_set(root: str | Path, store: fs.FeatureStore, test_days: int, val_days: int, k: int,
                         max_products: int, seed: int) -> ValidationSet | None:  # fmt: skip
    """The validation set of catalogue ``root``, or None without validation days."""
    if val_days <= 0:
        return None
    start, end = first_test_day(root, test_days + val_days), first_test_day(root, test_days)
    products, imp = load_clean(root)
    featurised = set(store.read(columns=[])["product_id"]) & set(products["product_id"])
    day = pd.to_datetime(imp["day"]).dt.date
    clicks = imp[
        imp["clicked"].astype(bool) & (day >= start) & (day < end) & imp["product_id"].isin(featurised)
    ]
    if clicks.empty:
        raise ValueError(
            f"{root}: no clicks on the {val_days} validation day(s) from {start}: nothing to validate on"
        )
    wanted = sorted(set(clicks["product_id"]))
    others = sorted(featurised - set(wanted))
    room = len(others) if max_products == 0 else max(0, max_products - len(wanted))
    rng = np.random.default_rng(seed)
    pool = sorted(
        wanted + [others[i] for i in rng.choice(len(others), min(room, len(others)), replace=False)]
    )
    at = {p: i for i, p in enumerate(pool)}
    grouped = clicks.groupby("query", sort=True)["product_id"].agg(lambda s: sorted({at[p] for p in s}))
    return ValidationSet(
        list(grouped.index), list(grouped.to_numpy()), pool, k, start.isoformat(), end.isoformat()
    )


def pool_rows(vs: ValidationSet, root: str | Path, store_path: str | Path, held_out_days: int,
              hot_k: int) -> pd.DataFrame:  # fmt: skip
    """What the product tower reads for the pool: title, hot queries (of the training split), features."""
    products = load_clean_products(root)
    store = fs.FeatureStore(store_path)
    feats = store.read(columns=["patch_features", "pixels"], ids=vs.pool)  # the pool's rows only
    rows = pd.DataFrame({"product_id": vs.pool}).merge(products[["product_id", "title"]], on="product_id")
    rows = rows.merge(feats, on="product_id")
    hot = read_hot_queries(root, held_out_days, hot_k)[["product_id", "hot_queries"]]
    rows = rows.merge(hot, on="product_id", how="left")
    rows["hot_queries"] = [list(h) if isinstance(h, list) else [] for h in rows["hot_queries"]]
    return rows.set_index("product_id").loc[vs.pool].reset_index()


def recall_from_embeddings(
    queries: np.ndarray, products: np.ndarray, targets: list[list[int]], k: int
) -> float:
    """Recall@k of exact inner-product search (k capped at the pool size)."""
    k = min(k, len(products))
    scores = queries @ products.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return recall_at_k(top, [np.asarray(t) for t in targets], ks=(k,))[f"recall@{k}"]


@torch.no_grad()
def validation_recall(towers, vs: ValidationSet, rows: pd.DataFrame, manifest: fs.FeatureManifest,
                      text_cfg: dict, device, batch: int = 128) -> float:  # fmt: skip
    """Recall@k of the validation queries with ``towers`` as they are now (eval mode, restored after)."""
    from ace_ray.eval.embed import product_inputs
    from ace_ray.model.towers import encode_query_texts

    was_training = towers.training
    towers.eval()
    try:
        parts = []
        for i in range(0, len(rows), batch):
            inputs = product_inputs(rows.iloc[i : i + batch], manifest, text_cfg)
            parts.append(
                towers.encode_products({k: v.to(device) for k, v in inputs.items()}).float().cpu().numpy()
            )
        q = encode_query_texts(towers, vs.queries, text_cfg)
        return recall_from_embeddings(q, np.concatenate(parts), vs.targets, vs.k)
    finally:
        towers.train(was_training)
