"""A fine-tuned model as a retriever: products embedded by a Ray Data job (actors holding the product
tower read the feature store; in the driver for a catalogue under ``eval.embed_in_driver_below``
products), queries by the query tower in the driver. It then scores and searches like
every baseline (``EmbeddingRetriever``), and its product embeddings are what the FAISS index holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ace_ray.config import EvalConfig
from ace_ray.data import feature_store as fs
from ace_ray.data import text
from ace_ray.data.clicks import check_split
from ace_ray.data.hot_queries import read_hot_queries
from ace_ray.eval.baselines import EmbeddingRetriever
from ace_ray.model.towers import TwoTower, encode_query_texts, load_towers
from ace_ray.runtime import cluster_cpus


def product_inputs(
    rows: pd.DataFrame, manifest: fs.FeatureManifest, text_cfg: dict
) -> dict[str, torch.Tensor]:
    """Feature-store rows joined with title and hot queries -> the product tower's inputs."""
    t = text.encode(rows["title"].tolist(), text_cfg["max_title"], text_cfg["tokenizer"])
    h = text.encode([text.join_hot_queries(x) for x in rows["hot_queries"]], text_cfg["max_hot"],
                    text_cfg["tokenizer"])  # fmt: skip
    out = {"title_ids": t["input_ids"], "title_mask": t["attention_mask"], "hot_ids": h["input_ids"],
           "hot_mask": h["attention_mask"]}  # fmt: skip
    out = {k: torch.from_numpy(v.astype(np.int64)) for k, v in out.items()}
    # As stored (float16, uint8): the encoder converts them on its own device (see finetune.make_batch).
    out["patches"] = torch.from_numpy(manifest.stack_patches(rows["patch_features"]))
    out["pixels"] = torch.from_numpy(manifest.stack_pixels(rows["pixels"]))
    return out


class ProductEmbedder:
    """Ray Data actor: a batch of feature-store rows -> (product_id, embedding)."""

    def __init__(self, model_dir: str, lookup: pd.DataFrame, threads: int = 1):
        torch.set_num_threads(threads)
        self.towers, info = load_towers(model_dir)
        self.manifest = fs.FeatureManifest(**info["feature_manifest"])
        self.text_cfg = info["text"]
        self.lookup = lookup.set_index("product_id")

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        rows = batch.join(self.lookup, on="product_id", how="inner")
        with torch.inference_mode():
            emb = self.towers.encode_products(product_inputs(rows, self.manifest, self.text_cfg)).numpy()
        return pd.DataFrame({"product_id": rows["product_id"].to_numpy(), "emb": list(emb)})


class TowerRetriever(EmbeddingRetriever):
    """A fine-tuned model directory as a retriever over a catalogue's feature store."""

    def __init__(self, model_dir: str | Path, store: fs.FeatureStore, root: str | Path, cfg: EvalConfig,
                 test_days: int, name: str = "model"):  # fmt: skip
        super().__init__()
        self.test_days = test_days
        self.model_dir, self.store, self.root, self.cfg, self.name = (
            str(model_dir),
            store,
            Path(root),
            cfg,
            name,
        )
        self.towers: TwoTower
        self.towers, info = load_towers(model_dir)
        self.info = info
        store.check(fs.FeatureManifest(**info["feature_manifest"]))
        check_split(info.get("split"), root, test_days, f"the model in {model_dir}")

    def embed_queries(self, queries: list[str]) -> np.ndarray:
        return encode_query_texts(self.towers, queries, self.info["text"])

    def _embed_products(self, products: pd.DataFrame) -> np.ndarray:
        # The hot queries of the days the model trained on (its split), as in training.
        held_out = self.info.get("split", {}).get("test_days", self.test_days)
        hot = (read_hot_queries(self.root, held_out, self.info["text"]["hot_k"])[["product_id", "hot_queries"]]
               if self.towers.hot_queries else None)  # fmt: skip
        lookup = products[["product_id", "title"]]
        lookup = (
            lookup.merge(hot, on="product_id", how="left")
            if hot is not None
            else lookup.assign(hot_queries=None)
        )
        if len(products) < self.cfg.embed_in_driver_below:
            # Starting actors (each loads torch and the model) costs more than a small catalogue's forward.
            embedder = ProductEmbedder(self.model_dir, lookup, threads=torch.get_num_threads())
            rows = self.store.read(["patch_features", "pixels"], ids=products["product_id"].tolist())
            step = self.cfg.batch_size
            emb = pd.concat([embedder(rows.iloc[i : i + step]) for i in range(0, len(rows), step)] or [pd.DataFrame(
                {"product_id": [], "emb": []})])  # fmt: skip
        else:
            actors = self.cfg.embed_actors or max(1, cluster_cpus() // 2)
            ds = self.store.dataset(["patch_features", "pixels"])
            emb = ds.map_batches(ProductEmbedder, fn_constructor_kwargs={"model_dir": self.model_dir,
                                 "lookup": lookup}, batch_size=self.cfg.batch_size, batch_format="pandas",
                                 concurrency=actors, num_cpus=1).to_pandas()  # fmt: skip
        by_id = dict(zip(emb["product_id"], emb["emb"], strict=True))
        missing = [p for p in products["product_id"] if p not in by_id]
        if missing:
            raise ValueError(
                f"{self.store.path}: no embedding for {len(missing)} catalogue products, e.g. {missing[:3]}"
            )
        return np.stack([by_id[p] for p in products["product_id"]]).astype(np.float32)
