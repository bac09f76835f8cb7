"""Query-tower distillation (paper 4.7): a student with the teacher's first ``distill.layers`` layers
learns to reproduce the teacher's query embeddings, so the online query encoder is cheaper while the
product side (embedded offline) stays the teacher's.

The student is trained on the train days' queries (their clicks are what the towers were fine-tuned on)
with the cosine distance to the teacher's embedding as the loss. Small and text only: one process.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch

from ace_ray.config import DistillConfig
from ace_ray.data import text
from ace_ray.data.clicks import clean_clicks
from ace_ray.model.towers import TwoTower, encode_query_texts, load_towers, save_towers


def student_of(teacher: TwoTower, layers: int) -> TwoTower:
    """A copy of the teacher keeping its first ``layers`` transformer layers (initialised from them)."""
    n = len(teacher.encoder.bert.encoder.layer)
    if not 1 <= layers < n:
        raise ValueError(
            f"finetune.distill.layers must be between 1 and {n - 1} (the teacher has {n}), got {layers}"
        )
    student = copy.deepcopy(teacher)
    bert = student.encoder.bert
    bert.encoder.layer = bert.encoder.layer[:layers]
    bert.config.num_hidden_layers = layers
    return student


def ms_per_query(towers: TwoTower, queries: list[str], text_cfg: dict, repeats: int = 3) -> float:
    """Best-of-``repeats`` encode time per query, batches of 256 (what a batching server would see)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        encode_query_texts(towers, queries, text_cfg)
        best = min(best, time.perf_counter() - t0)
    return 1000 * best / max(1, len(queries))


def distill(model_dir: str | Path, root: str | Path, test_days: int, cfg: DistillConfig, out: str | Path,
            seed: int = 0) -> dict:  # fmt: skip
    """Train a student query tower against the teacher in ``model_dir``; save it as a model directory
    (the student's query tower; the product tower is the teacher's) and return the training figures."""
    teacher, info = load_towers(model_dir)
    text_cfg = info["text"]
    queries = sorted(set(clean_clicks(root, test_days)["query"]))
    if not queries:
        raise ValueError(f"{root}: no train-day clicks: no queries to distil on")
    torch.manual_seed(seed)
    target = torch.from_numpy(encode_query_texts(teacher, queries, text_cfg))
    student = student_of(teacher, cfg.layers)

    def distance() -> float:  # in eval mode (no dropout), over every query
        emb = torch.from_numpy(encode_query_texts(student.eval(), queries, text_cfg))
        return float((1 - (emb * target).sum(-1)).mean())

    start = distance()
    student.train()
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr)  # image projections get no gradient: untouched
    tokens = text.encode(queries, text_cfg["max_query"], text_cfg["tokenizer"])
    ids, mask = (torch.from_numpy(tokens[k].astype(np.int64)) for k in ("input_ids", "attention_mask"))
    losses = []
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(queries))
        total = 0.0
        for i in range(0, len(order), cfg.batch_size):
            b = order[i : i + cfg.batch_size]
            loss = (1 - (student.encode_queries(ids[b], mask[b]) * target[b]).sum(-1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        losses.append(total / len(queries))
        print(
            f"[distill] epoch {epoch + 1}/{cfg.epochs}: cosine distance to the teacher {losses[-1]:.4f}",
            flush=True,
        )
    final = distance()
    meta = {"feature_manifest": info["feature_manifest"], "preset": info.get("preset"), "text": text_cfg,
            "distilled_from": str(model_dir), "query_layers": cfg.layers}  # fmt: skip
    save_towers(student, out, text_cfg["tokenizer"], meta)
    sample = queries[: min(len(queries), 2048)]
    return {"queries": len(queries), "initial_distance": start, "final_distance": final, "losses": losses,
            "teacher_ms_per_query": ms_per_query(teacher, sample, text_cfg),
            "student_ms_per_query": ms_per_query(student, sample, text_cfg)}  # fmt: skip
