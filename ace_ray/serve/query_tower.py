"""The query tower on CPU, two ways: PyTorch, and an ONNX export run by ONNX Runtime (usually the faster
for small BERTs; ``benchmarks/serve_latency.py`` measures both). Both tokenise exactly as training did and
return unit embeddings, so either can stand in for the other (``tests/serve/test_query_tower.py`` checks
they retrieve the same top 100)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ace_ray.data import text
from ace_ray.model.encoder import trim_padding
from ace_ray.model.towers import TwoTower, encode_query_texts, load_towers
from ace_ray.serve.index_dir import model_hash

log = logging.getLogger(__name__)


class _QueryGraph(nn.Module):
    """The query path of the towers alone (ids, mask -> unit embedding), for export."""

    def __init__(self, towers: TwoTower):
        super().__init__()
        self.towers = towers

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        seq, _, _ = self.towers.encoder(ids, mask)
        return self.towers._embed(seq, mask)  # the towers' own pooling and projection


def export_onnx(model_dir: str | Path, out: str | Path) -> Path:
    """Export the query tower of ``model_dir`` to ONNX at ``out`` (batch and length dynamic)."""
    towers, info = load_towers(model_dir)
    q = text.encode(
        ["a query", "another longer query text"], info["text"]["max_query"], info["text"]["tokenizer"]
    )
    ids, mask = (torch.from_numpy(q[k].astype(np.int64)) for k in ("input_ids", "attention_mask"))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    axes = {"ids": {0: "batch", 1: "length"}, "mask": {0: "batch", 1: "length"}, "emb": {0: "batch"}}
    with torch.inference_mode():
        # The TorchScript exporter: the dynamo one needs onnxscript, which this project does not install.
        torch.onnx.export(_QueryGraph(towers).eval(), (ids, mask), str(tmp), dynamo=False, input_names=["ids", "mask"],
                          output_names=["emb"], dynamic_axes=axes, opset_version=17)  # fmt: skip
    tmp.replace(out)  # atomic: replicas starting together never read a half-written file
    return out


class TorchQueryEncoder:
    """Queries -> unit embeddings with the PyTorch query tower."""

    backend = "torch"

    def __init__(self, model_dir: str | Path, threads: int = 1):
        torch.set_num_threads(threads)
        self.towers, self.info = load_towers(model_dir)
        self.dim = self.towers.proj.out_features

    def encode(self, queries: list[str]) -> np.ndarray:
        return encode_query_texts(self.towers, queries, self.info["text"])


class OnnxQueryEncoder:
    """Queries -> unit embeddings with the exported query tower in ONNX Runtime."""

    backend = "onnx"

    def __init__(self, model_dir: str | Path, threads: int = 1, cache_dir: str | Path | None = None):
        import onnxruntime as ort

        from ace_ray.model.encoder import read_info

        self.info = read_info(model_dir)
        cache = Path(cache_dir or Path(tempfile.gettempdir()) / "ace-ray-onnx")
        path = cache / f"{model_hash(model_dir)}.onnx"
        if not path.is_file():
            export_onnx(model_dir, path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.dim = int(self.info["embed_dim"])

    def encode(self, queries: list[str]) -> np.ndarray:
        if not queries:
            return np.zeros((0, self.dim), np.float32)
        t = self.info["text"]
        q = text.encode(queries, t["max_query"], t["tokenizer"])
        mask, ids = trim_padding(torch.from_numpy(q["attention_mask"]), torch.from_numpy(q["input_ids"]))
        feed = {"ids": ids.numpy().astype(np.int64), "mask": mask.numpy().astype(np.int64)}
        return self.session.run(None, feed)[0].astype(np.float32)


def load_query_encoder(model_dir: str | Path, backend: str = "auto", threads: int = 1):
    """The query encoder for ``backend``: onnx, torch, or auto (ONNX Runtime, PyTorch if the export fails)."""
    if backend == "torch":
        return TorchQueryEncoder(model_dir, threads)
    try:
        return OnnxQueryEncoder(model_dir, threads)
    except Exception as exc:
        if backend == "onnx":
            raise
        log.warning("query tower: ONNX export or load failed (%s); serving the PyTorch tower", exc)
        return TorchQueryEncoder(model_dir, threads)
