"""Retrieval baselines every evaluation report includes: chance, BM25 over titles and zero-shot MiniLM.

All of them follow one :class:`Retriever` interface, so the evaluation code treats every method alike:
``fit`` on the catalogue (row order = product index), ``score`` query/product pairs (GAUC on shown lists)
and ``search`` the whole catalogue (recall@k, MRR, ...). The embedding baselines also expose
``embed_queries`` and ``product_embeddings`` so a caller can build a FAISS index from them.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

# Score given to the -1 padding of ``search`` when k exceeds the catalogue size.
PAD_SCORE = -np.inf
# Bound on the [queries, products] float32 score block of brute-force search (bytes); top-k selection
# needs about four times as much again, transiently.
_BLOCK_BYTES = 64 * 2**20


@runtime_checkable
class Retriever(Protocol):
    """What the evaluation needs from a retrieval method."""

    name: str

    def fit(self, products: pd.DataFrame) -> None:
        """Index the catalogue: columns ``product_id``, ``title`` (maybe more); row order = product index."""
        ...

    def score(self, queries: list[str], product_idx: np.ndarray) -> np.ndarray:
        """Pairwise scores: ``queries[i]`` against product ``product_idx[i]`` -> ``score[i]``."""
        ...

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores [n, k], product indices [n, k]), best first; index -1 pads when k > n_products."""
        ...


def topk_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k of a [m, n] score matrix, best first; ties go to the lower index, -1 pads beyond n.

    Deterministic even when many entries tie (BM25 gives 0 to most products): everything above the k-th
    largest value is kept, and the remaining slots go to the lowest indices equal to it.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores = np.asarray(scores)
    m, n = scores.shape
    kk = min(k, n)
    out_scores = np.full((m, k), PAD_SCORE, dtype=np.float32)
    out_idx = np.full((m, k), -1, dtype=np.int64)
    if kk == 0 or m == 0:
        return out_scores, out_idx
    kth = np.partition(scores, n - kk, axis=1)[:, n - kk : n - kk + 1]
    above = scores > kth
    tied = scores == kth
    room = kk - above.sum(axis=1, keepdims=True)
    keep = above | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= room))
    # np.nonzero walks row by row and every row keeps exactly kk entries, in increasing index order.
    idx = np.nonzero(keep)[1].reshape(m, kk)
    vals = np.take_along_axis(scores, idx, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    out_idx[:, :kk] = np.take_along_axis(idx, order, axis=1)
    out_scores[:, :kk] = np.take_along_axis(vals, order, axis=1)
    return out_scores, out_idx


def _chunked_search(score_block, n_queries: int, n_products: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``topk_rows`` over ``score_block(start, stop)`` ([stop - start, n_products]) for bounded query chunks."""
    chunk = max(1, _BLOCK_BYTES // (4 * max(n_products, 1)))
    parts = [topk_rows(score_block(s, s + chunk), k) for s in range(0, n_queries, chunk)]
    if not parts:
        return topk_rows(np.zeros((0, n_products), dtype=np.float32), k)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _unique(texts: list[str]) -> tuple[list[str], np.ndarray]:
    """Distinct texts in first-seen order and, per input, the position of its text among them."""
    first: dict[str, int] = {}
    inverse = np.fromiter((first.setdefault(t, len(first)) for t in texts), dtype=np.int64, count=len(texts))
    return list(first), inverse


def _titles(products: pd.DataFrame) -> list[str]:
    if len(products) == 0:
        raise ValueError("cannot fit a retriever on an empty catalogue")
    return products["title"].fillna("").astype(str).tolist()


def _check_pairs(queries: list[str], product_idx: np.ndarray, n_products: int) -> np.ndarray:
    idx = np.asarray(product_idx, dtype=np.int64).reshape(-1)
    if len(idx) != len(queries):
        raise ValueError(f"{len(queries)} queries but {len(idx)} product indices")
    # -1 (search padding) would silently wrap around to the last product.
    if len(idx) and (idx.min() < 0 or idx.max() >= n_products):
        raise ValueError(f"product indices must lie in [0, {n_products})")
    return idx


class EmbeddingRetriever:
    """Shared logic of embedding baselines: dot-product scoring and exact brute-force search.

    Subclasses implement ``embed_queries`` and ``_embed_products``, both L2-normalised float32.
    """

    name = "embedding"

    def __init__(self) -> None:
        self._products: np.ndarray | None = None

    def embed_queries(self, queries: list[str]) -> np.ndarray:
        """Query embeddings, float32 [n, d], L2-normalised."""
        raise NotImplementedError

    def _embed_products(self, products: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError

    def fit(self, products: pd.DataFrame) -> None:
        """Embed the catalogue (row order = product index)."""
        _titles(products)  # rejects an empty catalogue
        self._products = np.ascontiguousarray(self._embed_products(products), dtype=np.float32)

    @property
    def product_embeddings(self) -> np.ndarray:
        """Product embeddings, float32 [n_products, d], L2-normalised (after ``fit``)."""
        if self._products is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(products) first")
        return self._products

    def score(self, queries: list[str], product_idx: np.ndarray) -> np.ndarray:
        """Cosine similarity of each (query, product) pair; each distinct query is embedded once."""
        idx = _check_pairs(queries, product_idx, len(self.product_embeddings))
        uniq, inverse = _unique(list(queries))
        q = self.embed_queries(uniq)[inverse]
        return np.einsum("ij,ij->i", q, self.product_embeddings[idx]).astype(np.float32)

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k by inner product over the whole catalogue, in query chunks to bound memory."""
        prods = self.product_embeddings
        q = self.embed_queries(list(queries))
        return _chunked_search(lambda s, e: q[s:e] @ prods.T, len(q), len(prods), k)


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class RandomEmbeddings(EmbeddingRetriever):
    """Chance level: a random unit vector per product (by row) and per query text.

    The same text always gets the same vector (seeded by a CRC32 of the text and ``seed``), so repeated
    queries score consistently and the baseline is reproducible across processes.
    """

    name = "random"

    def __init__(self, dim: int = 128, seed: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.seed = seed

    def embed_queries(self, queries: list[str]) -> np.ndarray:
        """One seeded random unit vector per query text."""
        out = np.empty((len(queries), self.dim), dtype=np.float64)
        for i, text in enumerate(queries):
            # The 1 (products use 0) keeps query streams apart from the product stream.
            rng = np.random.default_rng([self.seed, 1, zlib.crc32(text.encode("utf-8"))])
            out[i] = rng.standard_normal(self.dim)
        return _normalise(out)

    def _embed_products(self, products: pd.DataFrame) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 0])
        return _normalise(rng.standard_normal((len(products), self.dim)))


class MiniLMZeroShot(EmbeddingRetriever):
    """The packaged all-MiniLM-L6-v2 sentence embedding, zero-shot on queries and product titles.

    Mirrors the sentence-transformers pipeline of that model (Transformer -> mean pooling over the
    attention mask -> L2 normalisation) with plain ``transformers`` loaded from a local directory only.
    """

    name = "minilm"

    def __init__(
        self,
        model_dir: str | Path | None = None,
        batch_size: int = 256,
        max_len: int = 64,
        device: str = "cpu",
    ) -> None:
        super().__init__()
        if model_dir is None:
            from ace_ray.data.text import packaged_minilm_dir

            model_dir = packaged_minilm_dir()
        self.model_dir = Path(model_dir)
        self.batch_size = batch_size
        self.max_len = max_len
        self.device = device
        self._model = None
        self._tokenizer = None

    def _load(self):
        if self._model is None:
            from transformers import AutoModel
            from transformers.utils import logging as hf_logging

            from ace_ray.data.text import load_tokenizer

            self._tokenizer = load_tokenizer(str(self.model_dir))
            # transformers draws a "Loading weights" bar per load: silence it, then restore the setting.
            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
            try:
                model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True)
            finally:
                if bars:
                    hf_logging.enable_progress_bar()
            self._model = model.to(self.device).eval()
        return self._model, self._tokenizer

    def embed_texts(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """Sentence embeddings of ``texts``, float32 [n, 384], L2-normalised."""
        import torch

        from ace_ray.progress import progress as show

        model, tok = self._load()
        out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
        # Batching texts of similar length keeps padding (wasted compute) small.
        order = np.argsort([len(t) for t in texts], kind="stable")
        starts = range(0, len(texts), self.batch_size)
        with torch.inference_mode():
            for s in show(starts, "MiniLM products", unit="batch") if progress else starts:
                rows = order[s : s + self.batch_size]
                batch = tok(
                    [texts[i] for i in rows],
                    max_length=self.max_len,
                    truncation=True,
                    padding=True,
                    return_tensors="pt",
                ).to(self.device)
                hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                emb = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
                out[rows] = emb.cpu().numpy()
        return out

    def embed_queries(self, queries: list[str]) -> np.ndarray:
        """MiniLM embeddings of the query texts."""
        return self.embed_texts(list(queries))

    def _embed_products(self, products: pd.DataFrame) -> np.ndarray:
        titles = _titles(products)
        return self.embed_texts(titles, progress=len(titles) > 5000)


class BM25Titles:
    """Okapi BM25 (bm25s, Lucene variant) over product titles.

    Tokens: lower-cased ``\\w+`` runs, no stemming and, by default, no stopwords. Product queries are
    short and their "stopwords" often carry the intent ("over ear headphones", "slip on", "no show
    socks"); BM25's IDF already gives truly ubiquitous words little weight. Single characters are kept
    too (bm25s's default pattern drops them) because sizes and models are often one character: "iphone 8",
    "size 6", "t shirt".
    """

    name = "bm25"
    token_pattern = r"(?u)\b\w+\b"

    def __init__(self, k1: float = 1.5, b: float = 0.75, stopwords: str | list[str] | None = None) -> None:
        self.k1 = k1
        self.b = b
        self.stopwords = stopwords
        self._bm25 = None

    def _tokenize(self, texts: list[str]) -> list[list[str]]:
        import bm25s

        return bm25s.tokenize(
            list(texts),
            lower=True,
            token_pattern=self.token_pattern,
            stopwords=self.stopwords,
            return_ids=False,
            show_progress=False,
        )

    def fit(self, products: pd.DataFrame) -> None:
        """Index the product titles (row order = product index)."""
        import bm25s

        # method pinned explicitly: Lucene's IDF log(1 + (N - df + .5) / (df + .5)) is never negative or
        # clipped to zero (Robertson's is for words in over half the titles, common in small catalogues).
        bm25 = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
        # All-empty titles make bm25s divide by a zero mean length (harmless: there is nothing to score).
        with np.errstate(divide="ignore", invalid="ignore"):
            bm25.index(self._tokenize(_titles(products)), create_empty_token=False, show_progress=False)
        self._bm25 = bm25

    @property
    def n_products(self) -> int:
        if self._bm25 is None:
            raise RuntimeError("BM25Titles is not fitted: call fit(products) first")
        return int(self._bm25.scores["num_docs"])

    def _query_scores(self, tokens: list[str]) -> np.ndarray:
        """BM25 scores of one tokenised query against every product, float32 [n_products]."""
        # Words unseen in the catalogue are dropped; bm25s.get_scores would fail on an empty query.
        ids = self._bm25.get_tokens_ids(tokens)
        if not ids:
            return np.zeros(self.n_products, dtype=np.float32)
        return self._bm25.get_scores_from_ids(ids)

    def _score_matrix(self, queries: list[str]) -> np.ndarray:
        """BM25 scores of each query against every product, float32 [n_queries, n_products]."""
        rows = [self._query_scores(t) for t in self._tokenize(queries)]
        return np.stack(rows) if rows else np.zeros((0, self.n_products), dtype=np.float32)

    def score(self, queries: list[str], product_idx: np.ndarray) -> np.ndarray:
        """BM25 score of each (query, product) pair; each distinct query is scored once."""
        idx = _check_pairs(queries, product_idx, self.n_products)
        uniq, inverse = _unique(list(queries))
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(uniq) + 1))
        out = np.empty(len(idx), dtype=np.float32)
        for j, tokens in enumerate(self._tokenize(uniq)):
            pairs = order[bounds[j] : bounds[j + 1]]
            out[pairs] = self._query_scores(tokens)[idx[pairs]]
        return out

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k products by BM25; zero-score products fill the list in index order."""
        queries = list(queries)
        return _chunked_search(
            lambda s, e: self._score_matrix(queries[s:e]), len(queries), self.n_products, k
        )


BASELINES: dict[str, type] = {"random": RandomEmbeddings, "bm25": BM25Titles, "minilm": MiniLMZeroShot}


def make_baselines(names: list[str]) -> list[Retriever]:
    """Default-configured baselines by name ("random", "bm25", "minilm"), in the order given."""
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; known: {', '.join(BASELINES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate baseline names in {list(names)}")
    return [BASELINES[n]() for n in names]
