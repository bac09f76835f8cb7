"""Retrieval metrics: group AUC over query sessions, recall@k, MRR and nDCG over ranked product lists,
and head/torso/tail frequency bands for breaking them down.

Everything is vectorised numpy/pandas, so ~100k impressions or ~10k queries take milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

BANDS = ("head", "torso", "tail")


def gauc(session_ids, labels, scores) -> dict:
    """Group AUC: the AUC of ``scores`` against binary ``labels`` (clicked = 1) within each session, ties
    counted as 0.5, averaged with each session weighted by its number of impressions.

    Sessions with a single class are skipped. Returns ``{"gauc", "sessions", "skipped_sessions"}``; gauc is
    NaN when no session has both a click and a non-click.
    """
    arrays = {
        "session_ids": np.asarray(session_ids),
        "labels": np.asarray(labels),
        "scores": np.asarray(scores),
    }
    for name, a in arrays.items():
        if a.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"session_ids, labels and scores must have equal lengths, got {lengths}")
    y = arrays["labels"]
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be binary (0 or 1)")
    s = arrays["scores"].astype(np.float64)
    if not np.isfinite(s).all():
        raise ValueError(f"scores contain NaN or inf at index {int(np.argmin(np.isfinite(s)))}")
    codes, _ = pd.factorize(arrays["session_ids"])
    if (codes < 0).any():
        raise ValueError("session_ids contain missing values")

    # Mann-Whitney: AUC = (rank sum of positives - P(P+1)/2) / (P*N), with average ranks for ties.
    ranks = pd.Series(s).groupby(codes).rank(method="average").to_numpy()
    y = y.astype(np.float64)
    n = np.bincount(codes).astype(np.float64)
    pos = np.bincount(codes, weights=y)
    rank_pos = np.bincount(codes, weights=ranks * y)
    neg = n - pos
    ok = (pos > 0) & (neg > 0)
    auc = (rank_pos[ok] - pos[ok] * (pos[ok] + 1) / 2) / (pos[ok] * neg[ok])
    return {
        "gauc": float(np.average(auc, weights=n[ok])) if ok.any() else float("nan"),
        "sessions": int(ok.sum()),
        "skipped_sessions": int((~ok).sum()),
    }


def cold_gauc(session_ids, labels, scores, cold) -> dict:
    """GAUC of the clicks on cold products (``cold``: bool per impression, the product had no train-day
    clicks). ``cold_gauc``: within each session, every clicked cold product against all of the session's
    unclicked impressions, so it also says where new products sit against known ones (what the cold Recall@K
    mixes too); ``cold_among_cold_gauc``: against the unclicked cold impressions only. Sessions without a
    clicked cold product (or, for the second, an unclicked one) are skipped; NaN when none is left."""
    y = np.asarray(labels)
    c = np.asarray(cold)
    if c.dtype != bool or c.shape != y.shape:
        raise ValueError(f"cold must be a bool array shaped like labels {y.shape}, got {c.dtype} {c.shape}")
    s, x = np.asarray(session_ids), np.asarray(scores)
    whole = (y == 0) | c  # warm clicks are not what this measures, so they leave the sessions
    return {
        "cold_gauc": gauc(s[whole], y[whole], x[whole])["gauc"],
        "cold_among_cold_gauc": gauc(s[c], y[c], x[c])["gauc"],
    }


def _hits(retrieved, targets: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Relevance matrix [n_queries, K] (True where the ranked product is a target, counting each product
    once) and the number of distinct targets per query."""
    ret = np.asarray(retrieved)
    if ret.ndim != 2 or ret.shape[1] == 0 or not np.issubdtype(ret.dtype, np.integer):
        raise ValueError(
            f"retrieved must be a 2-D integer array [n_queries, K>=1], got {ret.dtype} {ret.shape}"
        )
    if len(targets) != ret.shape[0]:
        raise ValueError(f"retrieved has {ret.shape[0]} queries but targets has {len(targets)}")
    if not len(targets):
        raise ValueError("no queries to evaluate")
    sets = [np.unique(np.asarray(t, dtype=np.int64)) for t in targets]
    n_rel = np.array([t.size for t in sets])
    if (n_rel == 0).any():
        raise ValueError(f"query {int(np.argmin(n_rel))} has no targets")
    flat = np.concatenate(sets)
    if flat.min() < 0:
        raise ValueError("target ids must be non-negative")

    # Encode (query, product) pairs as one int64 so a single isin tests every row against its own targets.
    ret = ret.astype(np.int64)
    stride = max(int(flat.max()), int(ret.max())) + 1
    keys = np.arange(len(ret))[:, None] * stride + ret
    hits = (ret >= 0) & np.isin(keys, np.repeat(np.arange(len(ret)), n_rel) * stride + flat)
    # A product repeated in one ranking counts at its first position only.
    order = np.argsort(ret, axis=1, kind="stable")
    sorted_ids = np.take_along_axis(ret, order, axis=1)
    first = np.ones_like(hits)
    first[:, 1:] = sorted_ids[:, 1:] != sorted_ids[:, :-1]
    np.put_along_axis(hits, order, np.take_along_axis(hits, order, axis=1) & first, axis=1)
    return hits, n_rel


def _check_k(k: int, hits: np.ndarray) -> None:
    if not 1 <= k <= hits.shape[1]:
        raise ValueError(f"k={k} needs 1 <= k <= K, but retrieved has K={hits.shape[1]} columns")


def _recall(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    _check_k(k, hits)
    return hits[:, :k].sum(axis=1) / n_rel


def _reciprocal_rank(hits: np.ndarray) -> np.ndarray:
    return np.where(hits.any(axis=1), 1.0 / (hits.argmax(axis=1) + 1), 0.0)


def _ndcg(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    _check_k(k, hits)
    discounts = 1.0 / np.log2(np.arange(k) + 2)
    ideal = np.cumsum(discounts)[np.minimum(n_rel, k) - 1]
    return hits[:, :k] @ discounts / ideal


def per_query(
    retrieved, targets: Sequence, ks: Sequence[int] = (10, 50, 100), ndcg_k: int = 10
) -> pd.DataFrame:
    """One row per query with columns ``recall@k`` for each k, ``rr`` (reciprocal rank of the first target,
    0 if none) and ``ndcg@{ndcg_k}``, for grouping by category or frequency band.

    ``retrieved`` [n_queries, K] holds product ids best-first (-1 = no result); ``targets[i]`` the ids
    clicked for query i (must be non-empty).
    """
    hits, n_rel = _hits(retrieved, targets)
    cols = {f"recall@{k}": _recall(hits, n_rel, k) for k in ks}
    cols["rr"] = _reciprocal_rank(hits)
    cols[f"ndcg@{ndcg_k}"] = _ndcg(hits, n_rel, ndcg_k)
    return pd.DataFrame(cols)


def recall_at_k(retrieved, targets: Sequence, ks: Sequence[int] = (10, 50, 100)) -> dict[str, float]:
    """Mean over queries of |top-k ∩ targets| / |targets|, as ``{"recall@k": value}``."""
    hits, n_rel = _hits(retrieved, targets)
    return {f"recall@{k}": float(_recall(hits, n_rel, k).mean()) for k in ks}


def mrr(retrieved, targets: Sequence) -> float:
    """Mean reciprocal rank of the first target in each ranking (0 for queries where none is retrieved)."""
    hits, _ = _hits(retrieved, targets)
    return float(_reciprocal_rank(hits).mean())


def ndcg_at_k(retrieved, targets: Sequence, k: int = 10) -> float:
    """Mean binary nDCG@k: DCG = sum of 1/log2(i+2) over targets at 0-based rank i < k, normalised by the
    DCG of min(|targets|, k) targets ranked first."""
    hits, n_rel = _hits(retrieved, targets)
    return float(_ndcg(hits, n_rel, k).mean())


def frequency_band(counts: pd.Series, head_share: float = 0.5, torso_share: float = 0.3) -> pd.Series:
    """Label each query "head", "torso" or "tail" by its train-day frequency ``counts`` (impressions or
    clicks per query).

    Queries are sorted by count, descending (ties keep their order in ``counts``), and walked through
    accumulating their share of the total count. A query is head if the share accumulated before it is
    below ``head_share`` (so head is the smallest set of top queries covering at least that share), torso if
    it is below ``head_share + torso_share``, and tail otherwise. Queries with count 0 (unseen on train days)
    are always tail. Returns a Series of labels with the index of ``counts``.
    """
    if not (head_share > 0 and torso_share >= 0 and head_share + torso_share <= 1):
        raise ValueError(f"need 0 < head_share, 0 <= torso_share, sum <= 1; got {head_share}, {torso_share}")
    c = counts.to_numpy(dtype=np.float64)
    if np.isnan(c).any() or (c < 0).any():
        raise ValueError("counts must be non-negative and not NaN")
    order = np.argsort(-c, kind="stable")
    total = c.sum()
    before = np.empty_like(c)
    before[order] = (np.cumsum(c[order]) - c[order]) / (total if total > 0 else 1.0)
    band = np.where(before < head_share, 0, np.where(before < head_share + torso_share, 1, 2))
    band[c == 0] = 2
    return pd.Series(np.asarray(BANDS, dtype=object)[band], index=counts.index, name="band")
