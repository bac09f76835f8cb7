"""The pretraining stream (paper 2.2): products as (title tokens, RoI patch features, pixel patches), with
(title, image) pairs made inside each batch: every product once with its own image (label 1) and
``negatives`` times with another product's image from the same batch (label 0).

Pairing inside the batch means the stream carries each product's image once per epoch instead of
``1 + negatives`` times; the negatives are still a fresh shuffle every batch. The products are split once,
by a hash of their id, into a training part and a held-out part (for TIP accuracy and MLM loss on pairs
training never saw), and written as Parquet files of about ``ROWS_PER_FILE`` products that the training workers
deal among themselves in a new order every epoch (``ace_ray.data.plan``). The files hold ids, title tokens
and each product's row in the store's feature table (``ace_ray.data.feature_table``), not a copy of its
features: those are gathered when a batch is read.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import ray

from ace_ray.config import TextConfig
from ace_ray.data import feature_store as fs
from ace_ray.data import text
from ace_ray.data.feature_table import for_store
from ace_ray.data.plan import file_index
from ace_ray.data.validate import load_clean_products

SETS_DIR = "pretrain_sets"
DONE = "_done.json"
ROWS_PER_FILE = 64  # products per file on average: the unit the workers deal out


def pair_in_batch(
    n: int, negatives: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(title index, image index, label) for ``n`` products: each title with its own image (1) and with
    ``negatives`` other images of the batch (0), never its own; pairs in a random order."""
    if n < 2 and negatives:
        raise ValueError("negative pairs need at least two products in a batch")
    idx = np.arange(n)
    titles, images, labels = [idx], [idx], [np.ones(n, np.float32)]
    for _ in range(negatives):
        # A shift in 1..n-1 of each index lands on another product.
        titles.append(idx)
        images.append((idx + rng.integers(1, n, n)) % n)
        labels.append(np.zeros(n, np.float32))
    order = rng.permutation(n * (1 + negatives))
    return np.concatenate(titles)[order], np.concatenate(images)[order], np.concatenate(labels)[order]


def is_held_out(product_ids: pd.Series, share: float, seed: int) -> np.ndarray:
    """A stable split by a hash of the product id (the same product is always on the same side)."""
    h = np.array([zlib.crc32(f"{seed}:{p}".encode()) for p in product_ids.astype(str)], np.uint64)
    return (h % 10_000) < int(round(share * 10_000))


# 2: products bucketed by a hash of their id, sorted inside each file (the same files every build);
# 3: feature-table rows instead of the features
LAYOUT = 3


def _key(store: fs.FeatureStore, cfg: TextConfig, holdout: float, seed: int) -> str:
    blob = json.dumps([store.manifest.version, cfg.tokenizer, cfg.max_title, holdout, seed, LAYOUT]).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def build_pretrain_set(root: str | Path, store: fs.FeatureStore, cfg: TextConfig, holdout: float,
                       seed: int) -> Path:  # fmt: skip
    """Write (or reuse) ``<root>/pretrain_sets/<key>/{split=train,split=holdout}/`` with one row per
    featurised product: product_id, title_ids, title_mask, feature_row."""
    root = Path(root).resolve()
    out = root / SETS_DIR / _key(store, cfg, holdout, seed)
    if (out / DONE).is_file():
        return out
    products = load_clean_products(root)
    # Files are buckets by a hash of the product id, each sorted by id, so every build of the set holds the
    # same files with the same rows whatever the join's scheduling did, and a run's data order (which
    # deals whole files, see ace_ray.data.plan) is the same from one build to the next.
    buckets = max(1, -(-len(products) // ROWS_PER_FILE))
    titles = products[["product_id", "title"]].assign(
        split=np.where(is_held_out(products["product_id"], holdout, seed), "holdout", "train"),
        bucket=[zlib.crc32(str(p).encode()) % buckets for p in products["product_id"]],
    )
    feats = ray.data.from_pandas(for_store(store).ids.rename(columns={"row": "feature_row"}))

    def tokenize(batch: pd.DataFrame) -> pd.DataFrame:
        t = text.encode(batch["title"].tolist(), cfg.max_title, cfg.tokenizer)
        return batch.drop(columns=["title"]).assign(
            title_ids=list(t["input_ids"]), title_mask=list(t["attention_mask"])
        )

    n_parts = max(1, min(16, len(titles) // 4000))
    (
        ray.data.from_pandas(titles)
        .join(feats, join_type="inner", num_partitions=n_parts, on=("product_id",))
        .groupby("bucket", num_partitions=n_parts)  # Ray's default is 200 reduce tasks, whatever the size
        .map_groups(lambda g: tokenize(g.sort_values("product_id")), batch_format="pandas")
        .write_parquet(str(out), partition_cols=["split", "bucket"])
    )
    counts = {s: int(pd.read_parquet(out / f"split={s}", columns=["product_id"]).shape[0])
              if (out / f"split={s}").is_dir() else 0 for s in ("train", "holdout")}  # fmt: skip
    if (out / "split=train").is_dir():
        file_index(out / "split=train")  # the plan's file order, stored with the set
    (out / DONE).write_text(json.dumps({"store": str(store.path), **counts}))
    return out


def set_counts(path: str | Path) -> dict:
    """Products per split of a written pretraining set."""
    return json.loads((Path(path) / DONE).read_text())


def read_holdout(path: str | Path, limit: int) -> pd.DataFrame:
    """Up to ``limit`` held-out products (small; evaluated in one process)."""
    part = Path(path) / "split=holdout"
    if not part.is_dir():
        return pd.DataFrame()
    return pd.read_parquet(part).sort_values("product_id").head(limit).reset_index(drop=True)
