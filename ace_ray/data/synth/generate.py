"""``ace-ray synth``: the embedded default catalogue and click log, generated in parallel Ray tasks.

Products come in fixed-size shards, each a Ray task seeded by (seed, shard), so the output is identical for
any number of workers. The true attributes and image boxes go to ``ground_truth.parquet``, which training
never reads.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import ray

from ace_ray.config import ClickModelConfig, ConfigError, SynthConfig
from ace_ray.data import clicklog
from ace_ray.data.catalogue import staged_catalogue, write_catalogue
from ace_ray.data.schema import PRODUCTS_SCHEMA, Manifest, image_shard
from ace_ray.data.synth.render import render
from ace_ray.data.synth.taxonomy import BRANDS, COLOURS, GENDERS, LEAVES, PATTERN_P, PATTERNS, STYLES
from ace_ray.data.synth.titles import MENTION_P, write_title
from ace_ray.runtime import run_bounded

_PRODUCT_STREAM = 7
ATTRIBUTES = ["brand", "gender", "colour", "pattern", "material", "style"]
_COLOUR_W = np.array([3, 2.5, 1.5, 1.2, 1.5, 1.2, 1, 0.7, 1, 0.7, 0.6, 1, 1])
_GENDER_P = [0.45, 0.35, 0.1, 0.1]
_BRAND_W = 1.0 / np.arange(1, len(BRANDS) + 1) ** 0.9
_LEAF_W = np.array([leaf.weight for leaf in LEAVES])
_JPEG_QUALITY = 90


def make_products(shard: int, cfg: SynthConfig, root: str) -> pd.DataFrame:
    """Products ``[shard * shard_size, ...)``: attributes, title and a rendered image written under ``root``."""
    rng = np.random.default_rng([cfg.seed, _PRODUCT_STREAM, shard])
    first = shard * cfg.shard_size
    count = min(cfg.shard_size, cfg.products - first)
    rows = []
    for i in range(first, first + count):
        leaf = LEAVES[rng.choice(len(LEAVES), p=_LEAF_W / _LEAF_W.sum())]
        attrs = {
            "brand": BRANDS[rng.choice(len(BRANDS), p=_BRAND_W / _BRAND_W.sum())],
            "gender": GENDERS[rng.choice(len(GENDERS), p=_GENDER_P)] if leaf.gendered else None,
            "colour": list(COLOURS)[rng.choice(len(COLOURS), p=_COLOUR_W / _COLOUR_W.sum())],
            "pattern": PATTERNS[rng.choice(len(PATTERNS), p=PATTERN_P)],
            "material": str(rng.choice(leaf.materials)),
            "style": str(rng.choice(STYLES)),
        }
        pid = f"p{i:07d}"
        rel_path = f"{image_shard(i)}/{pid}.jpg"
        img, box = render(leaf.shape, attrs["colour"], attrs["pattern"], leaf.aspect, cfg.image_size, rng)
        path = Path(root) / rel_path
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]):
            raise OSError(f"cannot write image {path}")
        rows.append(
            {
                "product_id": pid,
                "title": write_title(attrs, leaf.name, rng, tuple(cfg.hide_in_title)),
                "category": leaf.name,
                "category_path": f"{leaf.top}/{leaf.name}",
                "image_path": rel_path,
                **attrs,
                "quality": float(np.clip(rng.lognormal(0.0, 0.35), 0.2, 1.99)),
                "box_x": box[0],
                "box_y": box[1],
                "box_w": box[2],
                "box_h": box[3],
            }
        )
    return pd.DataFrame(rows)


@ray.remote
def _make_products_task(shard: int, cfg: SynthConfig, root: str) -> pd.DataFrame:
    return make_products(shard, cfg, root)


def synthesize(cfg: SynthConfig, clicks: ClickModelConfig, out: str | Path) -> dict[str, float]:
    """Generate the whole catalogue into ``out`` (Ray must be initialised); returns timing figures."""
    for key in ("products", "days", "sessions", "shard_size"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"data.synth.{key} must be at least 1 (got {getattr(cfg, key)})")
    unknown = sorted(set(cfg.hide_in_title) - set(MENTION_P))
    if unknown:
        raise ConfigError(f"data.synth.hide_in_title: {', '.join(unknown)} not in a synth title; "
                          f"one of {', '.join(MENTION_P)}")  # fmt: skip
    root = Path(out).resolve()
    t0 = time.perf_counter()
    n_shards = -(-cfg.products // cfg.shard_size)
    # Drawn into a staging folder and published whole: an interrupted re-synth must not leave new photos
    # beside the old products table.
    with staged_catalogue(root, [], None) as stage:
        shards = run_bounded(
            lambda s: _make_products_task.remote(s, cfg, str(stage)),
            list(range(n_shards)),
            cfg.workers,
            "products",
        )
        truth = pd.concat(shards, ignore_index=True)
        t_products = time.perf_counter() - t0
        impressions = clicklog.simulate_impressions(
            truth, ATTRIBUTES, clicks, cfg, truth["quality"].to_numpy()
        )
        t_total = time.perf_counter() - t0
        manifest = Manifest(
            source="synth", impressions="simulated", params=vars(cfg) | {"clicks": vars(clicks)}
        )
        products = truth[PRODUCTS_SCHEMA.names]
        truth = truth.drop(columns=["title", "category_path", "image_path"])
        write_catalogue(stage, products, impressions, manifest, ground_truth=truth)
    return {
        "products": float(len(products)),
        "impressions": float(len(impressions)),
        "seconds_products": t_products,
        "seconds_total": t_total,
        "products_per_s": len(products) / t_products,
    }
