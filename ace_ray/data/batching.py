"""Mini-batches for fine-tuning (mixed negative sampling, paper 4.3).

Fine-tuning: the (query, clicked product) pairs of the train days are split at random into P partitions;
inside a partition they are ordered by category; batches are cut from that order, so a batch holds mostly
one category (hard in-batch negatives) when P is small and a random mix when P is large. The batch order is
shuffled every epoch. Each written file holds one whole batch; the training workers deal the files among
themselves by an ``EpochPlan`` (``ace_ray.data.plan``), so every worker trains on whole batches and every
pair is seen once per epoch across all workers, in an order fixed by (seed, epoch).

A batch file holds ids and tokens only, and each pair's row in the store's feature table
(``ace_ray.data.feature_table``): the image features are gathered when the batch is read, so they are on
disk once per product, not once per click.

The pretraining stream is in ``pretrain_set``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import ray

from ace_ray.config import BatchConfig, TextConfig
from ace_ray.data import feature_store as fs
from ace_ray.data import text
from ace_ray.data.clicks import clean_clicks
from ace_ray.data.feature_table import for_store
from ace_ray.data.hot_queries import hot_queries_path, read_hot_queries
from ace_ray.data.plan import file_index
from ace_ray.data.validate import load_clean

BATCHES_DIR = "finetune_batches"
DONE = "_done.json"
LAYOUT = 2  # 2: feature rows instead of the features themselves
# ImageNet statistics for raw pixel patches, applied when batches are built (the store keeps uint8).
PIXEL_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
PIXEL_STD = np.array([0.229, 0.224, 0.225], np.float32)


def plan_batches(categories: np.ndarray, partitions: int, batch_size: int, seed: int) -> np.ndarray:
    """Batch id of every pair: P random partitions, category order inside each, cut every ``batch_size``."""
    if partitions < 1 or batch_size < 1:
        raise ValueError(f"partitions ({partitions}) and batch_size ({batch_size}) must be at least 1")
    rng = np.random.default_rng(seed)
    n = len(categories)
    part = rng.integers(0, partitions, n)
    codes, uniques = pd.factorize(np.asarray(categories))
    cat_rank = rng.permutation(len(uniques))[codes]  # category order is arbitrary, not alphabetical
    order = np.lexsort((rng.random(n), cat_rank, part))
    batch = np.empty(n, np.int64)
    batch[order] = np.arange(n) // batch_size
    return batch


def normalise_pixels(pixels: np.ndarray) -> np.ndarray:
    """uint8 patches [..., patch*patch*3] (RGB, channel last) -> float32 normalised like ImageNet."""
    x = pixels.astype(np.float32).reshape(*pixels.shape[:-1], -1, 3) / 255.0
    return ((x - PIXEL_MEAN) / PIXEL_STD).reshape(pixels.shape)


def finetune_pairs(root: str | Path, test_days: int,
                   clean: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> pd.DataFrame:  # fmt: skip
    """(pair_id, query, product_id, category) for every usable train-day click (``clean``: the catalogue's
    ``load_clean`` when the caller already holds it)."""
    clean = clean if clean is not None else load_clean(root)
    products = clean[0]
    clicks = clean_clicks(root, test_days, clean)
    pairs = clicks.merge(products[["product_id", "category"]], on="product_id", how="inner")
    pairs = pairs.sort_values(["day", "session_id", "product_id"], kind="stable").reset_index(drop=True)
    return pairs.assign(pair_id=np.arange(len(pairs)))[["pair_id", "query", "product_id", "category"]]


def _assemble(group: pd.DataFrame, cfg: TextConfig) -> pd.DataFrame:
    """One batch's rows -> one row of stacked arrays (tokens, the products' feature-table rows)."""
    g = group.sort_values("pair_id")
    q = text.encode(g["query"].tolist(), cfg.max_query, cfg.tokenizer)
    t = text.encode(g["title"].tolist(), cfg.max_title, cfg.tokenizer)
    h = text.encode([text.join_hot_queries(x) for x in g["hot_queries"]], cfg.max_hot, cfg.tokenizer)
    row = {
        "batch_id": int(g["batch_id"].iloc[0]),
        "pair_id": g["pair_id"].to_numpy(),
        "product_id": g["product_id"].astype(str).tolist(),
        "category": g["category"].astype(str).tolist(),
        "query_ids": q["input_ids"], "query_mask": q["attention_mask"],
        "title_ids": t["input_ids"], "title_mask": t["attention_mask"],
        "hot_ids": h["input_ids"], "hot_mask": h["attention_mask"],
        "feature_row": g["row"].to_numpy(np.int64),
    }  # fmt: skip
    return pd.DataFrame([row])


def build_finetune_batches(
    root: str | Path,
    store: fs.FeatureStore,
    test_days: int,
    batches: BatchConfig,
    text_cfg: TextConfig,
    out: str | Path,
) -> dict:
    """Plan the batches, join pairs with their feature-table rows and hot queries, and write one row per
    batch to ``out``. Pairs of products without features are left out (counted in the result).

    The join is done once; every epoch then reads the written batches (see ``ace_ray.data.plan``).
    """
    root = Path(root).resolve()
    clean = load_clean(root)
    products = clean[0]
    pairs = finetune_pairs(root, test_days, clean)
    pairs["batch_id"] = plan_batches(pairs["category"].to_numpy(), batches.partitions, batches.batch_size,
                                     batches.seed)  # fmt: skip
    pairs = pairs.merge(products[["product_id", "title"]], on="product_id")
    rows = for_store(store).ids
    hot = ray.data.from_pandas(read_hot_queries(root, test_days, text_cfg.hot_k).drop(columns=["hot_clicks"]))
    n_parts = max(1, min(16, len(pairs) // 2000))
    out = Path(out)
    if out.exists():
        for f in out.glob("*"):
            f.unlink()
    (
        ray.data.from_pandas(pairs)
        .join(ray.data.from_pandas(rows), join_type="inner", num_partitions=n_parts, on=("product_id",))
        .join(hot, join_type="left_outer", num_partitions=n_parts, on=("product_id",))
        # Ray's default of 200 reduce tasks stays: with fewer, one task writes batches of different lengths
        # (the last of a partition is short) and Parquet cannot unify their pair_id tensor types.
        .groupby("batch_id")
        .map_groups(lambda g: _assemble(g, text_cfg), batch_format="pandas")
        # One batch per file, so shuffling the files shuffles the batch order exactly.
        .write_parquet(str(out), max_rows_per_file=1)
    )
    featurised = set(rows["product_id"])
    return {"pairs": len(pairs), "pairs_with_features": int(pairs["product_id"].isin(featurised).sum()),
            "batches": int(pairs["batch_id"].max() + 1) if len(pairs) else 0}  # fmt: skip


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
