"""The ONNX export of the query tower against PyTorch: same embeddings, same top 100 products."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.ray


def test_onnx_query_tower_retrieves_the_same_top_100_as_pytorch(served_model, built_index, tmp_path):
    from ace_ray.data.clicks import clean_clicks
    from ace_ray.eval import index as faiss_index
    from ace_ray.serve.index_dir import INDEX_FILE
    from ace_ray.serve.query_tower import OnnxQueryEncoder, TorchQueryEncoder

    _, root, _, model = served_model
    queries = sorted(set(clean_clicks(root, 1)["query"]))[:60]
    # Odd ones too: longer than max_query (cut), one character, non-ASCII, a batch of one below.
    queries += ["x", "rote schuhe größe 42 für damen", " ".join(["long"] * 200), "日本語のクエリ"]
    torch_enc, onnx_enc = TorchQueryEncoder(model), OnnxQueryEncoder(model, cache_dir=tmp_path)
    want, got = torch_enc.encode(queries), onnx_enc.encode(queries)
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(onnx_enc.encode(queries[:1]), want[:1], atol=1e-4)
    flat = faiss_index.load_index(built_index / INDEX_FILE)
    k = min(100, flat.ntotal)
    _, ids_t = faiss_index.search(flat, want, k)
    _, ids_o = faiss_index.search(flat, got, k)
    same = [set(a) == set(b) for a, b in zip(ids_t, ids_o, strict=True)]
    assert all(same), f"{same.count(False)} of {len(queries)} queries retrieve another top {k}"
