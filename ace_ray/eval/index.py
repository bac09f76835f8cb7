"""FAISS inner-product indexes over L2-normalised product embeddings (so scores are cosine similarities):
building exact and approximate indexes, fixed-shape search, exact-vs-ANN comparison, and persistence for
serving.

Only the API shared by faiss-cpu and faiss-gpu is used; indexes move to a GPU only when asked and one exists.
"""

from __future__ import annotations

import math
import time

import faiss
import numpy as np

from ace_ray.eval.metrics import recall_at_k

KINDS = ("flat", "hnsw", "ivf")


def _check(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or 0 in x.shape:
        raise ValueError(f"{name} must be a non-empty 2-D array [n, d], got shape {x.shape}")
    if x.dtype != np.float32:
        raise ValueError(f"{name} must be float32, got {x.dtype}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"{name} contain {'NaN' if np.isnan(x[row]).any() else 'inf'} at row {row}")
    return np.ascontiguousarray(x)


def build_index(
    emb: np.ndarray,
    kind: str = "hnsw",
    hnsw_m: int = 32,
    ef_search: int = 64,
    ef_construction: int = 80,
    nlist: int = 0,
    nprobe: int = 8,
    use_gpu: bool = False,
) -> faiss.Index:
    """Index float32 embeddings [n, d] for inner-product search.

    Kinds: "flat" (exact), "hnsw" (graph with ``hnsw_m`` links, ``ef_construction``/``ef_search`` beams),
    "ivf" (``nlist`` k-means lists, ``nprobe`` searched; nlist 0 = about 4*sqrt(n), capped so each list has
    the 39 training points faiss asks for). With ``use_gpu`` and a GPU, flat and ivf indexes are moved to
    all GPUs; HNSW has no GPU version and stays on the CPU.
    """
    x = _check(emb, "embeddings")
    n, d = x.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    elif kind == "ivf":
        lists = min(nlist, n) if nlist > 0 else max(1, min(round(4 * math.sqrt(n)), n // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, lists, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = min(nprobe, lists)
        index.train(x)
    else:
        raise ValueError(f"unknown index kind {kind!r}; expected one of: {', '.join(KINDS)}")
    index.add(x)
    if use_gpu and kind != "hnsw" and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores [n, k] float32, ids [n, k] int64), best first. Slots beyond what the index can return
    (k > ntotal, or an ANN index finding fewer) hold id -1 and score -inf."""
    q = _check(queries, "queries")
    if q.shape[1] != index.d:
        raise ValueError(f"queries have dimension {q.shape[1]} but the index has {index.d}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores = np.full((len(q), k), -np.inf, dtype=np.float32)
    ids = np.full((len(q), k), -1, dtype=np.int64)
    found = min(k, index.ntotal)
    if found:
        scores[:, :found], ids[:, :found] = index.search(q, found)
    scores[ids < 0] = -np.inf  # faiss marks missing results with -FLT_MAX
    return scores, ids


def _timed_search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    search(index, queries[:1], k)  # warm-up, so thread-pool start-up is not charged to the first index timed
    start = time.perf_counter()
    _, ids = search(index, queries, k)
    return (time.perf_counter() - start) * 1000 / len(queries), ids


def compare(emb: np.ndarray, queries: np.ndarray, k: int, kind: str = "hnsw", **params) -> dict:
    """Exact (flat) search against the ``kind`` ANN index (built with ``params``) on the same data.

    ``ann_recall`` is the mean over queries of |ANN top-k ∩ exact top-k| / min(k, n); timings are per query,
    over one batched search.
    """
    exact = build_index(emb, "flat")
    ann = build_index(emb, kind, **params)
    # Only searching is timed: build time is excluded.
    exact_ms, exact_ids = _timed_search(exact, queries, k)
    ann_ms, ann_ids = _timed_search(ann, queries, k)
    found = min(k, exact.ntotal)
    recall = recall_at_k(ann_ids[:, :found], list(exact_ids[:, :found]), ks=(found,))[f"recall@{found}"]
    return {
        "ann_recall": recall,
        "exact_ms_per_query": exact_ms,
        "ann_ms_per_query": ann_ms,
        "speedup": exact_ms / ann_ms,
        "exact_ids": exact_ids,
        "ann_ids": ann_ids,
    }


def save_index(index: faiss.Index, path) -> None:
    """Write ``index`` to ``path`` (a GPU index is copied back to the CPU first)."""
    if faiss.get_num_gpus() > 0:
        index = faiss.index_gpu_to_cpu(index)
    faiss.write_index(index, str(path))


def load_index(path) -> faiss.Index:
    """Read an index written by :func:`save_index` (on the CPU)."""
    return faiss.read_index(str(path))
