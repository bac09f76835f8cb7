"""``ace-ray index``: a Ray Data batch job embeds every featurised product of the catalogue with the
model's product tower (title, train-day hot queries, the image features of the store the model was trained
on) into a versioned index directory (see ``index_dir``).

It streams: embeddings arrive batch by batch from the actor pool and go straight into the FAISS index and
a Parquet writer, so apart from the index itself (the thing being built) memory does not grow with the
catalogue. IVF-PQ holds only the first ``train_size`` vectors for training before it adds.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ace_ray.data import feature_store as fs
from ace_ray.data.clicks import check_split, clean_clicks
from ace_ray.data.hot_queries import read_hot_queries
from ace_ray.data.validate import load_clean_products
from ace_ray.eval import index as faiss_index
from ace_ray.eval.embed import ProductEmbedder, product_inputs
from ace_ray.model.encoder import read_info
from ace_ray.model.towers import encode_query_texts, load_towers
from ace_ray.serve.index_dir import HOT_FILE, INDEX_FILE, PRODUCTS_FILE, IndexManifest, model_hash, query_key
from ace_ray.serve.settings import IndexSettings, SettingsError

_PRODUCT_SCHEMA = pa.schema([("product_id", pa.string()), ("title", pa.string()), ("category", pa.string())])


@dataclasses.dataclass(frozen=True)
class EmbedPlan:
    """Where the index job's embedding actors run: ``actors`` of them, each taking ``num_gpus`` GPUs and
    ``num_cpus`` CPUs, with the product tower on ``device``."""

    device: str
    actors: int
    num_gpus: int
    num_cpus: float


def embed_plan(cluster: dict, cfg: IndexSettings) -> EmbedPlan:
    """The embedding actors for a cluster with ``cluster`` resources (``ray.cluster_resources()``): one
    GPU each, as many as GPUs (or ``cfg.actors``, at most that many), where the cluster has GPUs and
    ``cfg.device`` allows; else CPU actors, one per 2 CPUs (or ``cfg.actors``)."""
    gpus = int(cluster.get("GPU", 0))  # fractional totals (shared GPUs) cannot give one whole GPU each
    if cfg.device == "cuda" and gpus < 1:
        raise SettingsError("device: cuda asked for, but the Ray cluster has no GPU")
    if gpus >= 1 and cfg.device != "cpu":
        return EmbedPlan("cuda", min(cfg.actors or gpus, gpus), 1, 1)
    cpus = max(1, int(cluster.get("CPU", 1)))
    return EmbedPlan("cpu", cfg.actors or max(1, cpus // 2), 0, 1)


class IndexEmbedder(ProductEmbedder):
    """``ProductEmbedder`` with the product tower on ``device`` (a GPU actor's ``cuda``, or the CPU)."""

    def __init__(self, model_dir: str, lookup: pd.DataFrame, device: str = "cpu", threads: int = 1):
        super().__init__(model_dir, lookup, threads)
        self.device = torch.device(device)
        self.towers.to(self.device)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        if self.device.type == "cpu":
            return super().__call__(batch)
        rows = batch.join(self.lookup, on="product_id", how="inner")
        inputs = product_inputs(rows, self.manifest, self.text_cfg)
        with torch.inference_mode():
            emb = self.towers.encode_products({k: v.to(self.device) for k, v in inputs.items()})
        emb = emb.float().cpu().numpy()
        return pd.DataFrame({"product_id": rows["product_id"].to_numpy(), "emb": list(emb)})


def ivfpq_index(train: np.ndarray, n: int, cfg: IndexSettings) -> faiss.Index:
    """An empty IVF-PQ inner-product index trained on ``train`` (for catalogues of ``n`` vectors): about
    4 sqrt(n) lists (at most one per 39 training vectors), ``pq_m`` bytes per vector. With ``cfg.refine``
    the IVF-PQ candidates (``k_factor`` per result) are re-ranked with stored vectors: float32 (``flat``,
    exact scores) or 8-bit scalar codes (``sq8``); an ``IndexRefine`` around the IVF-PQ index."""
    d = train.shape[1]
    if d % cfg.pq_m:
        raise ValueError(f"pq_m={cfg.pq_m} must divide the embedding size {d}")
    lists = cfg.nlist or max(1, min(round(4 * np.sqrt(n)), len(train) // 39))
    bits = 8 if len(train) >= 39 * 256 else 4  # 256 centroids per sub-quantiser need ~10k training vectors
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, lists, cfg.pq_m, bits, faiss.METRIC_INNER_PRODUCT)
    index.nprobe = min(cfg.nprobe, lists)
    if cfg.refine != "none":
        stored = (faiss.IndexFlatIP(d) if cfg.refine == "flat" else
                  faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT))  # fmt: skip
        index = faiss.IndexRefine(index, stored)  # the Python wrapper keeps both alive
        index.k_factor = float(cfg.k_factor)
    index.train(np.ascontiguousarray(train, np.float32))
    return index


class StreamingIndex:
    """Adds embedding chunks to a FAISS index of ``kind`` as they arrive; the first chunk(s) build it
    (``build_index`` for flat and HNSW; IVF-PQ is trained on the first ``train_size`` vectors)."""

    def __init__(self, kind: str, n: int, cfg: IndexSettings):
        self.kind, self.n, self.cfg = kind, n, cfg
        self.index: faiss.Index | None = None
        self.pending: list[np.ndarray] = []

    def _ready(self) -> bool:
        need = min(self.n, self.cfg.train_size) if self.kind == "ivfpq" else 1
        return sum(len(p) for p in self.pending) >= need

    def add(self, emb: np.ndarray) -> None:
        self.pending.append(np.ascontiguousarray(emb, np.float32))
        if self.index is not None:
            self.index.add(self.pending.pop())
        elif self._ready():
            self._build()

    def _build(self) -> None:
        x = np.concatenate(self.pending)
        self.pending = []
        c = self.cfg
        if self.kind == "ivfpq":
            self.index = ivfpq_index(x, self.n, c)
            self.index.add(x)
        else:
            params = {"hnsw_m": c.hnsw_m, "ef_search": c.ef_search, "ef_construction": c.ef_construction}
            self.index = faiss_index.build_index(x, self.kind, **(params if self.kind == "hnsw" else {}))

    def finish(self) -> faiss.Index:
        if self.index is None and self.pending:
            self._build()
        if self.index is None:
            raise ValueError("no product was embedded: the index would be empty")
        return self.index


def hot_query_table(towers, text_cfg: dict, root: Path, test_days: int, top: int) -> pd.DataFrame:
    """The ``top`` most clicked train-day queries (by cache key) with their clicks and embeddings."""
    keys = clean_clicks(root, test_days)["query"].map(query_key)
    counts = keys[keys != ""].value_counts().head(top)
    emb = encode_query_texts(towers, counts.index.tolist(), text_cfg)
    return pd.DataFrame({"key": counts.index.tolist(), "clicks": counts.to_numpy(np.int64), "emb": list(emb)})


def build_index_dir(model_dir: str | Path, root: str | Path, store: fs.FeatureStore, out_root: str | Path,
                    cfg: IndexSettings, test_days: int, model_run_id: str = "") -> Path:  # fmt: skip
    """Embed the catalogue ``root`` with the model in ``model_dir`` and write ``<out_root>/<version>/``;
    returns that directory. The hot queries are those of the split the model was trained on (its
    recorded test days; ``test_days`` for a model that records none)."""
    import ray

    t0 = time.perf_counter()
    info = read_info(model_dir)
    store.check(fs.FeatureManifest(**info["feature_manifest"]))
    split = info.get("split") or {}
    test_days = split.get("test_days", test_days)
    check_split(split, root, test_days, f"the model in {model_dir}")
    digest = model_hash(model_dir)
    products = load_clean_products(root)
    lookup = products[["product_id", "title"]]
    if info.get("hot_queries", True):
        hot = read_hot_queries(root, test_days, info["text"]["hot_k"])[["product_id", "hot_queries"]]
        lookup = lookup.merge(hot, on="product_id", how="left")
    else:
        lookup = lookup.assign(hot_queries=None)
    meta = products.set_index("product_id")[["title", "category"]]
    kind = cfg.resolve_kind(len(products))
    version = f"{time.strftime('%Y%m%d-%H%M%S')}-{digest[:8]}-{kind}"
    out_root = Path(out_root)
    staging = out_root / f".{version}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        plan = embed_plan(ray.cluster_resources(), cfg)
        ds = store.dataset(["patch_features", "pixels"]).map_batches(
            IndexEmbedder, fn_constructor_kwargs={"model_dir": str(model_dir), "lookup": lookup,
                                                  "device": plan.device},
            batch_size=cfg.batch_size, batch_format="pandas", num_cpus=plan.num_cpus, num_gpus=plan.num_gpus,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan.actors))  # fmt: skip
        index = StreamingIndex(kind, len(products), cfg)
        n = 0
        with pq.ParquetWriter(staging / PRODUCTS_FILE, _PRODUCT_SCHEMA) as writer:
            for batch in ds.iter_batches(batch_size=4096, batch_format="pandas"):
                ids = batch["product_id"].astype(str).to_numpy()
                rows = meta.loc[ids]
                writer.write_table(pa.table({"product_id": ids, "title": rows["title"].astype(str).to_numpy(),
                                             "category": rows["category"].astype(str).to_numpy()},
                                            schema=_PRODUCT_SCHEMA))  # fmt: skip
                index.add(np.stack(batch["emb"].to_numpy()))
                n += len(batch)
        built = index.finish()
        faiss_index.save_index(built, staging / INDEX_FILE)
        towers, _ = load_towers(model_dir)
        hot = hot_query_table(towers, info["text"], Path(root), test_days, cfg.hot_cache)
        hot.to_parquet(staging / HOT_FILE, index=False)
        manifest = IndexManifest(
            version=version, model_hash=digest, model_run_id=model_run_id, model_preset=info.get("preset") or "",
            feature_store=store.manifest.version, kind=kind, dim=int(built.d), products=n, hot_queries=len(hot),
            skipped_products=len(products) - n, categories=sorted(meta["category"].astype(str).unique()),
            params={**dataclasses.asdict(cfg), "embed_device": plan.device, "embed_actors": plan.actors,
                    "seconds": round(time.perf_counter() - t0, 2)},
        )  # fmt: skip
        manifest.write(staging)  # last: a directory without it is unfinished
        final = out_root / version
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final
