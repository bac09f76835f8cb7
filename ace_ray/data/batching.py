"""Mini-batches for fine-tuning (mixed negative sampling, paper 4.3).

Fine-tuning: the (query, clicked product) pairs of the train days are split at random into P partitions;
inside a partition they are ordered by category; batches are cut from that order, so a batch holds mostly
one category (hard in-batch negatives) when P is small and a random mix when P is large (``batch_plan``:
every draw is a hash of the seed and the pair's row in the click log, so Ray Data computes the plan in
pieces and no process holds a table of all pairs). The batch order is shuffled every epoch. Each written
file holds one whole batch; the training workers deal the files among themselves by an ``EpochPlan``
(``ace_ray.data.plan``), so every worker trains on whole batches and every pair is seen once per epoch
across all workers, in an order fixed by (seed, epoch).

A batch file holds ids and tokens only, and each pair's row in the store's feature table
(``ace_ray.data.feature_table``): the image features are gathered when the batch is read, so they are on
disk once per product, not once per click.

The pretraining stream is in ``pretrain_set``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import ray

from ace_ray.config import BatchConfig, TextConfig
from ace_ray.data import batch_plan as bp
from ace_ray.data import feature_store as fs
from ace_ray.data import text
from ace_ray.data.click_stream import impression_rows, read_train_clicks
from ace_ray.data.feature_table import for_store
from ace_ray.data.hot_queries import hot_queries_path, read_hot_queries
from ace_ray.data.plan import file_index
from ace_ray.data.validate import load_clean_products

BATCHES_DIR = "finetune_batches"
DONE = "_done.json"
# 2: feature rows instead of the features themselves; 3: the plan drawn per pair (batch_plan); 4: each pair's
# product's hot queries also without the pair's own query (``hot_other_*``); 5: the own query's train-day
# clicks on the product (``hot_own_clicks``); 6: the product's train-day clicks (``product_clicks``)
LAYOUT = 6
_NO_FEATURES = -1  # the partition of pairs whose product has no features


def _assemble(group: pd.DataFrame, cfg: TextConfig) -> pd.DataFrame:
    """One batch's rows -> one row of stacked arrays (tokens, the products' feature-table rows)."""
    g = group.sort_values("row")
    q = text.encode(g["query"].tolist(), cfg.max_query, cfg.tokenizer)
    t = text.encode(g["title"].tolist(), cfg.max_title, cfg.tokenizer)
    h = text.encode([text.join_hot_queries(x) for x in g["hot_queries"]], cfg.max_hot, cfg.tokenizer)
    # The same without the pair's own query: a train-day click's query is nearly always among its product's
    # hot queries, a test-day query often is not (finetune.hot_query_leave_out).
    others = [[x for x in hot if x != q] for hot, q in zip(g["hot_queries"], g["query"], strict=True)]
    o = text.encode([text.join_hot_queries(x) for x in others], cfg.max_hot, cfg.tokenizer)
    # The own query's train-day clicks on the product, 0 where it is not hot; 1: this pair's click alone made
    # it hot (finetune.hot_query_leave_one_out).
    own = [dict(zip(hot, clicks, strict=True)).get(q, 0)
           for hot, clicks, q in zip(g["hot_queries"], g["hot_clicks"], g["query"], strict=True)]  # fmt: skip
    row = {
        "batch_id": int(g["batch_id"].iloc[0]),
        "pair_id": g["row"].to_numpy(),  # the pair's row in the click log
        "product_id": g["product_id"].astype(str).tolist(),
        "category": g["category"].astype(str).tolist(),
        "query_ids": q["input_ids"], "query_mask": q["attention_mask"],
        "title_ids": t["input_ids"], "title_mask": t["attention_mask"],
        "hot_ids": h["input_ids"], "hot_mask": h["attention_mask"],
        "hot_other_ids": o["input_ids"], "hot_other_mask": o["attention_mask"],
        "hot_own_clicks": np.asarray(own, np.int64),
        # How often the product is a batch's positive, so how often it is the others' in-batch negative
        # (finetune.logq_correction).
        "product_clicks": g["product_clicks"].to_numpy(np.int64),
        "feature_row": g["feature_row"].to_numpy(np.int64),
    }  # fmt: skip
    return pd.DataFrame([row])


def build_finetune_batches(
    root: str | Path,
    store: fs.FeatureStore,
    test_days: int,
    batches: BatchConfig,
    text_cfg: TextConfig,
    out: str | Path,
    shuffle_partitions: int | None = None,
) -> dict:
    """Plan the batches of the train-day clicks and write one row per batch to ``out``, all in Ray Data:
    the click stream joined with the catalogue (category, title, feature-table row, hot queries), each pair's
    draws, per-partition counts to the driver (O(P)), each partition numbered in its own task, then grouped
    by batch. Pairs of products without features are left out (counted in the result).
    ``shuffle_partitions``: of the join and the groupbys (default: from the click log's size).

    The join is done once; every epoch then reads the written batches (see ``ace_ray.data.plan``).
    """
    root = Path(root).resolve()
    # Each shuffle partition costs seconds of scheduling: one per 200k impressions (1 for a small shop).
    parts = shuffle_partitions or max(1, min(64, impression_rows(root) // 200_000))
    catalogue = _catalogue(root, store, test_days, text_cfg.hot_k, parts)
    # Materialised once: the counts below read it, then the numbering does.
    featured = (
        read_train_clicks(root, test_days)
        .join(ray.data.from_pandas(catalogue), join_type="inner", num_partitions=parts, on=("product_id",))
        .map_batches(_drawn, batch_format="pandas", fn_args=(batches.partitions, batches.seed))
        .materialize()
    )
    counts = Counter()
    for row in featured.map_batches(_count_parts, batch_format="pandas").iter_rows():
        counts[int(row["part"])] += int(row["n"])
    total = counts.pop(_NO_FEATURES, 0) + sum(counts.values())
    offsets, size = bp.partition_offsets(counts), batches.batch_size
    out = Path(out)
    if out.exists():
        for f in out.glob("*"):
            f.unlink()
    (
        featured.filter(expr=f"part != {_NO_FEATURES}")
        .groupby("part", num_partitions=parts)
        .map_groups(
            lambda g: bp.number_partition(g, offsets[int(g["part"].iloc[0])], size), batch_format="pandas"
        )
        # A task that holds the short last batch writes ragged tensors, the others fixed-shape ones: each
        # file is read on its own (``plan.stream``), so both kinds are fine.
        .groupby("batch_id", num_partitions=parts)
        .map_groups(lambda g: _assemble(g, text_cfg), batch_format="pandas")
        # One batch per file, so shuffling the files shuffles the batch order exactly.
        .write_parquet(str(out), max_rows_per_file=1)
    )
    n = sum(counts.values())
    return {"pairs": total, "pairs_with_features": n, "batches": -(-n // size)}


def _catalogue(root: Path, store: fs.FeatureStore, test_days: int, hot_k: int, parts: int) -> pd.DataFrame:
    """Per validated product (O(products)): category, title, its row in the feature table (-1: no
    features), its hot queries of this split with their clicks, and its train-day clicks of this split
    (counted in ``parts`` shuffle partitions)."""
    products = load_clean_products(root)[["product_id", "category", "title"]]
    rows = for_store(store).ids.rename(columns={"row": "feature_row"})
    hot = read_hot_queries(root, test_days, hot_k)[["product_id", "hot_queries", "hot_clicks"]]
    clicks = (
        read_train_clicks(root, test_days).groupby("product_id", num_partitions=parts).count().to_pandas()
    )
    clicks = clicks.rename(columns={"count()": "product_clicks"})
    out = (products.merge(rows, on="product_id", how="left").merge(hot, on="product_id", how="left")
           .merge(clicks, on="product_id", how="left"))  # fmt: skip
    as_list = lambda x: list(x) if isinstance(x, list | np.ndarray) else []  # noqa: E731 (no row: none)
    return out.assign(
        feature_row=out["feature_row"].fillna(-1).astype(np.int64),
        product_clicks=out["product_clicks"].fillna(0).astype(np.int64),
        hot_queries=out["hot_queries"].map(as_list),
        hot_clicks=out["hot_clicks"].map(as_list),
    )


def _drawn(frame: pd.DataFrame, partitions: int, seed: int) -> pd.DataFrame:
    """The pairs with their plan draws; pairs of products without features in partition ``_NO_FEATURES``
    (counted, then left out)."""
    out = bp.with_draws(frame, partitions, seed)
    return out.assign(part=np.where(out["feature_row"] >= 0, out["part"], _NO_FEATURES))


def _count_parts(frame: pd.DataFrame) -> pd.DataFrame:
    """Pairs per partition in one block (the driver adds them up: O(P) a block)."""
    counts = frame["part"].value_counts()
    return pd.DataFrame({"part": counts.index.to_numpy(np.int64), "n": counts.to_numpy(np.int64)})


def cached_finetune_batches(
    root: str | Path, store: fs.FeatureStore, test_days: int, batches: BatchConfig, text_cfg: TextConfig
) -> tuple[Path, dict]:
    """``build_finetune_batches`` into ``<root>/finetune_batches/<key>/``, reused while the features, the
    batching and the text settings are the same; (directory, its counts)."""
    # The hot-query key names the split and the click log's version: new clicks, new batches.
    blob = json.dumps([LAYOUT, store.manifest.version, hot_queries_path(root, test_days, text_cfg.hot_k).name,
                       dataclasses.asdict(batches), dataclasses.asdict(text_cfg)], sort_keys=True)  # fmt: skip
    out = Path(root).resolve() / BATCHES_DIR / hashlib.sha256(blob.encode()).hexdigest()[:12]
    if (out / DONE).is_file():
        return out, json.loads((out / DONE).read_text())
    stats = build_finetune_batches(root, store, test_days, batches, text_cfg, out)
    file_index(out, sort_column="batch_id")  # the plan's file order, by batch id, stored with the batches
    (out / DONE).write_text(json.dumps(stats))
    return out, stats
