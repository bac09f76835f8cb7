"""Each deployment's logic through its plain class (``Deployment.func_or_class``), no Serve involved."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ace_ray.serve import index_dir
from ace_ray.serve.deployments import HotCache, ProductIndex, QueryEncoder
from tests.serve.conftest import variant_index

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def product_index(served_model, built_index):
    _, _, _, model = served_model
    idx = ProductIndex.func_or_class(index_dir.model_hash(model))
    idx.reconfigure({"index_dir": str(built_index)})
    return idx


def test_index_job_wrote_every_featurised_product_and_the_hot_queries(served_model, built_index):
    from ace_ray.data.clicks import clean_clicks

    w, root, store, model = served_model
    m = index_dir.IndexManifest.read(built_index)
    products = pd.read_parquet(built_index / index_dir.PRODUCTS_FILE)
    assert m.products == len(products) == len(store.read(["product_id"]))
    assert set(products["product_id"]) == set(store.read(["product_id"])["product_id"])
    assert m.kind == "flat" and m.model_hash == index_dir.model_hash(model)
    assert m.feature_store == store.manifest.version
    hot = pd.read_parquet(built_index / index_dir.HOT_FILE)
    top = clean_clicks(root, 1)["query"].map(index_dir.query_key).value_counts()
    assert hot["key"].iloc[0] == top.index[0] and int(hot["clicks"].iloc[0]) == int(top.iloc[0])


def test_index_search_ranks_a_product_first_for_its_own_embedding(product_index):
    cur = product_index.current
    row = 7
    res = product_index.search(cur.embedding(row), 5)["results"]
    assert res[0]["product_id"] == cur.products.at[row, "product_id"]
    assert res[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [r["score"] for r in res] == sorted((r["score"] for r in res), reverse=True)


def test_index_category_filter_cache_and_refusals(product_index):
    cur = product_index.current
    cat = cur.products.at[3, "category"]
    res = product_index.search(cur.embedding(3), 1000, cat)["results"]
    assert len(res) == int((cur.products["category"] == cat).sum())
    assert {r["category"] for r in res} == {cat}
    assert product_index.search(cur.embedding(3), 5, "no such category")["field"] == "category"
    cache = product_index.hot_cache()
    assert cache["version"] == cur.version and len(cache["keys"]) == len(cur.hot) == len(cache["emb"])
    hot = HotCache(cache["version"], cache["keys"], cache["emb"])
    assert hot.get(f"  {cache['keys'][0].replace(' ', '   ')}\t") is not None
    assert hot.get("a query nobody ever typed 123") is None
    emb = hot.get(cache["keys"][0])
    assert product_index.search(emb, 3, None, cur.version)["index_version"] == cur.version
    assert product_index.search(emb, 3, None, "another-version") == {"stale": cur.version}
    assert product_index.similar("no-such-id", 3)["status"] == 404
    sim = product_index.similar(cur.products.at[0, "product_id"], 3)["results"]
    assert len(sim) == 3 and cur.products.at[0, "product_id"] not in {r["product_id"] for r in sim}


def test_index_swap_and_refusal_of_another_models_index(served_model, built_index, tmp_path):
    _, _, _, model = served_model
    idx = ProductIndex.func_or_class(index_dir.model_hash(model))
    alien = variant_index(built_index, tmp_path / "alien", model_hash="0" * 16)
    with pytest.raises(index_dir.IndexMismatch, match="built for model 0000"):
        idx.reconfigure({"index_dir": str(alien)})  # nothing served yet: the deployment must fail
    idx.reconfigure({"index_dir": str(built_index)})
    hnsw = variant_index(built_index, tmp_path / "v2-hnsw", kind="hnsw")
    idx.reconfigure({"index_dir": str(hnsw), "ef_search": 64, "warmup": 4})
    assert idx.describe()["version"] == "v2-hnsw" and idx.describe()["kind"] == "hnsw"
    assert idx.describe()["search_params"] == {"ef_search": 64}
    served = idx.current
    idx.reconfigure({"index_dir": str(hnsw), "ef_search": 200})  # new parameters only: set in place
    assert idx.current is served and idx.describe()["search_params"] == {"ef_search": 200}
    idx.reconfigure({"index_dir": str(alien)})  # refused: the current index keeps serving
    d = idx.describe()
    assert d["version"] == "v2-hnsw" and "built for model" in d["rejected"]["error"]


def test_query_encoder_matches_the_towers(served_model):
    from ace_ray.model.towers import encode_query_texts, load_towers

    _, _, _, model = served_model
    towers, info = load_towers(model)
    queries = ["red dress", "leather bag for women", "x"]
    want = encode_query_texts(towers, queries, info["text"])
    for backend in ("torch", "onnx"):
        enc = QueryEncoder.func_or_class(str(model), backend)
        got = np.stack(enc.encode_batch(queries))
        assert enc.info()["backend"] == backend
        np.testing.assert_allclose(got, want, atol=1e-4)
