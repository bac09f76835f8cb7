"""The mixed-negative batch plan (paper 4.3) as pure functions, so that Ray Data can compute it in pieces.

Every (query, clicked product) pair is named by its row in the click log. Its partition (one of P) and its
place among equals are drawn from a counter-based hash of (seed, row), and a category's place in the order
from a hash of (seed, category), so no draw depends on any other pair: a task that holds any subset of the
pairs draws for them exactly what one pass over all of them would. The plan orders the pairs by
(partition, category, draw, row) and cuts a batch every ``batch_size`` pairs: mostly one category a batch
when P is small, a random mix when P is large.

``plan_batches`` is the whole plan in one call (the reference the Ray Data path is tested against);
``number_partition`` is what one partition's task does once the driver has turned the per-partition counts
(O(P)) into offsets.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_PART_STREAM, _TIE_STREAM = 1, 2


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective, well-mixed uint64 -> uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):  # the wrap-around is the point
        x = np.asarray(x, np.uint64) + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def pair_draws(rows: np.ndarray, partitions: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(partition in [0, P), a uint64 tie-break) of each pair, from (seed, row) alone."""
    if partitions < 1:
        raise ValueError(f"partitions ({partitions}) must be at least 1")
    rows = np.asarray(rows, np.int64).astype(np.uint64)
    part_key, tie_key = (
        _splitmix64(np.uint64(seed) * np.uint64(4) + np.uint64(s)) for s in (_PART_STREAM, _TIE_STREAM)
    )
    part = (_splitmix64(rows ^ part_key) % np.uint64(partitions)).astype(np.int64)
    return part, _splitmix64(rows ^ tie_key)


def category_key(categories, seed: int) -> np.ndarray:
    """Each category's place in the order (uint64), a hash of (seed, name): arbitrary, not alphabetical,
    and the same whichever other categories a task sees."""
    names = pd.Series(categories, dtype=object).astype(str)
    codes, uniques = pd.factorize(names)
    keys = [
        int.from_bytes(hashlib.blake2b(f"{seed}:{u}".encode(), digest_size=8).digest(), "little")
        for u in uniques
    ]
    return np.asarray(keys, np.uint64)[codes] if len(names) else np.zeros(0, np.uint64)


def _keys(frame: pd.DataFrame) -> tuple[np.ndarray, ...]:
    """The plan order inside one partition, as ``np.lexsort`` keys (last = first): category, draw, row."""
    return (frame["row"].to_numpy(), frame["tie"].to_numpy(), frame["category"].astype(str).to_numpy(),
            frame["category_key"].to_numpy())  # fmt: skip


def with_draws(frame: pd.DataFrame, partitions: int, seed: int) -> pd.DataFrame:
    """``frame`` (row, category, ...) plus its pairs' part, tie and category_key columns."""
    part, tie = pair_draws(frame["row"].to_numpy(), partitions, seed)
    return frame.assign(part=part, tie=tie, category_key=category_key(frame["category"], seed))


def number_partition(frame: pd.DataFrame, offset: int, batch_size: int) -> pd.DataFrame:
    """One partition's pairs (with draws) -> the same rows with ``batch_id``: the partition's pairs occupy
    plan positions ``offset, offset + 1, ...`` in plan order, and a batch is every ``batch_size`` positions."""
    if batch_size < 1:
        raise ValueError(f"batch_size ({batch_size}) must be at least 1")
    out = frame.iloc[np.lexsort(_keys(frame))].reset_index(drop=True)
    return out.assign(batch_id=(offset + np.arange(len(out), dtype=np.int64)) // batch_size)


def partition_offsets(counts: dict[int, int]) -> dict[int, int]:
    """Per partition, the plan position of its first pair: the pairs of every lower partition come first."""
    offsets, total = {}, 0
    for part in sorted(counts):
        offsets[part], total = total, total + int(counts[part])
    return offsets


def plan_batches(categories, partitions: int, batch_size: int, seed: int, rows=None) -> np.ndarray:
    """Batch id of every pair (``rows``: the pairs' click-log rows, default 0..n-1): the whole plan in one
    sort, the reference for the partition-by-partition numbering."""
    if partitions < 1 or batch_size < 1:
        raise ValueError(f"partitions ({partitions}) and batch_size ({batch_size}) must be at least 1")
    n = len(categories)
    rows = np.arange(n) if rows is None else np.asarray(rows, np.int64)
    f = with_draws(
        pd.DataFrame({"row": rows, "category": np.asarray(categories, dtype=object)}), partitions, seed
    )
    order = np.lexsort((*_keys(f), f["part"].to_numpy()))  # partitions first, then the order inside
    batch = np.empty(n, np.int64)
    batch[order] = np.arange(n) // batch_size
    return batch
