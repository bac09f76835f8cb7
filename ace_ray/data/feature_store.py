"""The feature store: a versioned Parquet dataset keyed by product_id, with a manifest.

Layout: ``<store>/<version>/manifest.json``, ``part-*.parquet`` (one row per product: ``status`` is "ok"
or the reason it was quarantined), ``quarantine.parquet`` and ``stats.json``. A store is built in a staging
folder (``<store>/.<version>.partial``) and renamed into place when finished, ``stats.json`` written last:
a folder without it is an interrupted run, and is refused. The version is a hash of the manifest, so
features made with another backbone, weights, grid or code never mix with these, and a model that expects
one manifest refuses to load another.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ace_ray.config import FeaturesConfig

# Bump when the features a given config produces change (RoI, cropping, pooling, pixel layout).
FEATURE_CODE_VERSION = 1
MANIFEST = "manifest.json"
QUARANTINE = "quarantine.parquet"
STATS = "stats.json"
OK = "ok"
# Columns of the store: roi is (x, y, w, h) in the decoded image; the arrays are raw little-endian bytes.
PATCH_DTYPE, PIXEL_DTYPE = np.float16, np.uint8


class FeatureMismatch(ValueError):
    """Features made under another manifest than the one a consumer expects."""


class NoMatchingStore(FeatureMismatch):
    """Feature stores exist, but none made with the workload's settings from the catalogue as it is now."""


class IncompleteStore(FileNotFoundError):
    """A feature store folder that an interrupted ``ace-ray features`` left unfinished."""


def is_complete(path: str | Path) -> bool:
    """Whether ``path`` is a finished store: its manifest and ``stats.json``, which is written last."""
    path = Path(path)
    return (path / MANIFEST).is_file() and (path / STATS).is_file()


@dataclass(frozen=True)
class FeatureManifest:
    backbone: str
    weights_sha256: str
    roi: bool
    grid: int
    feature_dim: int
    cnn_input: int
    pixel_size: int
    pixel_patch: int
    patch_dtype: str = np.dtype(PATCH_DTYPE).name
    code_version: int = FEATURE_CODE_VERSION
    # The image-decoding settings that differ from their defaults (``decode_settings``): other features.
    decode: dict = field(default_factory=dict)

    @property
    def version(self) -> str:
        # Default decoding leaves the field out, so stores made before it existed keep their names.
        blob = json.dumps({k: v for k, v in asdict(self).items() if k != "decode" or v}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def patches(self) -> int:
        return self.grid * self.grid

    @property
    def pixel_patches(self) -> int:
        return (self.pixel_size // self.pixel_patch) ** 2

    @property
    def pixel_dim(self) -> int:
        return self.pixel_patch * self.pixel_patch * 3

    def stack_patches(self, blobs) -> np.ndarray:
        """Rows' patch-feature bytes -> [n, grid*grid, feature_dim] in the store's dtype."""
        return np.stack([np.frombuffer(b, PATCH_DTYPE) for b in blobs]).reshape(
            -1, self.patches, self.feature_dim
        )

    def stack_pixels(self, blobs) -> np.ndarray:
        """Rows' pixel-patch bytes -> uint8 [n, n_patches, patch*patch*3]."""
        return np.stack([np.frombuffer(b, PIXEL_DTYPE) for b in blobs]).reshape(
            -1, self.pixel_patches, self.pixel_dim
        )


class FeatureStore:
    """One version of features on disk."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / MANIFEST).is_file():
            raise FileNotFoundError(f"{self.path}: no feature manifest ({MANIFEST}); run `ace-ray features`")
        if not is_complete(self.path):
            raise IncompleteStore(
                f"{self.path}: incomplete feature store (no {STATS}; an interrupted `ace-ray features`?); "
                "run `ace-ray features` again"
            )
        self.manifest = FeatureManifest(**json.loads((self.path / MANIFEST).read_text()))

    @classmethod
    def create(cls, root: str | Path, manifest: FeatureManifest) -> Path:
        """An empty staging folder for ``manifest``'s version under ``root``; ``publish`` makes it the store.

        Nothing there looks like a store (no manifest) until it is published."""
        staging = Path(root) / f".{manifest.version}.partial"
        if staging.exists():  # left by an interrupted run
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        return staging

    @classmethod
    def publish(cls, staging: str | Path, manifest: FeatureManifest, stats: dict) -> FeatureStore:
        """Finish a staged store: its manifest, then ``stats.json`` (the completion mark), then a rename
        into ``<root>/<version>``, replacing the features this version had before."""
        staging = Path(staging)
        final = staging.parent / manifest.version
        (staging / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2))
        (staging / STATS).write_text(json.dumps({**stats, "store": str(final)}, indent=2))
        old = staging.parent / f".{manifest.version}.old"
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
        os.rename(staging, final)
        shutil.rmtree(old, ignore_errors=True)
        return cls(final)

    def check(self, expected: FeatureManifest) -> None:
        """Raise ``FeatureMismatch`` naming every field that differs from ``expected``."""
        have, want = asdict(self.manifest), asdict(expected)
        diff = [f"{k}: store has {have[k]!r}, expected {want[k]!r}" for k in want if have.get(k) != want[k]]
        if diff:
            raise FeatureMismatch(
                f"{self.path}: features were made with another manifest; " + "; ".join(diff)
            )

    def parts(self) -> list[str]:
        return sorted(str(p) for p in self.path.glob("*.parquet") if p.name != QUARANTINE)

    def dataset(self, columns: list[str]):
        """A Ray Dataset of the featurised rows (status "ok"), with ``product_id`` and ``columns``."""
        import ray.data

        ds = ray.data.read_parquet(self.parts(), columns=["product_id", "status", *columns])
        return ds.filter(lambda r: r["status"] == OK).drop_columns(["status"])

    def read(self, columns: list[str] | None = None, ok_only: bool = True,
             ids: list[str] | None = None) -> pd.DataFrame:  # fmt: skip
        """The store as a DataFrame (small catalogues and tests; pipelines stream ``parts()``); only the
        products ``ids`` when given (filtered while reading)."""
        cols = None if columns is None else list(dict.fromkeys(["product_id", "status", *columns]))
        filters = None if ids is None else [("product_id", "in", list(ids))]
        df = pq.ParquetDataset(self.parts(), filters=filters).read(columns=cols).to_pandas()
        return df[df["status"] == OK].reset_index(drop=True) if ok_only else df

    def patch_features(self, blob: bytes) -> np.ndarray:
        """One row's RoI patch features as float32 [grid*grid, feature_dim]."""
        return self.manifest.stack_patches([blob])[0].astype(np.float32)

    def pixels(self, blob: bytes) -> np.ndarray:
        """One row's pixel patches as uint8 [n_patches, patch*patch*3]."""
        return self.manifest.stack_pixels([blob])[0]


def latest(root: str | Path, roi: bool | None = None) -> FeatureStore:
    """The most recently written version under ``root`` (with RoI or whole-image patches, when ``roi`` is
    given: presets such as FashionBERT need whole-image grid patches)."""
    versions = sorted(Path(root).glob(f"*/{MANIFEST}"), key=lambda p: p.stat().st_mtime)
    stores = [FeatureStore(v.parent) for v in versions]
    if roi is not None:
        stores = [s for s in stores if s.manifest.roi == roi]
    if not stores:
        kind = {None: "", True: "RoI ", False: "whole-image "}[roi]
        hint = " --whole-image" if roi is False else ""
        raise FileNotFoundError(f"{root}: no {kind}features yet; run `ace-ray features{hint}`")
    return stores[-1]


# The manifest fields a workload's data.features settings decide (the rest follow from the backbone).
_SETTINGS = ("backbone", "roi", "grid", "cnn_input", "pixel_size", "pixel_patch")


def decode_settings(cfg: FeaturesConfig) -> dict:
    """The settings of ``data.features`` (a ``FeaturesConfig``) that decide how images are decoded and cropped
    (``max_side``, ``min_side``, and ``roi_params.*`` for RoI features) where they differ from the defaults."""

    def flat(c) -> dict:
        roi = {f"roi_params.{k}": v for k, v in asdict(c.roi_params).items()} if cfg.roi else {}
        return {"max_side": c.max_side, "min_side": c.min_side, **roi}

    default = flat(FeaturesConfig())
    return {k: v for k, v in flat(cfg).items() if v != default[k]}


def for_workload(w) -> FeatureStore:
    """The feature store a workload trains on, under ``data.features.out`` (default
    ``<data.root>/features``): the finished one whose manifest matches every ``data.features`` setting it
    records (backbone, roi, grid, cnn_input, pixel_size, pixel_patch, the decoding) and this code's feature version, made
    from the catalogue's products file as it is now. None, or more than one (the same settings with other
    weights), is an error that names the fields."""
    cfg = w.data.features
    root = w.path(cfg.out) if cfg.out else w.path(w.data.root) / "features"
    want = {k: getattr(cfg, k) for k in _SETTINGS} | {
        "decode": decode_settings(cfg),
        "code_version": FEATURE_CODE_VERSION,
    }
    stores = [
        FeatureStore(m.parent) for m in sorted(Path(root).glob(f"*/{MANIFEST}")) if is_complete(m.parent)
    ]
    hint = " --whole-image" if cfg.roi is False else ""
    if not stores:
        raise FileNotFoundError(f"{root}: no features yet; run `ace-ray features{hint}`")
    # Features of another version of the catalogue (re-imported or re-synthesised since) are not these.
    products = w.path(w.data.root) / "products.parquet"
    if products.is_file():
        from ace_ray.data.validate import file_sha256

        now = file_sha256(products)
        current = [
            s for s in stores if json.loads((s.path / STATS).read_text()).get("products_sha256", now) == now
        ]
        if not current:
            raise NoMatchingStore(f"{root}: the features were made from another {products.name} than the one in "
                                  f"{products.parent} now; run `ace-ray features{hint}` again")  # fmt: skip
        stores = current

    def diff(s: FeatureStore) -> list[str]:
        have = asdict(s.manifest)
        return [f"{k}: store has {have[k]!r}, workload {v!r}" for k, v in want.items() if have[k] != v]

    match = [s for s in stores if not diff(s)]
    if len(match) == 1:
        return match[0]
    if not match:
        near = min(stores, key=lambda s: len(diff(s)))
        raise NoMatchingStore(
            f"{root}: no feature store matches the workload's data.features; the nearest, {near.path.name}, "
            f"differs in {'; '.join(diff(near))}. Run `ace-ray features` with these settings, or set them "
            "to the store's"
        )
    weights = "; ".join(f"{s.path.name}: weights_sha256 {s.manifest.weights_sha256[:12]}" for s in match)
    raise FeatureMismatch(
        f"{root}: {len(match)} feature stores match the workload's data.features ({weights}): made from "
        "different weights of the same backbone; remove the stale one or point data.features.out elsewhere"
    )
