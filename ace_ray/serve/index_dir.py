"""The index directory: what the index job writes and the ProductIndex deployment loads.

Layout of ``<out>/<version>/``: ``index.faiss`` (inner product over unit embeddings), ``products.parquet``
(row -> product_id, title, category, in index row order), ``hot_queries.parquet`` (the most clicked
train-day queries with their embeddings: the paper's cache for most of the traffic) and ``manifest.json``
(the model's run id and weight hash, the feature store, the index kind and the sizes), written last: a
folder without it is unfinished. The weight hash is what stops an index from being served beside a model
it was not built with.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from ace_ray.config import ConfigError
from ace_ray.eval import index as faiss_index
from ace_ray.model.encoder import EXTRA_WEIGHTS

INDEX_FILE = "index.faiss"
PRODUCTS_FILE = "products.parquet"
HOT_FILE = "hot_queries.parquet"
MANIFEST_FILE = "manifest.json"
# The BERT weights of a saved model (HF's file name) and ace-ray's own projections.
WEIGHT_FILES = ("model.safetensors", EXTRA_WEIGHTS)


class IndexMismatch(ConfigError):
    """An index built for another model than the one it is asked to serve beside."""


def model_hash(model_dir: str | Path) -> str:
    """SHA-256 (first 16 hex digits) of a model directory's weight files: the model's identity, whatever
    directory or MLflow run it was copied from."""
    h = hashlib.sha256()
    for name in WEIGHT_FILES:
        path = Path(model_dir) / name
        if not path.is_file():
            raise FileNotFoundError(f"{model_dir}: not a saved model directory (no {name})")
        h.update(name.encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def query_key(query: str) -> str:
    """How the hot-query cache matches queries: leading, trailing and repeated whitespace never changes an
    embedding (the tokenizer splits on it), so it does not change the key. Case is kept: not every
    tokenizer a model may use is uncased."""
    return " ".join(query.split())


@dataclass
class IndexManifest:
    """What an index directory holds and which model and features it was built from."""

    version: str
    model_hash: str
    model_run_id: str
    model_preset: str
    feature_store: str
    kind: str
    dim: int
    products: int
    hot_queries: int
    skipped_products: int = 0
    categories: list[str] = field(default_factory=list)
    params: dict = field(default_factory=dict)

    def write(self, folder: Path) -> None:
        (folder / MANIFEST_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, folder: str | Path) -> IndexManifest:
        path = Path(folder) / MANIFEST_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: not a finished index directory (no {MANIFEST_FILE}); "
                                    "run `ace-ray index`")  # fmt: skip
        return cls(**json.loads(path.read_text()))

    def check_model(self, expected_hash: str, what: str = "the query encoder's model") -> None:
        """Refuse to serve this index beside a model with other weights."""
        if self.model_hash != expected_hash:
            raise IndexMismatch(
                f"index {self.version} was built for model {self.model_hash} (run "
                f"{self.model_run_id or '-'}) but {what} is {expected_hash}: build an index for this model "
                "with `ace-ray index`, or serve the model this index belongs to"
            )


def ann_parts(index) -> tuple[object | None, object | None]:
    """(the HNSW or IVF index that does the approximate search, the re-ranking wrapper or None): an
    IVF-PQ index with re-ranking is an ``IndexRefine`` around its IVF-PQ base."""
    refine = index if isinstance(index, faiss.IndexRefine) else None
    base = faiss.downcast_index(index.base_index) if refine is not None else index
    return (base if hasattr(base, "hnsw") or hasattr(base, "nprobe") else None), refine


def set_search_params(index, ef_search: int = 0, nprobe: int = 0, k_factor: int = 0) -> dict:
    """Set an index's search-time parameters where it has them (0 leaves one as it is); returns those in
    force: HNSW ``ef_search``, IVF ``nprobe`` (at most its lists), re-ranking ``k_factor``."""
    base, refine = ann_parts(index)
    out = {}
    if base is not None and hasattr(base, "hnsw"):
        if ef_search:
            base.hnsw.efSearch = int(ef_search)
        out["ef_search"] = int(base.hnsw.efSearch)
    if base is not None and hasattr(base, "nprobe"):
        if nprobe:
            base.nprobe = int(min(nprobe, base.nlist))
        out["nprobe"] = int(base.nprobe)
    if refine is not None:
        if k_factor:
            refine.k_factor = float(k_factor)
        out["k_factor"] = int(refine.k_factor)
    return out


def find(path: str | Path) -> Path:
    """``path`` if it is a finished index directory, else the newest finished one inside it (versions
    start with their build time), so configs can name the folder ``ace-ray index`` writes into."""
    path = Path(path).expanduser().resolve()
    if (path / MANIFEST_FILE).is_file():
        return path
    found = sorted(p.parent for p in path.glob(f"*/{MANIFEST_FILE}") if not p.parent.name.startswith("."))
    if not found:
        raise FileNotFoundError(f"{path}: no finished index directory here or inside; run `ace-ray index`")
    return found[-1]


@dataclass
class LoadedIndex:
    """An index directory in memory: the FAISS index, its rows' products and the hot-query cache."""

    path: Path
    manifest: IndexManifest
    index: object
    products: pd.DataFrame
    row_of: dict[str, int]
    hot: dict[str, np.ndarray]
    category_rows: dict[str, np.ndarray]

    @property
    def version(self) -> str:
        return self.manifest.version

    def embedding(self, row: int) -> np.ndarray:
        """A product's stored embedding (exact for flat, HNSW and IVF-PQ re-ranked with float32 vectors; the
        decoded code for IVF-PQ otherwise)."""
        return self.index.reconstruct(int(row)).reshape(1, -1).astype(np.float32)


def load(folder: str | Path) -> LoadedIndex:
    """Read a finished index directory."""
    folder = Path(folder)
    manifest = IndexManifest.read(folder)
    index = faiss_index.load_index(folder / INDEX_FILE)
    if hasattr(index, "make_direct_map"):  # IVF indexes reconstruct rows (for /similar) through a map
        index.make_direct_map()  # (with re-ranking, rows come from the stored vectors instead)
    products = pd.read_parquet(folder / PRODUCTS_FILE)
    if len(products) != index.ntotal:
        raise ValueError(f"{folder}: {len(products)} product rows but {index.ntotal} vectors in the index")
    hot_df = pd.read_parquet(folder / HOT_FILE)
    hot = {q: np.asarray(e, np.float32) for q, e in zip(hot_df["key"], hot_df["emb"], strict=True)}
    cats = {c: np.flatnonzero(products["category"].to_numpy() == c) for c in products["category"].unique()}
    return LoadedIndex(folder, manifest, index, products, dict(zip(products["product_id"], range(len(products)),
                                                                   strict=True)), hot, cats)  # fmt: skip
