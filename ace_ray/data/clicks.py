"""Training clicks: the clicked impressions of the train days, never a test day, never a quarantined row.

Everything that reads the train days' clicks applies ``train_click_mask`` to rows the quarantine kept:
``clean_clicks`` (a table, for evaluation's view of the train days: cold products, query bands) and the
Ray Data stream of ``click_stream`` (hot queries, fine-tune pairs), so the day split and the cleaning are
done one way.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ace_ray.config import ConfigError
from ace_ray.data.schema import IMPRESSIONS_FILE
from ace_ray.data.summary import split_days
from ace_ray.data.validate import load_clean


def first_test_day(root: str | Path, test_days: int) -> dt.date:
    """The first test day of catalogue ``root`` (reads only the day column); with no test days, the day
    after the last one."""
    days = pq.read_table(Path(root) / IMPRESSIONS_FILE, columns=["day"]).to_pandas()
    train, test = split_days(days, test_days)
    return test[0] if test else train[-1] + dt.timedelta(days=1)


def train_split(root: str | Path, test_days: int) -> dict:
    """The split a training run reads: the number of test days and the first of them (ISO). Saved with
    every fine-tuned model, so evaluation can refuse a model trained on its test days."""
    return {"test_days": test_days, "first_test_day": first_test_day(root, test_days).isoformat()}


def check_split(model_split: dict | None, root: str | Path, test_days: int, what: str) -> None:
    """Refuse to evaluate (or index) a model on days it was trained on: a model whose training read clicks
    up to a later day than this workload's first test day would be scored on its own training clicks. (A
    model that held out more days, e.g. validation days, is fine.)"""
    if not model_split:
        return  # models saved before splits were recorded
    now = train_split(root, test_days)
    if model_split["first_test_day"] > now["first_test_day"]:
        raise ConfigError(
            f"{what} was trained on clicks before {model_split['first_test_day']} (held out "
            f"{model_split['test_days']} day(s)); this workload's test days start on {now['first_test_day']} "
            f"(data.test_days={test_days}): use data.test_days={model_split['test_days']}"
        )


def clean_clicks(root: str | Path, test_days: int,
                 clean: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> pd.DataFrame:  # fmt: skip
    """(day, session_id, query, product_id) of every usable click before the test days: the validated
    impressions (quarantined rows dropped, the first copy of a duplicate kept, exactly as evaluation reads
    them) whose product is in the validated catalogue. ``clean``: ``load_clean(root)`` when the caller
    already holds it (it reads, and hashes, both tables)."""
    root = Path(root).resolve()
    cutoff = first_test_day(root, test_days)
    products, imp = clean if clean is not None else load_clean(root)
    ok = train_click_mask(imp, cutoff) & imp["product_id"].isin(set(products["product_id"])).to_numpy()
    return imp.loc[ok, ["day", "session_id", "query", "product_id"]].reset_index(drop=True)


def train_click_mask(imp: pd.DataFrame, cutoff: dt.date) -> np.ndarray:
    """Which impressions of ``imp`` (any slice of the log) are clicks before the first test day ``cutoff``:
    the one definition ``clean_clicks`` and the click stream (``click_stream``) both apply."""
    day = pd.to_datetime(imp["day"]).dt.date
    return (imp["clicked"].astype(bool) & (day < cutoff)).to_numpy()
