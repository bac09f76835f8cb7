"""``ace-ray import table``: a user's own catalogue from CSV or Parquet, columns mapped by flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ace_ray.config import ClickModelConfig, SynthConfig
from ace_ray.data.catalogue import staged_catalogue
from ace_ray.data.importers.common import (
    bring_images,
    clean_attribute,
    finish_import,
    normalise_ids,
    read_any,
)
from ace_ray.data.schema import Manifest, SchemaError


@dataclass
class ColumnMap:
    """Which of the user's columns hold the contract's fields."""

    id: str
    title: str
    category: str
    image: str
    category_path: str | None = None  # default (and for a row without one): the category itself
    attributes: list[str] = field(default_factory=list)  # used by the simulated click log and kept as columns


def to_products(table: pd.DataFrame, cols: ColumnMap, file: str) -> pd.DataFrame:
    """The user's table in the contract's columns; a mapped column that is not there is a clear error."""
    wanted = [cols.id, cols.title, cols.category, cols.image, *cols.attributes]
    wanted += [cols.category_path] if cols.category_path else []
    missing = [c for c in wanted if c not in table.columns]
    if missing:
        raise SchemaError(
            f"{file}: no column(s) {', '.join(missing)} (has: {', '.join(map(str, table.columns))})"
        )
    category = clean_attribute(table[cols.category])
    # A product without a path is filed under its category alone, as when no path column is mapped.
    path = clean_attribute(table[cols.category_path]).fillna(category) if cols.category_path else category
    products = pd.DataFrame(
        {
            "product_id": normalise_ids(table[cols.id], file, cols.id),
            "title": table[cols.title].astype("string").str.strip().astype(object),
            "category": category,
            "category_path": path,
            "image_path": table[cols.image],  # bring_images makes these the contract's paths
        }
    )
    for a in cols.attributes:
        products[a] = clean_attribute(table[a])
    return products


def import_table(
    products_file: str | Path,
    images: str | Path,
    out: str | Path,
    cols: ColumnMap,
    sim: SynthConfig,
    clicks: ClickModelConfig,
    impressions_file: str | Path | None = None,
    date_format: str | None = None,
) -> Manifest:
    """Import a user's catalogue (and click log, if given) into ``out`` (Ray must be initialised).

    The input files are only read; the catalogue appears in ``out`` only once it is complete."""
    out, images = Path(out).resolve(), Path(images)
    if not images.is_dir():
        raise SchemaError(
            f"{images}: image folder not found" if not images.exists() else f"{images}: not a folder"
        )
    inputs = [Path(products_file)] + ([Path(impressions_file)] if impressions_file else [])
    with staged_catalogue(out, inputs, images) as stage:
        products = to_products(read_any(products_file), cols, str(products_file))
        products["image_path"] = bring_images(images, products["image_path"], stage, out)
        impressions = read_any(impressions_file) if impressions_file else None
        params = {"products": str(Path(products_file).resolve()), "images": str(images.resolve()),
                  "columns": vars(cols), "impressions": str(impressions_file) if impressions_file else None,
                  "date_format": date_format}  # fmt: skip
        manifest = finish_import(stage, products, "table", cols.attributes, impressions, sim, clicks, params,
                                 impressions_file or "", date_format)  # fmt: skip
    return manifest
