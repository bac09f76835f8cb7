"""Retrieval metrics against naive loop references and hand-computed cases, plus their input checks."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest

from ace_ray.eval.metrics import cold_gauc, frequency_band, gauc, mrr, ndcg_at_k, per_query, recall_at_k

SEEDS = range(6)


# ------------------------------------------------------------------------------------------- references


def naive_auc(labels, scores) -> float:
    pos = [s for y, s in zip(labels, scores, strict=True) if y == 1]
    neg = [s for y, s in zip(labels, scores, strict=True) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def naive_gauc(sessions, labels, scores) -> dict:
    groups = defaultdict(list)
    for s, y, x in zip(sessions, labels, scores, strict=True):
        groups[s].append((y, x))
    total = weight = 0.0
    used = skipped = 0
    for rows in groups.values():
        ys = [y for y, _ in rows]
        if len(set(ys)) < 2:
            skipped += 1
            continue
        used += 1
        total += len(rows) * naive_auc(ys, [x for _, x in rows])
        weight += len(rows)
    return {"gauc": total / weight if weight else float("nan"), "sessions": used, "skipped_sessions": skipped}


def naive_recall(ranking, target, k) -> float:
    return len(set(ranking[:k]) - {-1} & set(target)) / len(set(target))


def naive_rr(ranking, target) -> float:
    for i, p in enumerate(ranking):
        if p in set(target):
            return 1.0 / (i + 1)
    return 0.0


def naive_ndcg(ranking, target, k) -> float:
    rel = [1 if p in set(target) else 0 for p in ranking[:k]]
    dcg = sum(r / math.log2(i + 2) for i, r in enumerate(rel))
    idcg = sum(1 / math.log2(i + 2) for i in range(min(len(set(target)), k)))
    return dcg / idcg


def random_rankings(seed: int, n_queries: int = 40, K: int = 20, n_products: int = 60):
    """Rankings without repeats, some padded with -1; targets partly outside every ranking (ids >= 1000)."""
    rng = np.random.default_rng(seed)
    retrieved = np.stack([rng.permutation(n_products)[:K] for _ in range(n_queries)])
    for q in range(n_queries):
        if rng.random() < 0.3:
            retrieved[q, rng.integers(1, K) :] = -1
    targets = []
    for _ in range(n_queries):
        t = rng.choice(n_products, size=rng.integers(1, 6), replace=False)
        if rng.random() < 0.3:
            t = np.append(t, 1000 + rng.integers(0, 5, size=2))
        if rng.random() < 0.15:
            t = 1000 + np.arange(rng.integers(1, 3))
        targets.append(t)
    return retrieved, targets


# ------------------------------------------------------------------------------------------------- GAUC


def random_impressions(rng, n: int = 400):
    """Sessions, click labels and coarse scores (many ties) of ``n`` random impressions."""
    sessions = rng.integers(0, 50, size=n)
    labels = (rng.random(n) < 0.3).astype(int)
    return sessions, labels, rng.integers(0, 5, size=n) / 4


@pytest.mark.parametrize("seed", SEEDS)
def test_gauc_matches_pairwise_reference(seed):
    sessions, labels, scores = random_impressions(np.random.default_rng(seed))
    labels[sessions % 7 == 0] = 0  # some one-class sessions
    got = gauc(sessions, labels, scores)
    want = naive_gauc(sessions, labels, scores)
    assert got["sessions"] == want["sessions"] and got["skipped_sessions"] == want["skipped_sessions"]
    assert got["skipped_sessions"] > 0
    assert got["gauc"] == pytest.approx(want["gauc"], abs=1e-12)


def test_gauc_hand_computed():
    sessions = ["a", "a", "a", "b", "b", "c", "c"]
    labels = [1, 0, 0, 0, 1, 1, 1]
    scores = [0.9, 0.5, 0.9, 0.2, 0.1, 0.3, 0.4]
    # a: 1 win + 1 tie over 2 pairs = 0.75 (3 impressions); b: 0.0 (2 impressions); c: one class, skipped
    assert gauc(sessions, labels, scores) == {
        "gauc": pytest.approx(0.45),
        "sessions": 2,
        "skipped_sessions": 1,
    }
    assert gauc([1, 1], [1, 0], [0.5, 0.5])["gauc"] == 0.5


def test_gauc_no_usable_session_is_nan():
    out = gauc([1, 1, 2], [0, 0, 1], [0.1, 0.2, 0.3])
    assert math.isnan(out["gauc"]) and out["sessions"] == 0 and out["skipped_sessions"] == 2


def test_gauc_rejects_bad_input():
    with pytest.raises(ValueError, match=r"equal lengths.*'scores': 2"):
        gauc([1, 1, 2], [0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="labels must be 1-D"):
        gauc([1, 1], [[0, 1]], [0.1, 0.2])
    with pytest.raises(ValueError, match="binary"):
        gauc([1, 1], [0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN or inf at index 1"):
        gauc([1, 1], [0, 1], [0.1, np.nan])


def naive_cold_gauc(sessions, labels, scores, cold, among_cold: bool) -> float:
    """Each session's clicked cold impressions against its unclicked ones (cold only if ``among_cold``),
    pair by pair, weighted by how many impressions take part."""
    total = weight = 0.0
    for sid in set(sessions):
        rows = [(y, x, c) for s, y, x, c in zip(sessions, labels, scores, cold, strict=True) if s == sid]
        pos = [x for y, x, c in rows if y == 1 and c]
        neg = [x for y, x, c in rows if y == 0 and (c or not among_cold)]
        if pos and neg:
            wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
            total += (len(pos) + len(neg)) * wins / (len(pos) * len(neg))
            weight += len(pos) + len(neg)
    return total / weight if weight else float("nan")


@pytest.mark.parametrize("seed", SEEDS)
def test_cold_gauc_matches_pairwise_reference_and_ignores_warm_clicks(seed):
    rng = np.random.default_rng(seed)
    sessions, labels, scores = random_impressions(rng)
    cold = rng.random(len(labels)) < 0.3
    got = cold_gauc(sessions, labels, scores, cold)
    assert got["cold_gauc"] == pytest.approx(
        naive_cold_gauc(sessions, labels, scores, cold, False), abs=1e-12
    )
    assert got["cold_among_cold_gauc"] == pytest.approx(
        naive_cold_gauc(sessions, labels, scores, cold, True), abs=1e-12
    )
    # Raising every cold product's score helps it against the warm impressions, not among the cold ones;
    # warm clicks take no part in either.
    boosted = cold_gauc(sessions, labels, scores + 10.0 * cold, cold)
    assert boosted["cold_gauc"] > got["cold_gauc"]
    assert boosted["cold_among_cold_gauc"] == pytest.approx(got["cold_among_cold_gauc"], abs=1e-12)
    warm_click = (labels == 1) & ~cold
    assert cold_gauc(sessions, labels, np.where(warm_click, -99.0, scores), cold) == pytest.approx(got)


def test_cold_gauc_hand_computed_and_rejects_bad_input():
    # s1: the cold click beats one unclicked warm and loses to one unclicked cold; s2 has no cold click.
    out = cold_gauc(
        [1, 1, 1, 2, 2], [1, 0, 0, 1, 0], [0.5, 0.2, 0.9, 0.9, 0.1], np.array([1, 0, 1, 0, 1], bool)
    )
    assert out == {"cold_gauc": pytest.approx(0.5), "cold_among_cold_gauc": pytest.approx(0.0)}
    assert math.isnan(cold_gauc([1, 1], [1, 0], [0.3, 0.2], np.array([False, False]))["cold_gauc"])
    with pytest.raises(ValueError, match="cold must be a bool array"):
        cold_gauc([1, 1], [1, 0], [0.3, 0.2], np.array([1, 0]))


# ------------------------------------------------------------------------------------- ranking metrics


@pytest.mark.parametrize("seed", SEEDS)
def test_ranking_metrics_match_references(seed):
    retrieved, targets = random_rankings(seed)
    rows = list(zip(retrieved.tolist(), targets, strict=True))
    ks = (1, 5, 20)
    got = recall_at_k(retrieved, targets, ks=ks)
    for k in ks:
        assert got[f"recall@{k}"] == pytest.approx(np.mean([naive_recall(r, t, k) for r, t in rows]))
    assert mrr(retrieved, targets) == pytest.approx(np.mean([naive_rr(r, t) for r, t in rows]))
    for k in (3, 10):
        assert ndcg_at_k(retrieved, targets, k=k) == pytest.approx(
            np.mean([naive_ndcg(r, t, k) for r, t in rows])
        )

    table = per_query(retrieved, targets, ks=ks)
    assert list(table.columns) == ["recall@1", "recall@5", "recall@20", "rr", "ndcg@10"]
    assert len(table) == len(targets)
    np.testing.assert_allclose(table["rr"], [naive_rr(r, t) for r, t in rows])
    np.testing.assert_allclose(table["ndcg@10"], [naive_ndcg(r, t, 10) for r, t in rows])
    np.testing.assert_allclose(table["recall@5"], [naive_recall(r, t, 5) for r, t in rows])


def test_ranking_metrics_hand_computed():
    retrieved = np.array([[3, 1, -1, 7], [5, 6, 2, 0]])
    targets = [np.array([1, 7, 9, 7]), np.array([8])]  # the repeated 7 counts once
    assert recall_at_k(retrieved, targets, ks=(2, 4)) == {
        "recall@2": pytest.approx(1 / 6),
        "recall@4": pytest.approx(1 / 3),
    }
    assert mrr(retrieved, targets) == pytest.approx(0.25)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(retrieved, targets, k=4) == pytest.approx(dcg / idcg / 2)
    assert ndcg_at_k(retrieved, targets, k=4) == pytest.approx(0.2490946, abs=1e-7)
    assert ndcg_at_k(np.array([[4, 5]]), [[4]], k=2) == 1.0


def test_repeated_product_in_ranking_counts_once():
    retrieved = np.array([[2, 2, 2, 3]])
    table = per_query(retrieved, [[2, 3]], ks=(2, 4), ndcg_k=4)
    assert table.loc[0, "recall@2"] == 0.5 and table.loc[0, "recall@4"] == 1.0
    assert table.loc[0, "ndcg@4"] == pytest.approx((1 + 1 / math.log2(5)) / (1 + 1 / math.log2(3)))


def test_ranking_metrics_reject_bad_input():
    retrieved = np.array([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match="query 1 has no targets"):
        recall_at_k(retrieved, [[1], []], ks=(1,))
    with pytest.raises(ValueError, match="k=10 .* K=3"):
        recall_at_k(retrieved, [[1], [2]], ks=(10,))
    with pytest.raises(ValueError, match="k=10 .* K=3"):
        ndcg_at_k(retrieved, [[1], [2]])
    with pytest.raises(ValueError, match="2 queries but targets has 1"):
        mrr(retrieved, [[1]])
    with pytest.raises(ValueError, match="2-D integer array"):
        mrr(retrieved.astype(float), [[1], [2]])
    with pytest.raises(ValueError, match="non-negative"):
        mrr(retrieved, [[1], [-1]])


# -------------------------------------------------------------------------------------- frequency bands


def naive_band(counts: pd.Series, head_share: float, torso_share: float) -> pd.Series:
    total = counts.sum()
    out, before = {}, 0.0
    for q, c in sorted(counts.items(), key=lambda qc: -qc[1]):  # sorted() is stable: ties keep their order
        share = before / total
        if c == 0 or share >= head_share + torso_share:
            out[q] = "tail"
        else:
            out[q] = "head" if share < head_share else "torso"
        before += c
    return pd.Series(out).reindex(counts.index)


def test_frequency_band_hand_computed():
    counts = pd.Series({"a": 50, "b": 20, "c": 15, "d": 10, "e": 5, "f": 0})
    # mass before each query: a 0, b .5, c .7, d .85, e .95, f 1.0
    assert frequency_band(counts).to_dict() == {
        "a": "head",
        "b": "torso",
        "c": "torso",
        "d": "tail",
        "e": "tail",
        "f": "tail",
    }
    # one dominant query is head on its own; the rest start after 90 % of the mass
    assert frequency_band(pd.Series([90, 5, 5])).tolist() == ["head", "tail", "tail"]
    assert frequency_band(pd.Series([0, 0])).tolist() == ["tail", "tail"]


@pytest.mark.parametrize("seed", SEEDS)
def test_frequency_band_matches_reference(seed):
    rng = np.random.default_rng(seed)
    counts = pd.Series(
        rng.zipf(1.5, size=200).clip(max=10_000) * (rng.random(200) > 0.1),
        index=[f"q{i}" for i in range(200)],
    )
    for shares in [(0.5, 0.3), (0.2, 0.5), (1.0, 0.0)]:
        got = frequency_band(counts, *shares)
        assert got.index.equals(counts.index)
        pd.testing.assert_series_equal(got, naive_band(counts, *shares), check_names=False, check_dtype=False)


def test_frequency_band_rejects_bad_input():
    with pytest.raises(ValueError, match="non-negative"):
        frequency_band(pd.Series([1, -1]))
    with pytest.raises(ValueError, match="head_share"):
        frequency_band(pd.Series([1, 2]), head_share=0.8, torso_share=0.3)
