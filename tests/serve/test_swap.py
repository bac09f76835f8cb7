"""Swapping the running application's index (user_config, no restart) and refusing another model's."""

from __future__ import annotations

import pandas as pd
import pytest
import requests

from ace_ray.serve.index_dir import HOT_FILE, IndexMismatch
from tests.serve.conftest import variant_index

pytestmark = pytest.mark.ray


def test_hot_swap_keeps_the_replica_and_refuses_another_models_index(service, built_index, tmp_path):
    from ace_ray.serve.app import swap_index

    settings, url = service
    before = requests.get(f"{url}/healthz", timeout=60).json()["index"]
    alien = variant_index(built_index, tmp_path / "alien", model_hash="f" * 16)
    with pytest.raises(IndexMismatch, match="built for model ffff"):
        swap_index(settings, alien)
    hnsw = variant_index(built_index, tmp_path / "swapped-hnsw", kind="hnsw")
    swap_index(settings, hnsw)
    after = requests.get(f"{url}/healthz", timeout=60).json()["index"]
    assert after["version"] == "swapped-hnsw" and after["kind"] == "hnsw"
    assert after["pid"] == before["pid"]  # reconfigured in place, not restarted
    r = requests.post(f"{url}/search", json={"query": "dress", "k": 4}, timeout=60)
    assert r.status_code == 200 and len(r.json()["results"]) == 4
    # The ingress's hot-query cache follows the swap: a hot query is answered from the new version's cache
    # and index together, and /healthz reports the same version for both.
    hot = pd.read_parquet(hnsw / HOT_FILE)["key"].iloc[0]
    r = requests.post(f"{url}/search", json={"query": hot, "k": 4}, timeout=60).json()
    assert r["cached"] is True and r["index_version"] == "swapped-hnsw"
    health = requests.get(f"{url}/healthz", timeout=60).json()
    assert health["cache"]["index_version"] == health["index"]["version"] == "swapped-hnsw"
    swap_index(settings, built_index)  # back, for tests that run after this one
