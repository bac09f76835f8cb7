"""The quickstart's last stage: start the search service, send a few real HTTP queries (hot ones from the
cache and a tail one through the encoder), print the top results, and shut the service down."""

from __future__ import annotations

import socket
from pathlib import Path

import pandas as pd

from ace_ray.serve.index_dir import HOT_FILE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo(model_dir: str | Path, index: str | Path, queries: int = 3, k: int = 5) -> dict:
    """Serve ``index`` with ``model_dir``, query it over HTTP, print the answers; returns them."""
    import requests
    from ray import serve

    from ace_ray.serve.app import start

    index = Path(index)
    asked = pd.read_parquet(index / HOT_FILE)["key"].head(queries).tolist() + [
        "red leather bag for the office"
    ]
    url = start({"index": str(index), "model": str(model_dir)}, port=_free_port())
    out = {}
    try:
        health = requests.get(f"{url}/healthz", timeout=120).json()
        print(f"search service at {url}: model {health['model']['hash']} ({health['model']['query_backend']}), "
              f"index {health['index']['version']}, {health['catalogue_size']:,} products")  # fmt: skip
        for q in asked:
            r = requests.post(f"{url}/search", json={"query": q, "k": k}, timeout=120)
            r.raise_for_status()
            body = out[q] = r.json()
            print(
                f'\nPOST /search {{"query": "{q}", "k": {k}}} -> {"cached" if body["cached"] else "encoded"}'
            )
            for i, p in enumerate(body["results"], 1):
                print(f"  {i}. {p['score']:.3f}  {p['product_id']}  [{p['category']}]  {p['title'][:70]}")
        first = out[asked[0]]["results"][0]["product_id"]
        sim = requests.post(f"{url}/similar", json={"product_id": first, "k": 3}, timeout=120).json()
        print(f'\nPOST /similar {{"product_id": "{first}"}} -> {[p["product_id"] for p in sim["results"]]}')
    finally:
        serve.shutdown()
    print(
        f"\nkeep it running: ace-ray serve --index {index} --model {model_dir}  (then curl, see README 'Serving')"
    )
    return out
