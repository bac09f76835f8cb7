"""The three deployments of the search application, composed with handles (see ``app.build``):

- ``QueryEncoder``: the query tower (teacher or distilled student, ONNX Runtime or PyTorch), requests
  batched with ``@serve.batch``, autoscaled on ongoing requests.
- ``ProductIndex``: the FAISS index, product table and hot-query cache of one index directory; a new one
  is swapped in with ``user_config`` (``reconfigure``), and one built for another model is refused.
- ``SearchAPI``: the FastAPI ingress (``/search``, ``/similar``, ``/healthz``).
"""

# No `from __future__ import annotations`: FastAPI must see the real Request type through Serve's
# class-based ingress, or it reads `request` as a query parameter.
import asyncio
import logging
import os
import time

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
                 batch_wait_timeout_s: float = 0.002):  # fmt: skip
        self.encoder = load_query_encoder(model_dir, backend, threads)
        self.model_dir = model_dir
        self.model_hash = index_dir.model_hash(model_dir)
        if hasattr(self.encode, "set_max_batch_size"):  # the plain class (unit tests) has no replica batcher
            self.encode.set_max_batch_size(max_batch_size)
            self.encode.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def encode_batch(self, queries: list[str]) -> list[np.ndarray]:
        """One embedding per query (what each batched caller gets back)."""
        return list(self.encoder.encode(list(queries)))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def encode(self, queries: list[str]) -> list[np.ndarray]:
        return self.encode_batch(queries)

    def info(self) -> dict:
        return {"backend": self.encoder.backend, "model_hash": self.model_hash, "dim": self.encoder.dim,
                "model_dir": self.model_dir, "pid": os.getpid()}  # fmt: skip


@serve.deployment(name="ProductIndex")
class ProductIndex:
    """One index directory in memory; searches by embedding, by cached hot query and by product."""

    def __init__(self, model_hash: str, threads: int = 1):
        faiss.omp_set_num_threads(threads)  # fractional-CPU actors would otherwise guess
        self.model_hash = model_hash
        self.current: index_dir.LoadedIndex | None = None
        self.rejected: dict | None = None

    def reconfigure(self, config: dict) -> None:
        """Load ``config["index_dir"]`` and swap it in. An index for another model is refused: the first
        one fails the deployment; a later one is logged and reported by /healthz while the current index
        keeps serving (a failed swap must not take the service down, nor mix versions)."""
        path = config["index_dir"]
        try:
            loaded = index_dir.load(path)
            loaded.manifest.check_model(self.model_hash)
        except Exception as exc:
            if self.current is None:
                raise
            self.rejected = {"index_dir": str(path), "error": str(exc)}
            log.error("ProductIndex: refused index %s: %s", path, exc)
            return
        if hasattr(loaded.index, "hnsw") and config.get("ef_search"):
            loaded.index.hnsw.efSearch = int(config["ef_search"])
        if hasattr(loaded.index, "nprobe") and config.get("nprobe"):
            loaded.index.nprobe = int(config["nprobe"])
        self.current, self.rejected = loaded, None
        log.info("ProductIndex: serving index %s (%d products)", loaded.manifest.version, loaded.index.ntotal)

    def _results(self, scores: np.ndarray, rows: np.ndarray) -> list[dict]:
        p = self.current.products
        return [{"product_id": p.at[int(r), "product_id"], "score": float(s), "title": p.at[int(r), "title"],
                 "category": p.at[int(r), "category"]} for s, r in zip(scores, rows, strict=True) if r >= 0]  # fmt: skip

    def _search(self, emb: np.ndarray, k: int, category: str | None, exclude: int = -1) -> list[dict]:
        cur = self.current
        q = np.asarray(emb, np.float32).reshape(1, -1)
        extra = 1 if exclude >= 0 else 0
        if category is None:
            scores, rows = faiss_index.search(cur.index, q, k + extra)
        else:
            scores, rows = self._search_within(q, k + extra, cur.category_rows[category])
        keep = rows[0] != exclude
        return self._results(scores[0][keep][:k], rows[0][keep][:k])

    def _search_within(self, q: np.ndarray, k: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` among ``rows`` only. A graph or list search filtered to a small category sees few of
        its members per step, so the beam (HNSW) or lists probed (IVF) grow with how rare the category is."""
        index = self.current.index
        sel = faiss.IDSelectorBatch(rows.astype(np.int64))
        rarity = index.ntotal / max(1, len(rows))
        if hasattr(index, "hnsw"):
            params = faiss.SearchParametersHNSW(
                sel=sel, efSearch=int(min(4096, max(index.hnsw.efSearch, k * rarity)))
            )
        elif hasattr(index, "nprobe"):
            params = faiss.SearchParametersIVF(
                sel=sel, nprobe=int(min(index.nlist, index.nprobe * max(1, rarity)))
            )
        else:
            params = faiss.SearchParameters(sel=sel)
        n = min(k, len(rows))
        scores, ids = index.search(q, n, params=params)
        scores[ids < 0] = -np.inf
        return scores, ids

    def check(self, category: str | None = None) -> dict | None:
        """An error (field, message) for a category this index does not know, else None."""
        if category is not None and category not in self.current.category_rows:
            known = sorted(self.current.category_rows)
            return {
                "field": "category",
                "message": f"unknown category {category!r}; known: {', '.join(known[:50])}",
            }
        return None

    def cached(self, query: str) -> np.ndarray | None:
        """The hot-query cache's embedding of ``query``, if it is a hot query."""
        return self.current.hot.get(query_key(query))

    def search(self, emb: np.ndarray, k: int, category: str | None = None) -> dict:
        """The ``k`` products nearest to the query embedding ``emb`` (within ``category``)."""
        return self.check(category) or {"results": self._search(emb, k, category)}

    def search_cached(self, query: str, k: int, category: str | None = None) -> dict | None:
        """The search for a hot query from its cached embedding; None when ``query`` is not cached."""
        err = self.check(category)
        if err:
            return err
        emb = self.cached(query)
        return None if emb is None else {"results": self._search(emb, k, category)}

    def similar(self, product_id: str, k: int) -> dict:
        """The ``k`` products nearest to ``product_id``'s own embedding (itself left out)."""
        row = self.current.row_of.get(product_id)
        if row is None:
            return {"field": "product_id", "message": f"unknown product {product_id!r}", "status": 404}
        return {"results": self._search(self.current.embedding(row), k, None, exclude=row)}

    def describe(self) -> dict:
        m = self.current.manifest
        return {"version": m.version, "kind": m.kind, "products": int(self.current.index.ntotal),
                "hot_queries": len(self.current.hot), "model_hash": m.model_hash, "model_run_id": m.model_run_id,
                "feature_store": m.feature_store, "path": str(self.current.path), "rejected": self.rejected,
                "pid": os.getpid()}  # fmt: skip


app = FastAPI(
    title="ace-ray search", description="ACE-BERT product search (see the README's Serving section)"
)
# Replica deaths a request survives by being sent again, once Serve routes to a live or restarted replica.
_RETRY = (RayActorError, ActorUnavailableError, DeploymentUnavailableError, ReplicaUnavailableError)


@serve.deployment(name="SearchAPI")
@serve.ingress(app)
class SearchAPI:
    """HTTP ingress: validates requests, asks the cache, the encoder and the index, shapes the answer."""

    def __init__(self, encoder, index, limits: dict, model: dict):
        from ace_ray.serve.metrics import CacheMetrics

        self.encoder, self.index, self.limits, self.model = encoder, index, limits, model
        self.metrics = CacheMetrics()

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

    async def _handle(self, request: Request, work) -> JSONResponse:
        try:
            return JSONResponse(await work(await api.read_body(request, self.limits["max_body_bytes"])))
        except api.BadRequest as exc:
            return exc.response()

    @staticmethod
    def _refused(res: dict) -> None:
        if "field" in res:
            raise api.BadRequest(res.get("status", 422), res["field"], res["message"])

    @app.post("/search")
    async def search(self, request: Request) -> JSONResponse:
        async def work(body: bytes) -> dict:
            req = api.parse(body, api.SearchRequest)
            query = api.check_query(req.query, self.limits["max_query_chars"])
            api.check_k(req.k, self.limits["max_k"])
            res = await self._call(self.index.search_cached, query, req.k, req.category)
            cached = res is not None
            if res is None:
                emb = await self._call(self.encoder.encode, query)
                res = await self._call(self.index.search, emb, req.k, req.category)
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
        return {"status": "ok", "model": {**self.model, "query_backend": encoder["backend"]},
                "index": index, "catalogue_size": index["products"], "cache": self.metrics.summary()}  # fmt: skip
