"""The search application over real HTTP on loopback: search, similar, health, the hot-query cache."""

from __future__ import annotations

import pytest
import requests

pytestmark = pytest.mark.ray


def test_search_ranks_products_and_uses_the_hot_query_cache(service, built_index):
    import pandas as pd

    from ace_ray.serve.index_dir import HOT_FILE

    _, url = service
    hot = pd.read_parquet(built_index / HOT_FILE)["key"].iloc[0]
    r = requests.post(f"{url}/search", json={"query": hot, "k": 5}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["cached"] is True and len(body["results"]) == 5
    health = requests.get(f"{url}/healthz", timeout=60).json()
    assert body["index_version"] == health["index"]["version"] == health["cache"]["index_version"]
    scores = [x["score"] for x in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert {"product_id", "score", "title", "category"} <= set(body["results"][0])
    # The same query in another case/spacing is not a cache key match unless normalised the same way.
    miss = requests.post(f"{url}/search", json={"query": "zzzz unseen query text", "k": 3}, timeout=60).json()
    assert miss["cached"] is False and len(miss["results"]) == 3


def test_category_filter_and_similar(service):
    _, url = service
    health = requests.get(f"{url}/healthz", timeout=60).json()
    assert health["catalogue_size"] > 0 and health["index"]["version"]
    first = requests.post(f"{url}/search", json={"query": "dress", "k": 10}, timeout=60).json()["results"][0]
    r = requests.post(
        f"{url}/search", json={"query": "dress", "k": 10, "category": first["category"]}, timeout=60
    )
    assert r.status_code == 200 and all(x["category"] == first["category"] for x in r.json()["results"])
    sim = requests.post(f"{url}/similar", json={"product_id": first["product_id"], "k": 4}, timeout=60).json()
    assert len(sim["results"]) == 4 and first["product_id"] not in {x["product_id"] for x in sim["results"]}
