"""The catalogue data contract: file names, columns and types, and readers that name what is wrong.

A catalogue directory holds ``products.parquet`` + ``images/`` and ``impressions.parquet`` (see
``shared/DESIGN.md``), a ``catalogue.json`` manifest saying where the data came from, and, after
``ace-ray validate``, ``quarantine.parquet`` with every row that cannot be used and why.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

PRODUCTS_FILE = "products.parquet"
IMPRESSIONS_FILE = "impressions.parquet"
GROUND_TRUTH_FILE = "ground_truth.parquet"  # synth only: the true attributes; training never reads it
MANIFEST_FILE = "catalogue.json"
QUARANTINE_FILE = "quarantine.parquet"
REPORT_FILE = "validation.json"
# Rows per Parquet row group: the unit one task of the click stream reads (``click_stream``).
ROW_GROUP_ROWS = 1 << 18
IMAGES_DIR = "images"

PRODUCTS_SCHEMA = pa.schema(
    [
        ("product_id", pa.string()),
        ("title", pa.string()),
        ("category", pa.string()),
        ("category_path", pa.string()),
        ("image_path", pa.string()),
    ]
)
IMPRESSIONS_SCHEMA = pa.schema(
    [
        ("day", pa.date32()),
        ("session_id", pa.string()),
        ("query", pa.string()),
        ("product_id", pa.string()),
        ("position", pa.int32()),
        ("clicked", pa.bool_()),
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [
        ("file", pa.string()),
        ("row", pa.int64()),  # 0-based row number in that file
        ("key", pa.string()),  # product_id, or session_id/position for impressions
        ("reason", pa.string()),
        ("record", pa.string()),  # the row as JSON, so nothing is lost
    ]
)


_ID_COLUMNS = {"product_id", "session_id"}


class SchemaError(ValueError):
    """A table that does not have the columns the contract requires."""


@dataclass
class Manifest:
    """Where a catalogue came from (``catalogue.json``)."""

    source: str  # "synth", "fashion-products", "table"
    impressions: str  # "logged" or "simulated" (derived from attributes, not real user behaviour)
    created_by: str = "ace-ray"
    params: dict[str, Any] = field(default_factory=dict)
    attribute_columns: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def write(self, root: str | Path) -> Path:
        path = Path(root) / MANIFEST_FILE
        path.write_text(json.dumps(asdict(self), indent=2, default=str))
        return path

    @classmethod
    def read(cls, root: str | Path) -> Manifest:
        path = Path(root) / MANIFEST_FILE
        if not path.is_file():
            raise SchemaError(f"{path}: missing catalogue manifest")
        return cls(**json.loads(path.read_text()))


def required_columns(schema: pa.Schema) -> list[str]:
    return list(schema.names)


def read_table(path: str | Path, schema: pa.Schema) -> pd.DataFrame:
    """Read a Parquet table; a missing file or column is a ``SchemaError`` naming the file and column."""
    check_columns(path, schema)
    return pq.read_table(path).to_pandas()


def check_columns(path: str | Path, schema: pa.Schema) -> None:
    """A ``SchemaError`` naming the file and column unless ``path`` is a Parquet file with ``schema``'s
    columns and text ids (reads the footer only)."""
    path = Path(path)
    if not path.is_file():
        raise SchemaError(f"{path}: file not found")
    try:
        found = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SchemaError(f"{path}: not a readable Parquet file ({exc})") from exc
    names = found.names
    missing = [c for c in schema.names if c not in names]
    if missing:
        raise SchemaError(
            f"{path}: missing required column(s) {', '.join(missing)} (has: {', '.join(names)})"
        )
    for col in _ID_COLUMNS & set(schema.names):
        kind = found.field(col).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
            # Numeric ids match nothing in the other table (1.0 is not "1"): the importers normalise them.
            raise SchemaError(
                f"{path}: column {col} holds {kind} values; ids must be text (`ace-ray import table` "
                "converts them the same way in both tables)"
            )


def write_table(
    df: pd.DataFrame, path: str | Path, schema: pa.Schema | None = None, metadata: dict | None = None
) -> Path:
    """Write ``df`` with the contract's types for its contract columns (extra columns kept as they are),
    and ``metadata`` in the file's schema. The file appears whole or not at all (written beside, renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    for name in schema.names if schema is not None else []:
        if name in table.column_names:
            idx = table.column_names.index(name)
            table = table.set_column(
                idx, schema.field(name), table.column(name).cast(schema.field(name).type)
            )
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_products(root: str | Path) -> pd.DataFrame:
    return read_table(Path(root) / PRODUCTS_FILE, PRODUCTS_SCHEMA)


def read_impressions(root: str | Path) -> pd.DataFrame:
    return read_table(Path(root) / IMPRESSIONS_FILE, IMPRESSIONS_SCHEMA)


def image_shard(index: int) -> str:
    """Images go in sub-folders of 1,000 so no folder holds a whole catalogue."""
    return f"{IMAGES_DIR}/{index // 1000:04d}"
