"""Training clicks: the clicked impressions of the train days, never a test day, never a quarantined row.

Everything that feeds training (hot queries, fine-tune pairs) reads clicks through ``train_clicks``, so the
day split is enforced in one place.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import ray

from ace_ray.data.schema import IMPRESSIONS_FILE
from ace_ray.data.summary import split_days
from ace_ray.data.validate import read_quarantine


def first_test_day(root: str | Path, test_days: int) -> dt.date:
    """The first test day of catalogue ``root`` (reads only the day column); with no test days, the day
    after the last one."""
    days = pq.read_table(Path(root) / IMPRESSIONS_FILE, columns=["day"]).to_pandas()
    train, test = split_days(days, test_days)
    return test[0] if test else train[-1] + dt.timedelta(days=1)


def train_clicks(root: str | Path, test_days: int) -> ray.data.Dataset:
    """A Ray Dataset of (day, session_id, query, product_id) for every usable click before the test days."""
    root = Path(root).resolve()
    cutoff = first_test_day(root, test_days)
    q = read_quarantine(root)
    bad_keys = set(q.loc[q["file"] == IMPRESSIONS_FILE, "key"])
    bad_products = set(q.loc[q["file"] == "products.parquet", "key"])

    def keep(batch: pd.DataFrame) -> pd.DataFrame:
        day = pd.to_datetime(batch["day"]).dt.date
        key = batch["session_id"].astype(str) + "#" + batch["position"].astype(str)
        ok = batch["clicked"].astype(bool) & (day < cutoff) & ~key.isin(bad_keys)
        ok &= ~batch["product_id"].isin(bad_products)
        return batch.loc[ok, ["day", "session_id", "query", "product_id"]]

    ds = ray.data.read_parquet(str(root / IMPRESSIONS_FILE), columns=["day", "session_id", "query", "product_id",
                                                                      "position", "clicked"])  # fmt: skip
    return ds.map_batches(keep, batch_format="pandas")
