"""The three deployments of the search application, composed with handles (see ``app.build``):

- ``QueryEncoder``: the query tower (teacher or distilled student, ONNX Runtime or PyTorch), requests
  batched with ``@serve.batch``, autoscaled on ongoing requests.
- ``ProductIndex``: the FAISS index, product table and hot-query cache of one index directory; a new one
  is swapped in with ``user_config`` (``reconfigure``), and one built for another model is refused.
- ``SearchAPI``: the FastAPI ingress (``/search``, ``/similar``, ``/healthz``), holding a copy of the
  served index version's hot-query cache: a hot query costs one handle call (the index search), any other
  two (the encoder, then the index). Cache and index carry their version; a search from a cache of another
  version than the index serves is refused by the index and retried with the new version's cache.
"""

# No `from __future__ import annotations`: FastAPI must see the real Request type through Serve's
# class-based ingress, or it reads `request` as a query parameter.
import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

import faiss
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

from ace_ray.eval import index as faiss_index
from ace_ray.serve import api, index_dir
from ace_ray.serve.index_dir import query_key
from ace_ray.serve.query_tower import load_query_encoder

log = logging.getLogger("ray.serve")


@serve.deployment(name="QueryEncoder")
class QueryEncoder:
    """Query texts -> unit embeddings, in batches."""

    def __init__(self, model_dir: str, backend: str = "auto", threads: int = 1, max_batch_size: int = 16,
                 batch_wait_timeout_s: float = 0.002, warmup: int = 8):  # fmt: skip
        self.encoder = load_query_encoder(model_dir, backend, threads)
        self.model_dir = model_dir
        self.model_hash = index_dir.model_hash(model_dir)
        if hasattr(self.encode, "set_max_batch_size"):  # the plain class (unit tests) has no replica batcher
            self.encode.set_max_batch_size(max_batch_size)
            self.encode.set_batch_wait_timeout_s(batch_wait_timeout_s)
        # Warm-up: the first runs of a fresh session (ONNX Runtime's allocations, PyTorch's kernels) are
        # slow; they happen here, before the replica is ready, not in the first users' requests.
        for i in range(warmup):
            self.encoder.encode([f"warm-up query {i}"] * (1 if i % 2 else max_batch_size))

    def encode_batch(self, queries: list[str]) -> list[np.ndarray]:
        """One embedding per query (what each batched caller gets back)."""
        return list(self.encoder.encode(list(queries)))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def encode(self, queries: list[str]) -> list[np.ndarray]:
        return self.encode_batch(queries)

    def info(self) -> dict:
        return {"backend": self.encoder.backend, "model_hash": self.model_hash, "dim": self.encoder.dim,
                "model_dir": self.model_dir, "pid": os.getpid()}  # fmt: skip


SEARCH_PARAMS = ("ef_search", "nprobe", "k_factor")


@serve.deployment(name="ProductIndex")
class ProductIndex:
    """One index directory in memory; searches by embedding and by product, and hands out its hot-query
    cache (to the ingress, which answers hot queries without the encoder). Every answer names the index
    version it came from; a search from a cached embedding names the version of the cache it used and is
    refused (``stale``) if that is not the version served, so a cache and an index never mix."""

    def __init__(self, model_hash: str, threads: int = 1):
        faiss.omp_set_num_threads(threads)  # fractional-CPU actors would otherwise guess
        self.model_hash = model_hash
        self.current: index_dir.LoadedIndex | None = None
        self.rejected: dict | None = None
        self.params: dict = {}

    def reconfigure(self, config: dict) -> None:
        """Load ``config["index_dir"]`` and swap it in, with search-time parameters (``ef_search``,
        ``nprobe``, ``k_factor``; 0 = the index's own) and ``warmup`` searches run before it serves. An
        index for another model is refused: the first one fails the deployment; a later one is logged and
        reported by /healthz while the current index keeps serving (a failed swap must not take the
        service down, nor mix versions). Only new parameters for the index served: set in place."""
        path = config["index_dir"]
        params = {k: int(config.get(k) or 0) for k in SEARCH_PARAMS}
        cur = self.current
        try:
            folder = index_dir.find(path)
            if cur is not None and Path(cur.path).resolve() == folder:
                self.params = index_dir.set_search_params(cur.index, **params)
                return
            loaded = index_dir.load(folder)
            loaded.manifest.check_model(self.model_hash)
        except Exception as exc:
            if self.current is None:
                raise
            self.rejected = {"index_dir": str(path), "error": str(exc)}
            log.error("ProductIndex: refused index %s: %s", path, exc)
            return
        in_force = index_dir.set_search_params(loaded.index, **params)
        self._warm_up(loaded, int(config.get("warmup", 0)))
        self.current, self.rejected, self.params = loaded, None, in_force
        log.info(
            "ProductIndex: serving index %s (%d products, %s)", loaded.version, loaded.index.ntotal, in_force
        )

    def _warm_up(self, loaded: index_dir.LoadedIndex, n: int) -> None:
        """``n`` searches on a freshly loaded index before it serves (first-touch costs out of requests)."""
        rows = np.linspace(0, loaded.index.ntotal - 1, num=min(n, loaded.index.ntotal)).astype(int)
        for row in rows:
            self._search(loaded, loaded.embedding(row), 10, None)

    @staticmethod
    def _results(cur: index_dir.LoadedIndex, scores: np.ndarray, rows: np.ndarray) -> list[dict]:
        p = cur.products
        return [{"product_id": p.at[int(r), "product_id"], "score": float(s), "title": p.at[int(r), "title"],
                 "category": p.at[int(r), "category"]} for s, r in zip(scores, rows, strict=True) if r >= 0]  # fmt: skip

    def _search(self, cur: index_dir.LoadedIndex, emb: np.ndarray, k: int, category: str | None,
                exclude: int = -1) -> list[dict]:  # fmt: skip
        q = np.asarray(emb, np.float32).reshape(1, -1)
        extra = 1 if exclude >= 0 else 0
        if category is None:
            scores, rows = faiss_index.search(cur.index, q, k + extra)
        else:
            scores, rows = self._search_within(cur.index, q, k + extra, cur.category_rows[category])
        keep = rows[0] != exclude
        return self._results(cur, scores[0][keep][:k], rows[0][keep][:k])

    @staticmethod
    def _search_within(index, q: np.ndarray, k: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` among ``rows`` only. A graph or list search filtered to a small category sees few of
        its members per step, so the beam (HNSW) or lists probed (IVF) grow with how rare the category is."""
        sel = faiss.IDSelectorBatch(rows.astype(np.int64))
        rarity = index.ntotal / max(1, len(rows))
        base, refine = index_dir.ann_parts(index)
        if base is not None and hasattr(base, "hnsw"):
            params = faiss.SearchParametersHNSW(
                sel=sel, efSearch=int(min(4096, max(base.hnsw.efSearch, k * rarity)))
            )
        elif base is not None:
            params = faiss.SearchParametersIVF(
                sel=sel, nprobe=int(min(base.nlist, base.nprobe * max(1, rarity)))
            )
        else:
            params = faiss.SearchParameters(sel=sel)
        if refine is not None:  # the selector filters the IVF-PQ candidates the stored vectors re-rank
            params = faiss.IndexRefineSearchParameters(k_factor=refine.k_factor, base_index_params=params)
        n = min(k, len(rows))
        scores, ids = index.search(q, n, params=params)
        scores[ids < 0] = -np.inf
        return scores, ids

    @staticmethod
    def _check(cur: index_dir.LoadedIndex, category: str | None = None) -> dict | None:
        """An error (field, message) for a category this index does not know, else None."""
        if category is not None and category not in cur.category_rows:
            known = sorted(cur.category_rows)
            return {
                "field": "category",
                "message": f"unknown category {category!r}; known: {', '.join(known[:50])}",
            }
        return None

    def hot_cache(self) -> dict:
        """The hot-query cache of the index served: its version, the query keys and their embeddings."""
        cur = self.current
        keys = list(cur.hot)
        emb = np.stack([cur.hot[q] for q in keys]) if keys else np.zeros((0, cur.index.d), np.float32)
        return {"version": cur.version, "keys": keys, "emb": emb}

    def search(
        self, emb: np.ndarray, k: int, category: str | None = None, cache_version: str | None = None
    ) -> dict:
        """The ``k`` products nearest to the query embedding ``emb`` (within ``category``). With
        ``cache_version`` (``emb`` came from that version's hot-query cache) and another version served,
        nothing is searched: ``{"stale": <version served>}``."""
        cur = self.current
        if cache_version is not None and cache_version != cur.version:
            return {"stale": cur.version}
        err = self._check(cur, category)
        return err or {"results": self._search(cur, emb, k, category), "index_version": cur.version}

    def similar(self, product_id: str, k: int) -> dict:
        """The ``k`` products nearest to ``product_id``'s own embedding (itself left out)."""
        cur = self.current
        row = cur.row_of.get(product_id)
        if row is None:
            return {"field": "product_id", "message": f"unknown product {product_id!r}", "status": 404}
        return {
            "results": self._search(cur, cur.embedding(row), k, None, exclude=row),
            "index_version": cur.version,
        }

    def describe(self) -> dict:
        cur = self.current
        m = cur.manifest
        return {"version": m.version, "kind": m.kind, "products": int(cur.index.ntotal),
                "hot_queries": len(cur.hot), "model_hash": m.model_hash, "model_run_id": m.model_run_id,
                "feature_store": m.feature_store, "path": str(cur.path), "search_params": self.params,
                "rejected": self.rejected, "pid": os.getpid()}  # fmt: skip


class HotCache:
    """The ingress's copy of one index version's hot-query cache: query key -> embedding."""

    def __init__(self, version: str | None = None, keys: list[str] = (), emb: np.ndarray | None = None):
        self.version = version
        # One small array per query, copied out of the fetched matrix: row views would pin the matrix
        # in Ray's object store (it is deserialised zero-copy) for as long as the cache lives.
        self.emb = {} if emb is None else {q: np.array(e, np.float32) for q, e in zip(keys, emb, strict=True)}

    def get(self, query: str) -> np.ndarray | None:
        return self.emb.get(query_key(query))


app = FastAPI(
    title="ace-ray search", description="ACE-BERT product search (see the README's Serving section)"
)
# Replica deaths a request survives by being sent again, once Serve routes to a live or restarted replica.
_RETRY = (RayActorError, ActorUnavailableError, DeploymentUnavailableError, ReplicaUnavailableError)


@serve.deployment(name="SearchAPI")
@serve.ingress(app)
class SearchAPI:
    """HTTP ingress: validates requests and holds the hot-query cache of the index version served, so a
    hot query is one handle call (the index search) and any other two (the encoder, then the index)."""

    STALE_RETRIES = 3  # cache refreshes for one request while a swap rolls out, before the encoder path

    def __init__(self, encoder, index, limits: dict, model: dict):
        from ace_ray.serve.metrics import CacheMetrics

        self.encoder, self.index, self.limits, self.model = encoder, index, limits, model
        self.metrics = CacheMetrics()
        self.cache = HotCache()
        self._refreshing = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        # Fetch the cache now, in the background, so the first hot query needs no extra hop (the plain
        # class in unit tests has no event loop here and fetches it on first use).
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop()
            self._background(self._hot())

    def _background(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, method, *args):
        """``method.remote(*args)``, sent again while the replica behind it is dying or restarting."""
        deadline = time.monotonic() + self.limits["retry_s"]
        wait = 0.05
        while True:
            try:
                return await method.remote(*args)
            except _RETRY as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("SearchAPI: retrying after %s", type(exc).__name__)
                await asyncio.sleep(wait)
                wait = min(wait * 2, 1.0)

    async def _hot(self, unless: str | None = None) -> HotCache:
        """The hot-query cache, fetched from the index when there is none yet or the one held is of
        version ``unless`` (the index answered that it serves another)."""
        if self.cache.version is not None and self.cache.version != unless:
            return self.cache
        async with self._refreshing:  # one fetch for all the requests that found it missing or stale
            if self.cache.version is None or self.cache.version == unless:
                hot = await self._call(self.index.hot_cache)
                self.cache = HotCache(hot["version"], hot["keys"], hot["emb"])
                log.info(
                    "SearchAPI: hot-query cache of index %s (%d queries)", hot["version"], len(hot["keys"])
                )
        return self.cache

    async def _handle(self, request: Request, work) -> JSONResponse:
        try:
            return JSONResponse(await work(await api.read_body(request, self.limits["max_body_bytes"])))
        except api.BadRequest as exc:
            return exc.response()

    @staticmethod
    def _refused(res: dict) -> None:
        if "field" in res:
            raise api.BadRequest(res.get("status", 422), res["field"], res["message"])

    async def _search(self, query: str, k: int, category: str | None) -> tuple[dict, bool]:
        """(the index's answer, whether the cache embedded the query)."""
        cache = await self._hot()
        for _ in range(self.STALE_RETRIES):
            emb = cache.get(query)
            if emb is None:
                break
            res = await self._call(self.index.search, emb, k, category, cache.version)
            if "stale" not in res:
                return res, True
            cache = await self._hot(unless=cache.version)
        emb = await self._call(self.encoder.encode, query)
        res = await self._call(self.index.search, emb, k, category)
        if res.get("index_version", cache.version) != cache.version and not self._refreshing.locked():
            self._background(self._hot(unless=cache.version))  # the index swapped: follow it
        return res, False

    @app.post("/search")
    async def search(self, request: Request) -> JSONResponse:
        async def work(body: bytes) -> dict:
            req = api.parse(body, api.SearchRequest)
            query = api.check_query(req.query, self.limits["max_query_chars"])
            api.check_k(req.k, self.limits["max_k"])
            res, cached = await self._search(query, req.k, req.category)
            self._refused(res)
            self.metrics.record(cached)
            return {"query": query, "k": req.k, "category": req.category, "cached": cached, **res}

        return await self._handle(request, work)

    @app.post("/similar")
    async def similar(self, request: Request) -> JSONResponse:
        async def work(body: bytes) -> dict:
            req = api.parse(body, api.SimilarRequest)
            api.check_k(req.k, self.limits["max_k"])
            res = await self._call(self.index.similar, req.product_id, req.k)
            self._refused(res)
            return {"product_id": req.product_id, "k": req.k, **res}

        return await self._handle(request, work)

    @app.get("/healthz")
    async def healthz(self) -> dict:
        index = await self._call(self.index.describe)
        encoder = await self._call(self.encoder.info)
        cache = await self._hot(unless=None if index["version"] == self.cache.version else self.cache.version)
        return {"status": "ok", "model": {**self.model, "query_backend": encoder["backend"]}, "index": index,
                "catalogue_size": index["products"],
                "cache": {"index_version": cache.version, "hot_queries": len(cache.emb), **self.metrics.summary()}}  # fmt: skip
