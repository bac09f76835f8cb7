"""``ace-ray import fashion-products``: the real Myntra catalogue in shared/ into the data contract.

Its click log does not exist: impressions are simulated from the real attributes (gender, colour, usage,
article type) by the same click model as ``synth`` and are marked ``simulated`` in the manifest.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ace_ray.config import ClickModelConfig, SynthConfig
from ace_ray.data.catalogue import staged_catalogue
from ace_ray.data.importers.common import (
    bring_images,
    clean_attribute,
    finish_import,
    read_any,
)
from ace_ray.data.schema import Manifest, SchemaError

STYLES_FILE = "styles.csv"
COLUMNS = ["id", "gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage",
           "productDisplayName"]  # fmt: skip
# Query words in the order shoppers put them: "women blue heels".
ATTRIBUTES = ["gender", "colour"]


def to_products(styles: pd.DataFrame) -> pd.DataFrame:
    """Map ``styles.csv`` rows to the contract; an empty articleType falls back to the subCategory."""
    missing = [c for c in COLUMNS if c not in styles.columns]
    if missing:
        raise SchemaError(f"{STYLES_FILE}: missing column(s) {', '.join(missing)}")
    master, sub = clean_attribute(styles["masterCategory"]), clean_attribute(styles["subCategory"])
    article = clean_attribute(styles["articleType"])
    leaf = article.where(article.notna(), sub)
    path = ["/".join(str(p) for p in parts if p is not None) for parts in zip(master, sub, leaf, strict=True)]
    return pd.DataFrame(
        {
            "product_id": styles["id"].astype(str).str.strip(),
            "title": styles["productDisplayName"].astype(str).str.strip(),
            "category": leaf,
            "category_path": path,
            "image_path": styles["id"].astype(str).str.strip() + ".jpg",
            "gender": clean_attribute(styles["gender"]),
            "colour": clean_attribute(styles["baseColour"]),
            "season": clean_attribute(styles["season"]),
            "usage": clean_attribute(styles["usage"]),
            "master_category": master,
            "sub_category": sub,
            "article_type": article,
        }
    )


def import_fashion_products(
    src: str | Path, out: str | Path, sim: SynthConfig, clicks: ClickModelConfig
) -> Manifest:
    """Import ``src`` (styles.csv + images/) into ``out`` (Ray must be initialised)."""
    src, out = Path(src).resolve(), Path(out).resolve()
    if not (src / STYLES_FILE).is_file():
        raise SchemaError(f"{src}: no {STYLES_FILE} here; is this the fashion-products folder?")
    with staged_catalogue(out, [src / STYLES_FILE], src / "images") as stage:
        products = to_products(read_any(src / STYLES_FILE))
        products["image_path"] = bring_images(src / "images", products["image_path"], stage, out)
        params = {"src": str(src), "days": sim.days, "sessions": sim.sessions, "seed": sim.seed}
        manifest = finish_import(stage, products, "fashion-products", ATTRIBUTES, None, sim, clicks, params)
    return manifest
