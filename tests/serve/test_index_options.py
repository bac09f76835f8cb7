"""Index-job options without Ray: where the embedding actors run (GPU or CPU), IVF-PQ with re-ranking, and
search-time ANN parameters."""

from __future__ import annotations

import numpy as np
import pytest

from ace_ray.serve import index_dir
from ace_ray.serve.index_job import StreamingIndex, embed_plan
from ace_ray.serve.settings import IndexSettings, SettingsError


@pytest.mark.parametrize(
    "cluster, settings, want",
    [
        ({"CPU": 8.0}, {}, ("cpu", 4, 0)),
        ({"CPU": 8.0}, {"actors": 3}, ("cpu", 3, 0)),
        ({"CPU": 1.0}, {}, ("cpu", 1, 0)),
        ({"CPU": 16.0, "GPU": 2.0}, {}, ("cuda", 2, 1)),  # one actor per GPU, one GPU each
        ({"CPU": 16.0, "GPU": 2.0}, {"actors": 8}, ("cuda", 2, 1)),  # never more actors than GPUs
        ({"CPU": 16.0, "GPU": 4.0}, {"actors": 1}, ("cuda", 1, 1)),
        ({"CPU": 16.0, "GPU": 2.0}, {"device": "cpu"}, ("cpu", 8, 0)),
        ({"CPU": 16.0, "GPU": 0.5}, {}, ("cpu", 8, 0)),  # a fraction of a GPU is not one GPU per actor
    ],
)
def test_embed_plan_takes_one_gpu_per_actor_where_the_cluster_has_gpus(cluster, settings, want):
    plan = embed_plan(cluster, IndexSettings(**settings))
    assert (plan.device, plan.actors, plan.num_gpus) == want


def test_embed_plan_refuses_cuda_without_gpus():
    with pytest.raises(SettingsError, match="no GPU"):
        embed_plan({"CPU": 4.0}, IndexSettings(device="cuda"))
    with pytest.raises(SettingsError, match="refine"):
        IndexSettings(refine="pq")


def _clustered(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, d))[rng.integers(0, 64, n)] + rng.normal(0, 0.5, (n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_ivfpq_with_reranking_lifts_recall_and_reconstructs_exact_vectors(tmp_path):
    from ace_ray.eval import index as faiss_index

    x, q = _clustered(20_000), _clustered(50, seed=1)
    _, want = faiss_index.search(faiss_index.build_index(x, "flat"), q, 20)
    recall = {}
    for refine in ("none", "flat", "sq8"):
        cfg = IndexSettings(kind="ivfpq", pq_m=4, nprobe=16, refine=refine, k_factor=8, train_size=10_000)
        built = StreamingIndex("ivfpq", len(x), cfg)
        for chunk in np.array_split(x, 4):
            built.add(chunk)
        index = built.finish()
        faiss_index.save_index(index, tmp_path / f"{refine}.faiss")
        index = faiss_index.load_index(tmp_path / f"{refine}.faiss")
        assert index_dir.set_search_params(index)["nprobe"] == 16
        _, got = faiss_index.search(index, q, 20)
        recall[refine] = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(got, want, strict=True)])
        if refine == "flat":
            assert index_dir.set_search_params(index, k_factor=2, nprobe=8) == {"nprobe": 8, "k_factor": 2}
            np.testing.assert_array_equal(index.reconstruct(5), x[5])  # /similar gets the exact vector
    assert recall["flat"] > recall["none"] + 0.2 and recall["flat"] >= 0.85, recall
    assert recall["sq8"] > recall["none"] + 0.2, recall


def test_category_search_within_a_reranked_ivfpq_index():
    from ace_ray.serve.deployments import ProductIndex

    x = _clustered(12_000)
    cfg = IndexSettings(kind="ivfpq", pq_m=4, nprobe=8, refine="flat", train_size=10_000)
    built = StreamingIndex("ivfpq", len(x), cfg)
    built.add(x)
    rows = np.arange(0, len(x), 7)
    scores, ids = ProductIndex.func_or_class._search_within(built.finish(), x[rows[:1]], 10, rows)
    assert set(ids[0]) <= set(rows) and ids[0][0] == rows[0]
    assert scores[0][0] == pytest.approx(1.0, abs=1e-5)


def test_hnsw_ef_search_is_set_and_reported():
    from ace_ray.eval import index as faiss_index

    index = faiss_index.build_index(_clustered(2000), "hnsw", ef_search=16)
    assert index_dir.set_search_params(index) == {"ef_search": 16}
    assert index_dir.set_search_params(index, ef_search=300, nprobe=4) == {"ef_search": 300}
    assert index_dir.set_search_params(faiss_index.build_index(_clustered(100), "flat"), ef_search=3) == {}
