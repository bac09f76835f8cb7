"""What every importer shares: bringing images under the catalogue root, simulating a click log where
there is none, and writing the contract's files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ace_ray.config import ClickModelConfig, SynthConfig
from ace_ray.data import clicklog
from ace_ray.data.catalogue import link_or_copy, write_catalogue
from ace_ray.data.schema import IMAGES_DIR, IMPRESSIONS_SCHEMA, Manifest, SchemaError

MISSING_VALUES = {"", "na", "n/a", "nan", "none", "null"}


def clean_attribute(s: pd.Series) -> pd.Series:
    """Attribute values with the usual spellings of 'missing' turned into None."""
    s = s.astype("string").str.strip()
    return s.where(~s.str.lower().isin(MISSING_VALUES) & s.notna(), None).astype(object)


def read_any(path: str | Path) -> pd.DataFrame:
    """A CSV or Parquet file as strings-or-native columns; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise SchemaError(f"{path}: file not found")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        return pd.read_csv(
            path, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype=str, keep_default_na=False
        )
    raise SchemaError(f"{path}: unsupported file type (use .csv, .tsv or .parquet)")


def bring_images(src_root: Path, rel_paths: pd.Series, out: Path) -> pd.Series:
    """Link each image under ``out/images/`` keeping its relative path; returns the contract's image_path.

    Paths that would leave ``src_root`` and files that do not exist are passed through unchanged, so that
    ``validate`` reports them with their row instead of the importer dropping them.
    """
    src_root = src_root.resolve()
    out_paths = []
    for rel in rel_paths.astype(str):
        src = (src_root / rel).resolve()
        target = f"{IMAGES_DIR}/{rel}"
        if src.is_relative_to(src_root) and src.is_file() and not Path(rel).is_absolute():
            link_or_copy(src, out / target)
        out_paths.append(target)
    return pd.Series(out_paths, index=rel_paths.index)


_TRUE, _FALSE = {"true", "1", "yes", "y", "t"}, {"false", "0", "no", "n", "f"}


def coerce_impressions(df: pd.DataFrame) -> pd.DataFrame:
    """A user's click log in the contract's types. A value that does not convert becomes null (so
    ``validate`` quarantines its row) and its original text is kept in a ``raw_<column>`` column."""
    df = df.copy()
    text = {c: df[c].astype("string") for c in ("day", "position", "clicked")}
    day = pd.to_datetime(df["day"], errors="coerce")
    position = pd.to_numeric(df["position"], errors="coerce")
    position = position.where(position == position.round())  # 2.5 is no position
    lowered = text["clicked"].str.strip().str.lower()
    clicked = pd.Series(
        [True if v in _TRUE else False if v in _FALSE else None for v in lowered.fillna("")],
        index=df.index,
        dtype=object,
    )
    for col, parsed in (("day", day), ("position", position), ("clicked", clicked)):
        failed = parsed.isna() & text[col].notna() & (text[col].str.strip() != "")
        if failed.any():
            df[f"raw_{col}"] = text[col].where(failed, None)
    df["day"] = day.dt.date.where(day.notna(), None)
    df["position"] = position.astype("Int32")
    df["clicked"] = clicked
    for col in ("session_id", "query", "product_id"):
        df[col] = df[col].astype("string").astype(object).where(df[col].notna(), None)
    return df


def finish_import(
    out: Path,
    products: pd.DataFrame,
    source: str,
    attribute_columns: list[str],
    impressions: pd.DataFrame | None,
    sim: SynthConfig,
    clicks: ClickModelConfig,
    params: dict,
) -> Manifest:
    """Write the catalogue; with no impressions, simulate them from category + attributes (Ray tasks)."""
    if impressions is None:
        usable = products.dropna(subset=["product_id", "category"]).drop_duplicates("product_id")
        impressions = clicklog.simulate_impressions(usable, attribute_columns, clicks, sim)
        kind = "simulated"
    else:
        missing = [c for c in IMPRESSIONS_SCHEMA.names if c not in impressions.columns]
        if missing:
            raise SchemaError(f"impressions: missing required column(s) {', '.join(missing)}")
        impressions = coerce_impressions(impressions)
        kind = "logged"
    manifest = Manifest(source=source, impressions=kind, params=params, attribute_columns=attribute_columns)
    write_catalogue(out, products, impressions, manifest)
    return manifest
