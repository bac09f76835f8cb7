"""Hot queries (paper 3.2): for each product the (at most) k most clicked queries of the train days.

A Ray Data aggregation: clicks -> counts per (product, query) -> top k per product. Products with no
train-day clicks get no row (they have no hot queries, and are the cold products of evaluation).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import ray

from ace_ray.data.clicks import train_clicks

HOT_QUERIES_DIR = "hot_queries"


def _top_k(group: pd.DataFrame, k: int) -> pd.DataFrame:
    # Most clicks first; ties broken by the query text so the result is deterministic.
    top = group.sort_values(["clicks", "query"], ascending=[False, True]).head(k)
    return pd.DataFrame(
        {
            "product_id": [top["product_id"].iloc[0]],
            "hot_queries": [top["query"].tolist()],
            "hot_clicks": [top["clicks"].astype(int).tolist()],
        }  # fmt: skip
    )


def build_hot_queries(root: str | Path, test_days: int, k: int = 10) -> ray.data.Dataset:
    """The hot-query table of catalogue ``root`` as a Ray Dataset (product_id, hot_queries, hot_clicks)."""
    counts = (
        train_clicks(root, test_days)
        .groupby(["product_id", "query"])
        .count()
        .rename_columns({"count()": "clicks"})
    )
    return counts.groupby("product_id").map_groups(lambda g: _top_k(g, k), batch_format="pandas")


def write_hot_queries(root: str | Path, test_days: int, k: int = 10) -> Path:
    """Write the hot-query table to ``<root>/hot_queries/`` (replacing an older one)."""
    out = Path(root).resolve() / HOT_QUERIES_DIR
    if out.exists():
        for f in out.glob("*"):
            f.unlink()
    build_hot_queries(root, test_days, k).write_parquet(str(out))
    return out


def read_hot_queries(root: str | Path) -> pd.DataFrame:
    """The hot-query table written by ``write_hot_queries``."""
    path = Path(root) / HOT_QUERIES_DIR
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no hot queries yet; run `ace-ray features {root}`")
    return pd.read_parquet(path)
