"""Writing a catalogue directory: products, impressions, manifest (and synth's ground truth)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from ace_ray.data.schema import (
    GROUND_TRUTH_FILE,
    IMPRESSIONS_FILE,
    IMPRESSIONS_SCHEMA,
    PRODUCTS_FILE,
    PRODUCTS_SCHEMA,
    Manifest,
    write_table,
)


def write_catalogue(
    root: str | Path,
    products: pd.DataFrame,
    impressions: pd.DataFrame,
    manifest: Manifest,
    ground_truth: pd.DataFrame | None = None,
) -> Path:
    """Write the contract's files under ``root``; products keep their extra attribute columns."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_table(products, root / PRODUCTS_FILE, PRODUCTS_SCHEMA)
    write_table(impressions, root / IMPRESSIONS_FILE, IMPRESSIONS_SCHEMA)
    if ground_truth is not None:
        write_table(ground_truth, root / GROUND_TRUTH_FILE)
    manifest.counts = {
        "products": len(products),
        "impressions": len(impressions),
        "sessions": int(impressions["session_id"].nunique()),
        "clicks": int(impressions["clicked"].sum()),
        "days": int(impressions["day"].nunique()),
    }
    manifest.write(root)
    return root


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link an image into the catalogue (no extra disk), copying across file systems.

    ``dst`` is never the source itself: unlinking it first would delete the user's photo."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        if os.path.samefile(src, dst):
            return
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
