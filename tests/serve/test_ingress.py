"""The ingress's hot-query cache against an index swapped under it (plain class, fake handles): a cached
embedding is only ever searched in the index version it came from, and the cache follows the swap."""

from __future__ import annotations

import asyncio

import numpy as np

from ace_ray.serve.deployments import SearchAPI

# The class as written: Serve's ingress wrapper around it has an async constructor.
Ingress = SearchAPI.func_or_class.__mro__[1]
LIMITS = {"max_k": 100, "max_query_chars": 100, "max_body_bytes": 10_000, "retry_s": 1.0}


class _Method:
    def __init__(self, fn, calls: list, name: str):
        self.fn, self.calls, self.name = fn, calls, name

    def remote(self, *args):
        self.calls.append(self.name)

        async def answer():
            return self.fn(*args)

        return answer()


class FakeIndex:
    """An index serving ``version``; its hot cache maps each hot query to a version-specific vector."""

    def __init__(self, calls: list):
        self.version, self.calls = "v1", calls
        self.search = _Method(self._search, calls, "index.search")
        self.hot_cache = _Method(self._hot, calls, "index.hot_cache")

    def _hot(self):
        emb = np.full((1, 4), 1.0 if self.version == "v1" else 2.0, np.float32)
        return {"version": self.version, "keys": [f"hot {self.version}"], "emb": emb}

    def _search(self, emb, k, category=None, cache_version=None):
        if cache_version is not None and cache_version != self.version:
            return {"stale": self.version}
        return {"results": [{"emb": float(emb[0])}], "index_version": self.version}


def _ingress():
    """An ingress over a fake index and encoder that record their calls; (ingress, index, calls)."""
    calls: list[str] = []
    index = FakeIndex(calls)
    encoder = type("E", (), {"encode": _Method(lambda q: np.zeros(4, np.float32), calls, "encoder.encode")})()
    return Ingress(encoder, index, LIMITS, {}), index, calls


def test_cached_search_is_one_hop_and_never_mixes_a_cache_with_another_index_version():
    api, index, calls = _ingress()

    async def scenario():
        await api._hot()  # what the first request (or the benchmark's warm-up) does once
        calls.clear()
        res, cached = await api._search("hot v1", 5, None)
        assert cached and res["index_version"] == "v1" and calls == ["index.search"]  # one hop
        calls.clear()
        res, cached = await api._search("a tail query", 5, None)
        assert not cached and calls == ["encoder.encode", "index.search"]  # two hops
        index.version = "v2"  # the index swapped under the ingress
        calls.clear()
        res, cached = await api._search("hot v1", 5, None)  # v1's hot query is not hot in v2
        assert not cached and res["index_version"] == "v2"
        assert calls == ["index.search", "index.hot_cache", "encoder.encode", "index.search"]
        assert api.cache.version == "v2"
        res, cached = await api._search("hot v2", 5, None)
        assert cached and res == {"results": [{"emb": 2.0}], "index_version": "v2"}  # v2's own embedding

    asyncio.run(scenario())


def test_a_tail_query_answered_by_a_new_index_version_refreshes_the_cache():
    api, index, calls = _ingress()

    async def scenario():
        await api._hot()
        index.version = "v2"
        _, cached = await api._search("a tail query", 5, None)
        assert not cached
        for _ in range(10):
            await asyncio.sleep(0)
        assert api.cache.version == "v2"

    asyncio.run(scenario())
