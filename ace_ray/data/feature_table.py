"""A feature store's image features as fixed-shape arrays, one row per product, read by row number.

The training streams (pretraining products, fine-tuning batches) carry only ids, tokens and each product's
row here; the features are gathered from these arrays when a micro-batch is read (``ace_ray.data.plan``).
So a product's features are on disk once however many clicks it has, and the arrays are memory-mapped:
the training workers of a node share one copy in the page cache instead of each holding their own.

Layout, beside the store's Parquet parts: ``<store>/table/ids.parquet`` (product_id, row: the store's
featurised products sorted by id), ``patches.npy`` (float16 [rows, grid*grid, feature_dim]) and
``pixels.npy`` (uint8 [rows, pixel patches, patch*patch*3]). The table is built from the store once, in a
staging folder renamed into place when complete (two builders at once: the first rename wins, the other's
copy is dropped), so a reader never sees half of one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ace_ray.data import feature_store as fs

TABLE = "table"
IDS = "ids.parquet"
# Stored column -> (array file, dtype); the names the training tasks ask for.
ARRAYS = {"patches": ("patches.npy", fs.PATCH_DTYPE), "pixels": ("pixels.npy", fs.PIXEL_DTYPE)}
_SOURCE = {"patches": "patch_features", "pixels": "pixels"}


class FeatureTable:
    """The arrays of one store, memory-mapped; ``rows(ids)`` maps product ids to rows, ``gather`` reads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._arrays: dict[str, np.ndarray] = {}

    @property
    def ids(self) -> pd.DataFrame:
        """(product_id, row) of every product in the table."""
        return pd.read_parquet(self.path / IDS)

    def array(self, name: str) -> np.ndarray:
        """The memory-mapped array ``name`` ("patches" or "pixels"), opened on first use."""
        if name not in self._arrays:
            self._arrays[name] = np.load(self.path / ARRAYS[name][0], mmap_mode="r")
        return self._arrays[name]

    def gather(self, rows: np.ndarray, name: str) -> np.ndarray:
        """The features of ``rows`` (any integer shape) as an array of shape ``rows.shape + feature shape``."""
        rows = np.asarray(rows, np.int64)
        arr = self.array(name)
        # Sorted unique reads touch each page once and in file order; then scatter back to the asked order.
        uniq, inverse = np.unique(rows.reshape(-1), return_inverse=True)
        return np.asarray(arr[uniq])[inverse].reshape(*rows.shape, *arr.shape[1:])

    def __getstate__(self):  # memory maps are not pickled: a worker opens its own
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])


def table_path(store: fs.FeatureStore) -> Path:
    return store.path / TABLE


def for_store(store: fs.FeatureStore) -> FeatureTable:
    """The store's feature table, built on first use."""
    path = table_path(store)
    if not (path / IDS).is_file():
        build(store)
    return FeatureTable(path)


def build(store: fs.FeatureStore) -> Path:
    """Write the table of ``store`` part by part (memory stays one Parquet part, whatever the catalogue's
    size) and publish it; returns its path."""
    final = table_path(store)
    staging = store.path / f".{TABLE}.{uuid.uuid4().hex[:8]}.partial"
    staging.mkdir()
    try:
        ids = (
            store.read(columns=[])["product_id"].astype(str).sort_values(kind="stable").reset_index(drop=True)
        )
        if ids.duplicated().any():
            raise ValueError(f"{store.path}: product {ids[ids.duplicated()].iloc[0]!r} has two feature rows")
        row_of = pd.Series(np.arange(len(ids)), index=ids.to_numpy())
        m = store.manifest
        shapes = {"patches": (m.patches, m.feature_dim), "pixels": (m.pixel_patches, m.pixel_dim)}
        out = {
            k: np.lib.format.open_memmap(staging / f, mode="w+", dtype=dt, shape=(len(ids), *shapes[k]))
            for k, (f, dt) in ARRAYS.items()
        }
        for part in store.parts():
            t = pq.read_table(part, columns=["product_id", "status", *_SOURCE.values()]).to_pandas()
            t = t[t["status"] == fs.OK]
            if t.empty:
                continue
            rows = row_of[t["product_id"].astype(str).to_numpy()].to_numpy()
            out["patches"][rows] = m.stack_patches(t["patch_features"])
            out["pixels"][rows] = m.stack_pixels(t["pixels"])
        for a in out.values():
            a.flush()
        del out
        pq.write_table(pa.table({"product_id": ids.to_numpy(), "row": np.arange(len(ids), dtype=np.int64)}),
                       staging / IDS)  # fmt: skip
        try:
            os.rename(staging, final)
        except OSError:  # another builder published first: theirs is the same table
            if not (final / IDS).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
