"""Hot queries (paper 3.2): for each product the (at most) k most clicked queries of the train days.

An aggregation of the cleaned train-day clicks: the click stream (``click_stream``) grouped by product in Ray
Data, counts per query -> top k per product in each group, so no process holds the whole log. Products with no
train-day clicks get no row (they have no hot queries, and are the cold products of evaluation). A table
is stored per split (first test day, k, the click log's version), and every reader names the split it
wants, so training and evaluation can only ever see the hot queries of their own train days.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pandas as pd

from ace_ray.data.click_stream import impression_rows, read_train_clicks
from ace_ray.data.clicks import first_test_day
from ace_ray.data.schema import IMPRESSIONS_FILE, QUARANTINE_FILE
from ace_ray.data.validate import load_clean_products

HOT_QUERIES_DIR = "hot_queries"


def top_queries(clicks: pd.DataFrame, k: int) -> pd.DataFrame:
    """(product_id, query) clicks -> (product_id, hot_queries, hot_clicks): per product the k queries with
    most clicks, most first, ties broken by the query text (deterministic). A product's answer depends on
    its own clicks only, so it is the same for one product's group as for the whole table."""
    counts = clicks.groupby(["product_id", "query"], sort=False).size().rename("clicks").reset_index()
    top = counts.sort_values(["product_id", "clicks", "query"], ascending=[True, False, True], kind="stable")
    top = top.groupby("product_id", sort=False).head(k)
    out = top.groupby("product_id", sort=True).agg(hot_queries=("query", list), hot_clicks=("clicks", list))
    return out.reset_index().assign(hot_clicks=lambda d: d["hot_clicks"].map(lambda c: [int(x) for x in c]))


def build_hot_queries(root: str | Path, test_days: int, k: int = 10) -> pd.DataFrame:
    """The hot-query table of catalogue ``root`` (product_id, hot_queries, hot_clicks) for the products of
    the validated catalogue: the click stream partitioned by product in Ray Data, ``top_queries`` per block."""
    root = Path(root).resolve()
    parts = max(1, min(64, impression_rows(root) // 500_000))
    # Hash-partitioned by product, so every block holds all the clicks of its products: one
    # ``top_queries`` a block (a call a product would cost a pandas groupby each).
    top = (
        read_train_clicks(root, test_days)
        .repartition(parts, keys=["product_id"])
        .map_batches(top_queries, fn_args=(k,), batch_size=None, batch_format="pandas")
        .to_pandas()
    )
    if top.empty:
        return pd.DataFrame({"product_id": [], "hot_queries": [], "hot_clicks": []})
    top = top[top["product_id"].isin(set(load_clean_products(root)["product_id"]))].sort_values("product_id")
    # Plain Python values: Ray hands back Arrow-backed columns, whose dtypes pandas cannot read back.
    return pd.DataFrame({"product_id": [str(p) for p in top["product_id"]],
                         "hot_queries": [[str(q) for q in x] for x in top["hot_queries"]],
                         "hot_clicks": [[int(c) for c in x] for x in top["hot_clicks"]]})  # fmt: skip


def _key(root: Path, test_days: int, k: int) -> str:
    """Names the hot-query table of one split of one version of the click log: the first test day, k, and
    the impressions and quarantine files as they are now (a re-import or re-validation makes a new table)."""
    state = [first_test_day(root, test_days).isoformat(), k]
    for name in (IMPRESSIONS_FILE, QUARANTINE_FILE):
        st = (root / name).stat()
        state += [name, st.st_size, st.st_mtime_ns]
    return f"{state[0]}-k{k}-" + hashlib.sha256(json.dumps(state).encode()).hexdigest()[:8]


def hot_queries_path(root: str | Path, test_days: int, k: int = 10) -> Path:
    """Where the hot-query table of this split (``test_days``) and ``k`` lives."""
    root = Path(root).resolve()
    return root / HOT_QUERIES_DIR / _key(root, test_days, k)


def write_hot_queries(root: str | Path, test_days: int, k: int = 10) -> Path:
    """Write (or reuse) the hot-query table of this split under ``<root>/hot_queries/<split key>/``,
    published whole (written beside it, then renamed)."""
    out = hot_queries_path(root, test_days, k)
    if out.is_dir():
        return out
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build_hot_queries(root, test_days, k).to_parquet(tmp / "hot_queries.parquet", index=False)
    try:
        tmp.rename(out)
    except OSError:  # another process published the same table first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_hot_queries(root: str | Path, test_days: int, k: int = 10) -> pd.DataFrame:
    """The hot-query table of this split (built first if it is not there yet): training and evaluation
    read it the same way, so a ``features`` run with other test days can never leak into either."""
    table = pd.read_parquet(write_hot_queries(root, test_days, k) / "hot_queries.parquet")
    return table.assign(hot_queries=table["hot_queries"].map(list), hot_clicks=table["hot_clicks"].map(list))
