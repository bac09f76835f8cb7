"""Retrieval baselines: BM25 against a textbook formula, MiniLM's semantics, chance-level random vectors."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from ace_ray.eval.baselines import (
    BM25Titles,
    MiniLMZeroShot,
    RandomEmbeddings,
    Retriever,
    make_baselines,
    topk_rows,
)

# A toy catalogue of clearly different products and, per product, a query that paraphrases its title
# (synonyms or a partial phrasing, rarely the exact words).
CATALOGUE = [
    ("Women red floral summer dress", "red dress for summer"),
    ("Men black leather ankle boots", "mens leather boots"),
    ("Stainless steel kitchen chef knife 8 inch", "sharp cooking knife"),
    ("Wireless bluetooth over-ear headphones", "cordless headphones"),
    ("iPhone 13 silicone phone case", "phone cover"),
    ("Kids plush teddy bear toy", "soft toy bear for children"),
    ("Organic green tea bags 100 count", "herbal tea"),
    ("Yoga mat non-slip 6mm", "exercise mat"),
    ("Stainless steel insulated water bottle 1L", "thermos flask"),
    ("Cotton bath towel set of 4", "bathroom towels"),
    ("LED desk lamp with USB charging port", "reading light for desk"),
    ("Ceramic coffee mug 350ml", "coffee cup"),
    ("Men's running shoes lightweight", "jogging sneakers"),
    ("Gold plated hoop earrings", "golden earrings"),
    ("Acoustic guitar beginner kit", "guitar for beginners"),
    ("Dog chew toy rubber bone", "toy for puppy"),
    ("Laptop backpack waterproof 15.6 inch", "notebook rucksack"),
    ("Non-stick frying pan 28cm", "skillet"),
    ("Sunscreen lotion SPF 50", "sun cream"),
    ("Wooden chess board set", "chess game"),
]
TITLES = [t for t, _ in CATALOGUE]
PARAPHRASES = [q for _, q in CATALOGUE]


def products(titles: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"product_id": [f"p{i}" for i in range(len(titles))], "title": titles})


def recall_at(retriever: Retriever, queries: list[str], targets: np.ndarray, k: int) -> float:
    _, idx = retriever.search(queries, k)
    return float((idx == targets[:, None]).any(axis=1).mean())


# ----------------------------------------------------------------------------------------------- BM25


def textbook_bm25(query: str, docs: list[str], k1: float, b: float) -> list[float]:
    """Okapi BM25 as Lucene (and bm25s method="lucene") defines it, written from the formula.

    score(q, d) = sum over query words t of idf(t) * tf / (tf + k1 * (1 - b + b * |d| / avgdl)),
    idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5)).
    """
    toks = [re.findall(r"\w+", d.lower()) for d in docs]
    n, avgdl = len(docs), sum(map(len, toks)) / len(docs)
    out = []
    for d in toks:
        s = 0.0
        for t in re.findall(r"\w+", query.lower()):
            df = sum(t in other for other in toks)
            tf = d.count(t)
            if df:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                s += idf * tf / (tf + k1 * (1 - b + b * len(d) / avgdl))
        out.append(s)
    return out


@pytest.mark.parametrize(("k1", "b"), [(1.5, 0.75), (0.9, 0.4)])
def test_bm25_matches_textbook_formula(k1, b):
    docs = ["red red dress with pockets", "blue dress", "red leather boots for the winter season"]
    bm25 = BM25Titles(k1=k1, b=b)
    bm25.fit(products(docs))
    for query in ["red dress", "boots", "winter red coat", "Dress POCKETS"]:
        got = bm25.score([query] * 3, np.arange(3))
        np.testing.assert_allclose(got, textbook_bm25(query, docs, k1, b), rtol=1e-5, atol=1e-6)


def test_bm25_ranks_product_with_distinctive_words_first():
    bm25 = BM25Titles()
    bm25.fit(products(TITLES))
    queries = ["leather ankle boots", "chef knife", "teddy bear", "chess board", "hoop earrings", "SPF 50"]
    targets = np.array([1, 2, 5, 19, 13, 18])
    _, idx = bm25.search(queries, 3)
    np.testing.assert_array_equal(idx[:, 0], targets)


def test_bm25_pair_scores_equal_search_scores():
    bm25 = BM25Titles()
    bm25.fit(products(TITLES))
    queries = ["stainless steel", "men boots", "toy", "nothing matches this"]
    scores, idx = bm25.search(queries, len(TITLES))
    rep = np.repeat(queries, idx.shape[1]).tolist()
    np.testing.assert_allclose(bm25.score(rep, idx.reshape(-1)), scores.reshape(-1), rtol=1e-6)
    assert np.all(np.diff(scores, axis=1) <= 0)
    # Every product appears once per ranking, unmatched ones with score 0.
    assert all(sorted(row) == list(range(len(TITLES))) for row in idx.tolist())
    assert np.all(scores[3] == 0)


def test_bm25_zero_scores_and_ties_fill_top_k_deterministically():
    bm25 = BM25Titles()
    bm25.fit(products(["red dress", "blue shirt", "red dress", "green hat", "", "blue shirt"]))
    scores, idx = bm25.search(["red dress", "unknown words", ""], 4)
    # Duplicate titles tie: the lower index wins, then zero-score products in index order.
    np.testing.assert_array_equal(idx, [[0, 2, 1, 3], [0, 1, 2, 3], [0, 1, 2, 3]])
    assert scores[0, 0] == scores[0, 1] > 0 and np.all(scores[0, 2:] == 0)
    again = bm25.search(["red dress", "unknown words", ""], 4)
    np.testing.assert_array_equal(again[1], idx)


def test_bm25_pads_when_k_exceeds_catalogue():
    bm25 = BM25Titles()
    bm25.fit(products(["red dress", "blue shirt", "green hat"]))
    scores, idx = bm25.search(["red"], 5)
    np.testing.assert_array_equal(idx, [[0, 1, 2, -1, -1]])
    assert np.all(np.isneginf(scores[0, 3:]))


def test_bm25_keeps_short_tokens_and_function_words():
    bm25 = BM25Titles()
    bm25.fit(products(["iPhone 8 case", "iPhone 13 case", "on-ear headphones", "over-ear headphones"]))
    _, idx = bm25.search(["iphone 8 case", "over ear headphones"], 1)
    np.testing.assert_array_equal(idx[:, 0], [0, 3])


def test_pairs_are_validated():
    bm25 = BM25Titles()
    bm25.fit(products(["red dress", "blue shirt"]))
    with pytest.raises(ValueError, match="product indices"):
        bm25.score(["red"], np.array([-1]))
    with pytest.raises(ValueError, match="queries"):
        bm25.score(["red", "blue"], np.array([0]))
    with pytest.raises(RuntimeError, match="fit"):
        BM25Titles().search(["red"], 1)


def test_topk_rows_ties_and_padding():
    scores = np.array([[1.0, 3.0, 3.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    vals, idx = topk_rows(scores, 2)
    np.testing.assert_array_equal(idx, [[1, 2], [0, 1]])
    np.testing.assert_array_equal(vals, [[3, 3], [0, 0]])
    _, idx = topk_rows(scores, 7)
    np.testing.assert_array_equal(idx[0], [1, 2, 4, 0, 3, -1, -1])
    with pytest.raises(ValueError):
        topk_rows(scores, 0)


# ---------------------------------------------------------------------------------------------- MiniLM


@pytest.fixture(scope="module")
def minilm() -> MiniLMZeroShot:
    model = MiniLMZeroShot()
    model.fit(products(TITLES))
    return model


def test_minilm_embeddings_are_unit_norm_and_deterministic(minilm):
    q = minilm.embed_queries(["red dress", "a much longer query about running shoes for men", ""])
    assert q.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(minilm.product_embeddings, axis=1), 1, atol=1e-5)
    # Same text, alone or batched with others of other lengths: the same vector.
    np.testing.assert_allclose(minilm.embed_queries(["red dress"])[0], q[0], atol=1e-5)


def test_minilm_is_semantically_sensible(minilm):
    dress, boots = minilm.embed_texts(["Women red summer dress", "Men black leather boots"])
    query = minilm.embed_queries(["red dress"])[0]
    assert query @ dress > query @ boots + 0.2


def test_minilm_recall_of_paraphrases_beats_chance(minilm):
    targets = np.arange(len(TITLES))
    # Chance recall@1 is 1/20.
    assert recall_at(minilm, PARAPHRASES, targets, 1) >= 0.6
    scores, idx = minilm.search(PARAPHRASES, 3)
    np.testing.assert_allclose(minilm.score(PARAPHRASES, idx[:, 0]), scores[:, 0], atol=1e-5)


def test_minilm_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(minilm.model_dir), device="cpu")
    ref = model.encode(TITLES[:5], convert_to_numpy=True)
    np.testing.assert_allclose(minilm.product_embeddings[:5], ref, atol=1e-5)


# ---------------------------------------------------------------------------------------------- Random


def test_random_vectors_are_stable_per_text_and_seed():
    a, b = RandomEmbeddings(seed=0), RandomEmbeddings(seed=1)
    q = a.embed_queries(["red dress", "blue shirt", "red dress"])
    np.testing.assert_array_equal(q[0], q[2])
    assert not np.allclose(q[0], q[1])
    np.testing.assert_array_equal(RandomEmbeddings(seed=0).embed_queries(["red dress"])[0], q[0])
    assert not np.allclose(b.embed_queries(["red dress"])[0], q[0])
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1, atol=1e-6)
    a.fit(products(TITLES))
    b.fit(products(TITLES))
    assert a.product_embeddings.shape == (len(TITLES), 128)
    assert not np.allclose(a.product_embeddings, b.product_embeddings)


def test_random_recall_is_near_chance():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(500)]
    titles = [" ".join(rng.choice(words, 6)) for _ in range(400)]
    queries = [" ".join(t.split()[:3]) for t in titles]
    random = RandomEmbeddings()
    random.fit(products(titles))
    targets = np.arange(len(titles))
    # Chance recall@20 is 20/400 = 0.05; BM25 on the same queries is near perfect.
    assert recall_at(random, queries, targets, 20) < 0.12
    bm25 = BM25Titles()
    bm25.fit(products(titles))
    assert recall_at(bm25, queries, targets, 20) > 0.9


# -------------------------------------------------------------------------------------------- Factory


def test_make_baselines():
    made = make_baselines(["bm25", "random", "minilm"])
    assert [r.name for r in made] == ["bm25", "random", "minilm"]
    assert all(isinstance(r, Retriever) for r in made)
    with pytest.raises(ValueError, match="known: random, bm25, minilm"):
        make_baselines(["bm25", "tfidf"])
    with pytest.raises(ValueError, match="duplicate"):
        make_baselines(["bm25", "bm25"])
