"""``ace-ray features``: images -> RoI patch features + pixel patches, as a streaming Ray Data pipeline.

Decoding, RoI detection, cropping and pixel patches run in Ray tasks; the CNN runs in an actor pool (on
GPUs where the cluster has them); results stream to the feature store's Parquet files. A bad image never
stops the pipeline: its row carries the reason instead of features and lands in the store's quarantine.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import ray

from ace_ray.config import FeaturesConfig
from ace_ray.data import feature_store as fs
from ace_ray.data.backbone import load_backbone
from ace_ray.data.images import BadImage, decode, detect_roi, locate, pixel_patches, square_crop
from ace_ray.data.schema import PRODUCTS_FILE, QUARANTINE_FILE, SchemaError
from ace_ray.data.validate import file_sha256, load_clean_products

_ROWS_PER_BLOCK = 256  # products per input block: small enough to spread over the decode tasks


def prepare_one(root: Path, rel: str, cfg: FeaturesConfig) -> dict:
    """Decode one image and cut its inputs; ``status`` is "ok" or why it cannot be used."""
    out = {"status": fs.OK, "roi": [0, 0, 0, 0], "roi_found": False, "width": 0, "height": 0,
           "image": b"", "pixels": b""}  # fmt: skip
    path, why = locate(root, rel)
    if why:
        return out | {"status": why}
    try:
        img = decode(path.read_bytes(), cfg.max_side, cfg.min_side)
    except BadImage as exc:
        return out | {"status": str(exc)}
    h, w = img.shape[:2]
    box, found = detect_roi(img, cfg.roi_params) if cfg.roi else ((0, 0, w, h), False)
    return out | {
        "roi": list(box),
        "roi_found": found,
        "width": w,
        "height": h,
        "image": square_crop(img, box, cfg.cnn_input).tobytes(),
        "pixels": pixel_patches(img, cfg.pixel_size, cfg.pixel_patch).tobytes(),
    }


def prepare(batch: pd.DataFrame, root: str, cfg: FeaturesConfig) -> pd.DataFrame:
    """Ray Data task: a batch of (product_id, image_path) -> decoded CNN inputs and pixel patches."""
    rows = [prepare_one(Path(root), rel, cfg) for rel in batch["image_path"]]
    out = pd.DataFrame(rows)
    out.insert(0, "product_id", batch["product_id"].to_numpy())
    return out


class CnnFeaturizer:
    """Ray Data actor: the CNN over a batch of prepared crops -> float16 patch features."""

    def __init__(self, cfg: FeaturesConfig, threads: int):
        import torch

        torch.set_num_threads(threads)  # fractional-CPU actors would otherwise get one OMP thread
        self.cfg = cfg
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.backbone = load_backbone(cfg.backbone).to(self.device)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        import torch

        ok = (batch["status"] == fs.OK).to_numpy()
        feats = [b""] * len(batch)
        if ok.any():
            s = self.cfg.cnn_input
            imgs = np.stack([np.frombuffer(b, np.uint8).reshape(s, s, 3) for b in batch["image"][ok]])
            x = torch.from_numpy(imgs).to(self.device, non_blocking=True)
            out = self.backbone.patch_features(x, self.cfg.grid).to("cpu", torch.float16).numpy()
            for i, f in zip(np.flatnonzero(ok), out, strict=True):
                feats[i] = f.tobytes()
        return batch.drop(columns=["image"]).assign(patch_features=feats)


def manifest_for(cfg: FeaturesConfig) -> fs.FeatureManifest:
    """The manifest features made with ``cfg`` will carry (loads the backbone to read its weights)."""
    b = load_backbone(cfg.backbone)
    return fs.FeatureManifest(
        backbone=cfg.backbone, weights_sha256=b.weights_sha256, roi=cfg.roi, grid=cfg.grid,
        feature_dim=b.dim, cnn_input=cfg.cnn_input, pixel_size=cfg.pixel_size, pixel_patch=cfg.pixel_patch,
        decode=fs.decode_settings(cfg),
    )  # fmt: skip


def _pool(cfg: FeaturesConfig) -> tuple[int, float, float, int]:
    """(actors, CPUs per actor, GPUs per actor, torch threads per actor) for this cluster."""
    res = ray.cluster_resources()
    gpus = cfg.cnn_gpus or (1.0 if res.get("GPU", 0) >= 1 else 0.0)
    if cfg.cnn_actors:
        actors = cfg.cnn_actors
    elif gpus:
        actors = max(1, int(res["GPU"] // gpus))
    else:
        actors = max(1, int((res.get("CPU", 1) - cfg.decode_cpus - cfg.write_cpus) // cfg.cnn_cpus))
    return actors, cfg.cnn_cpus, gpus, max(1, math.ceil(cfg.cnn_cpus))


def build_features(root: str | Path, cfg: FeaturesConfig, out: str | Path | None = None) -> dict:
    """Featurise every validated product of catalogue ``root`` (Ray must be running); returns stats.

    The store is written to a staging folder and published only when complete, so an interrupted run
    never leaves something later commands would take for features."""
    root = Path(root).resolve()
    products = load_clean_products(root)
    if products.empty:
        raise SchemaError(f"{root}: every product is quarantined, nothing to featurise; the reasons are in "
                          f"{QUARANTINE_FILE} (`ace-ray validate {root}` prints them)")  # fmt: skip
    manifest = manifest_for(cfg)
    staging = fs.FeatureStore.create(Path(out or cfg.out or root / "features").resolve(), manifest)
    try:
        return _build(root, products, cfg, manifest, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when published


def _build(
    root: Path, products: pd.DataFrame, cfg: FeaturesConfig, manifest: fs.FeatureManifest, staging: Path
) -> dict:
    actors, cpus, gpus, threads = _pool(cfg)
    t0 = time.perf_counter()
    blocks = [products.iloc[i : i + _ROWS_PER_BLOCK][["product_id", "image_path"]]
              for i in range(0, len(products), _ROWS_PER_BLOCK)]  # fmt: skip
    ds = (
        ray.data.from_pandas(blocks or [products[["product_id", "image_path"]]])
        .map_batches(
            prepare,
            fn_kwargs={"root": str(root), "cfg": cfg},
            batch_format="pandas",
            batch_size=64,
            num_cpus=cfg.decode_cpus,
            # One decode task at a time outruns the CNN; more would take the CPU share the writer needs,
            # and unwritten results would then pile up in memory.
            compute=ray.data.TaskPoolStrategy(size=1),
        )  # fmt: skip
        .map_batches(
            CnnFeaturizer,
            fn_constructor_kwargs={"cfg": cfg, "threads": threads},
            compute=ray.data.ActorPoolStrategy(size=actors),
            batch_size=cfg.batch_size,
            batch_format="pandas",
            num_cpus=cpus,
            num_gpus=gpus,
        )
    )
    # A fixed cap on results in flight keeps memory flat whatever the catalogue size.
    limits = ds.context.execution_options.resource_limits
    ds.context.execution_options.resource_limits = limits.copy(object_store_memory=cfg.inflight_mb * 2**20)
    ds.write_parquet(str(staging), ray_remote_args={"num_cpus": cfg.write_cpus})
    seconds = time.perf_counter() - t0
    parts = sorted(str(p) for p in staging.glob("*.parquet"))
    status = pq.ParquetDataset(parts).read(columns=["product_id", "status", "roi_found"]).to_pandas()
    bad = status[status["status"] != fs.OK]
    bad = bad.merge(products[["product_id", "image_path"]], on="product_id", how="left")
    bad.rename(columns={"status": "reason"})[["product_id", "image_path", "reason"]].to_parquet(
        staging / fs.QUARANTINE
    )
    stats = {
        "products_in": len(products),
        "featurised": int((status["status"] == fs.OK).sum()),
        "quarantined": len(bad),
        "roi_found_share": round(float(status.loc[status["status"] == fs.OK, "roi_found"].mean() or 0), 4),
        "seconds": round(seconds, 2),
        "images_per_s": round(len(products) / seconds, 2),
        "cnn_actors": actors,
        "version": manifest.version,
        # The catalogue these features describe, so a store can be told apart from a re-import's.
        "products_sha256": file_sha256(root / PRODUCTS_FILE),
    }
    return {**stats, "store": str(fs.FeatureStore.publish(staging, manifest, stats).path)}
