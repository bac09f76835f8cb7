"""FAISS indexes: exact search against numpy, ANN recall, padding, persistence and input checks."""

from __future__ import annotations

import numpy as np
import pytest

from ace_ray.eval.index import build_index, compare, load_index, save_index, search


def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, d: int = 32, clusters: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    return normalise(centres[rng.integers(0, clusters, size=n)] + 0.4 * rng.normal(size=(n, d)))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered(2000), clustered(200, seed=1)


def test_flat_matches_brute_force(data):
    emb, queries = data
    k = 10
    scores, ids = search(build_index(emb, "flat"), queries, k)
    full = queries @ emb.T
    want_ids = np.argsort(-full, axis=1)[:, :k]
    want_scores = np.take_along_axis(full, want_ids, axis=1)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    # ids are only defined up to ties: compare rows whose top k+1 scores are well separated
    top = -np.sort(-full, axis=1)[:, : k + 1]
    distinct = (np.diff(-top, axis=1) > 1e-5).all(axis=1)
    assert distinct.mean() > 0.8
    np.testing.assert_array_equal(ids[distinct], want_ids[distinct])


@pytest.mark.parametrize(("kind", "weak", "strong"), [("hnsw", {"ef_search": 1, "hnsw_m": 2, "ef_construction": 2}, {}),
                                                        ("ivf", {"nlist": 64, "nprobe": 1}, {"nlist": 64, "nprobe": 64})])  # fmt: skip
def test_ann_recall_against_exact(data, kind, weak, strong):
    emb, queries = data
    out = compare(emb, queries, k=10, kind=kind, **strong)
    # The exact side is brute force; the recall is the overlap of the two top-10 lists, recomputed here.
    full = queries @ emb.T
    top = -np.sort(-full, axis=1)[:, :11]
    clear = (np.diff(-top, axis=1) > 1e-5).all(axis=1)
    np.testing.assert_array_equal(out["exact_ids"][clear], np.argsort(-full, axis=1)[:, :10][clear])
    overlap = np.mean(
        [len(set(a) & set(e)) / 10 for a, e in zip(out["ann_ids"], out["exact_ids"], strict=True)]
    )
    assert out["ann_recall"] == pytest.approx(overlap) and out["ann_recall"] >= 0.9
    # Searching less of the index finds less: the recall measures the index, it is not a constant.
    assert compare(emb, queries, k=10, kind=kind, **weak)["ann_recall"] < out["ann_recall"] - 0.05


def test_compare_flat_is_perfect_and_recall_uses_min_k_n():
    emb = clustered(6)
    out = compare(emb, emb, k=10, kind="flat")
    assert out["ann_recall"] == 1.0
    assert (out["ann_ids"][:, 6:] == -1).all()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_padding_when_k_exceeds_index(kind):
    emb = clustered(5)
    scores, ids = search(build_index(emb, kind, nlist=100), emb, 8)
    assert scores.shape == ids.shape == (5, 8)
    assert (ids[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    assert (ids[:, 0] == np.arange(5)).all()  # every vector finds itself first
    assert (np.sort(ids[:, :5], axis=1) == np.arange(5)).all()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_save_load_round_trip(tmp_path, data, kind):
    emb, queries = data
    index = build_index(emb, kind, ef_search=32, nprobe=4)
    path = tmp_path / f"{kind}.faiss"
    save_index(index, path)
    loaded = load_index(path)
    for before, after in zip(search(index, queries, 20), search(loaded, queries, 20), strict=True):
        np.testing.assert_array_equal(before, after)


def test_bad_input_rejected():
    emb = clustered(10)
    bad = emb.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="embeddings contain NaN at row 3"):
        build_index(bad)
    bad[3, 0] = np.inf
    with pytest.raises(ValueError, match="embeddings contain inf at row 3"):
        build_index(bad, "flat")
    with pytest.raises(ValueError, match="float32, got float64"):
        build_index(emb.astype(np.float64))
    with pytest.raises(ValueError, match=r"2-D array \[n, d\], got shape \(320,\)"):
        build_index(emb.ravel())
    with pytest.raises(ValueError, match="unknown index kind 'pq'; expected one of: flat, hnsw, ivf"):
        build_index(emb, "pq")
    index = build_index(emb, "flat")
    with pytest.raises(ValueError, match="dimension 16 but the index has 32"):
        search(index, emb[:, :16].copy(), 3)
    with pytest.raises(ValueError, match="queries contain NaN at row 0"):
        search(index, np.full((1, 32), np.nan, dtype=np.float32), 3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        search(index, emb, 0)
