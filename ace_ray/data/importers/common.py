"""What every importer shares: reading the user's tables, bringing images under the catalogue root,
normalising ids and dates, and simulating a click log where there is none.

Two promises hold for every import: the user's input files are never modified or deleted, and a failed or
interrupted import leaves no half-written catalogue (the importers write into
``catalogue.staged_catalogue``, published only when complete, ``catalogue.json`` last).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from ace_ray.config import ClickModelConfig, SynthConfig
from ace_ray.data import clicklog
from ace_ray.data.catalogue import link_or_copy, write_catalogue
from ace_ray.data.schema import (
    IMAGES_DIR,
    IMPRESSIONS_FILE,
    IMPRESSIONS_SCHEMA,
    Manifest,
    SchemaError,
)

MISSING_VALUES = {"", "na", "n/a", "nan", "none", "null"}
_DELIMITERS = (",", ";", "\t", "|")
_INT32_MAX = 2**31 - 1
_EXACT_FLOAT_INT = 2**53  # floats hold every integer up to here, and not all beyond it


def clean_attribute(s: pd.Series) -> pd.Series:
    """Attribute values with the usual spellings of 'missing' turned into None."""
    s = s.astype("string").str.strip()
    return s.where(~s.str.lower().isin(MISSING_VALUES) & s.notna(), None).astype(object)


def where(df: pd.DataFrame, file: str | Path | None, row: int) -> str:
    """'file, line N' for a CSV (the line an editor shows), 'file, row N' (0-based) for Parquet."""
    lines = df.attrs.get("lines")
    at = f"line {lines[row]}" if lines is not None else f"row {row}"
    return f"{file}, {at}" if file is not None else at


# ----------------------------------------------------------------------------------------------- tables
def read_any(path: str | Path) -> pd.DataFrame:
    """A CSV/TSV (UTF-8, as text) or Parquet file with at least one row; every problem is a
    ``SchemaError`` naming the file (and the line, where there is one)."""
    path = Path(path)
    if not path.exists():
        raise SchemaError(f"{path}: file not found")
    if not path.is_file():
        raise SchemaError(f"{path}: is a folder, not a table file")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            df = pd.read_parquet(path)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise SchemaError(f"{path}: not a readable Parquet file ({exc})") from exc
    elif suffix in (".csv", ".tsv", ".txt"):
        df = _read_csv(path, "\t" if suffix == ".tsv" else None)
    else:
        raise SchemaError(f"{path}: unsupported file type {suffix or '(none)'} (use .csv, .tsv or .parquet)")
    if len(df.columns) and not len(df):
        raise SchemaError(f"{path}: has a header but no rows")
    return df


def _read_csv(path: Path, sep: str | None) -> pd.DataFrame:
    raw = path.read_bytes()
    if not raw.strip():
        raise SchemaError(f"{path}: the file is empty")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SchemaError(f"{path}: UTF-16 text; save the file as UTF-8 (in Excel: 'CSV UTF-8')")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SchemaError(
            f"{path}, line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8, "
            f"e.g. `iconv -f latin1 -t utf-8 {path.name} > utf8.csv`"
        ) from exc
    sep = sep or _delimiter(text.split("\n", 1)[0])
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    try:
        header = [h.strip() for h in next(reader)]
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise SchemaError(
                f"{path}, line 1: column(s) {', '.join(map(repr, dupes))} appear more than once"
            )
        rows, lines = [], []
        for row in reader:
            if not row:  # a blank line
                continue
            if len(row) != len(header):
                shown = "tab" if sep == "\t" else repr(sep)
                raise SchemaError(
                    f"{path}, line {reader.line_num}: {len(row)} field(s) where the header has {len(header)} "
                    f"(fields separated by {shown}; quote values that contain it)"
                )
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise SchemaError(f"{path}, line {reader.line_num}: not valid CSV ({exc})") from exc
    df = pd.DataFrame(rows, columns=header, dtype=object)
    df.attrs["lines"] = lines
    return df


def _delimiter(header: str) -> str:
    """The separator the header line uses most (comma, semicolon, tab or bar); a comma when none."""
    counts = {d: header.count(d) for d in _DELIMITERS}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


# ----------------------------------------------------------------------------------------------- ids
_FLOAT_TEXT = re.compile(r"^-?\d+\.0+$")


def normalise_ids(s: pd.Series, file: str | Path, column: str) -> pd.Series:
    """Ids as text, the same way in every table: 1, 1.0 and "1" are all "1", missing spellings None.

    One missing value makes pandas store an integer id column as floats, which would turn 1 into "1.0" in
    one table and not the other; text columns where every id ends in ".0" are such a column written out.
    """
    values = s.tolist()
    texts = [v.strip() for v in values if isinstance(v, str) and v.strip().lower() not in MISSING_VALUES]
    floats_as_text = bool(texts) and all(_FLOAT_TEXT.match(t) for t in texts)
    out = []
    for r, v in enumerate(values):
        if v is None or v is pd.NA or (isinstance(v, float | np.floating) and math.isnan(v)):
            out.append(None)
        elif isinstance(v, bool | np.bool_):
            out.append(str(bool(v)))
        elif isinstance(v, int | np.integer):
            out.append(str(int(v)))
        elif isinstance(v, float | np.floating):
            if not float(v).is_integer():
                out.append(repr(float(v)))
            elif abs(v) >= _EXACT_FLOAT_INT:
                raise SchemaError(
                    f"{where(s.to_frame(), file, r)}, column {column!r}: id {v!r} is stored as a floating-point "
                    "number too large to keep every digit; store the id column as text or integers"
                )
            else:
                out.append(str(int(v)))
        else:
            t = v.decode() if isinstance(v, bytes) else str(v)
            t = t.strip()
            if t.lower() in MISSING_VALUES:
                out.append(None)
            else:
                out.append(t.split(".")[0] if floats_as_text else t)
    return pd.Series(out, index=s.index, dtype=object)


# ----------------------------------------------------------------------------------------------- dates
_ISO_SHAPED = re.compile(r"^\d{4}-?\d{2}-?\d{2}([T ]|$)")
_DATE_LIKE = re.compile(
    r"^(\d{1,4}[/.\-]\d{1,2}[/.\-]\d{1,4}|.*\b(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\b)",
    re.IGNORECASE,
)
_CANDIDATE_FORMATS = ["%d/%m/%Y", "%m/%d/%Y", "%d/%m/%y", "%m/%d/%y", "%d.%m.%Y", "%d-%m-%Y", "%m-%d-%Y",
                      "%Y/%m/%d", "%d %b %Y", "%b %d %Y", "%b %d, %Y", "%d %B %Y", "%B %d %Y", "%B %d, %Y"]  # fmt: skip


def _iso_day(text: str) -> tuple[dt.date, str | None] | None:
    """The calendar day an ISO 8601 value names, and its zone ("naive", "+01:00", ...; None for a date
    alone), or None when it is not ISO."""
    try:
        return dt.date.fromisoformat(text), None
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    off = t.utcoffset()
    return t.date(), "naive" if off is None else _offset(off)


def _offset(off: dt.timedelta) -> str:
    minutes = int(off.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _one_day(v, date_format: str | None) -> tuple[dt.date, str | None] | None:
    """(day, zone) for a value of any type, or None when it does not read as a date."""
    if isinstance(v, pd.Timestamp | dt.datetime):
        return v.date(), "naive" if v.utcoffset() is None else _offset(v.utcoffset())
    if isinstance(v, dt.date):
        return v, None
    if isinstance(v, int | np.integer):  # 20260201
        v = str(v)
    if not isinstance(v, str):
        return None
    if date_format:
        try:
            t = dt.datetime.strptime(v, date_format)
            return t.date(), None if t.utcoffset() is None else _offset(t.utcoffset())
        except ValueError:
            pass  # ISO values are unambiguous, so they are read even beside an explicit format
    return _iso_day(v)


def parse_days(
    values: pd.Series, file: str | Path, date_format: str | None = None, column: str = "day"
) -> pd.Series:
    """The ``day`` column as dates (None where a value is not a date, for ``validate`` to quarantine).

    ISO 8601 in any of its forms (2026-02-01, 20260201, 2026-02-01T10:00:00+01:00, ...) is read as the
    calendar day written. Anything else needs ``date_format`` (strptime codes): a value such as 12/01/2026
    is a ``SchemaError`` instead of a guess between 12 January and 1 December. So is a column that mixes
    time zones, where the day an impression falls on would depend on the zone.
    """
    frame = values.to_frame()
    if pd.api.types.is_datetime64_any_dtype(values):
        return pd.Series([None if pd.isna(t) else t.date() for t in values], index=values.index, dtype=object)
    parsed: dict = {}
    days, zones, unread = [], {}, []
    for r, v in enumerate(values.tolist()):
        if isinstance(v, str):
            v = v.strip()
        if v is None or v == "" or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT:
            days.append(None)
            continue
        key = (type(v), v)
        if key not in parsed:
            parsed[key] = _one_day(v, date_format)
        got = parsed[key]
        if got is None:
            days.append(None)
            unread.append((r, v))
            continue
        days.append(got[0])
        if got[1] is not None:
            zones.setdefault(got[1], (r, v))
    if len(zones) > 1:
        (z1, (r1, v1)), (z2, (r2, v2)) = list(zones.items())[:2]
        raise SchemaError(
            f"{file}: column {column!r} mixes time zones ({v1!r} at {where(frame, None, r1)} is {z1}; "
            f"{v2!r} at {where(frame, None, r2)} is {z2}): the day an impression falls on depends on the "
            "zone, so convert the column to one zone, or to plain dates, first"
        )
    if unread and len(unread) == sum(d is not None for d in days) + len(unread) and date_format:
        r, v = unread[0]
        raise SchemaError(
            f"{file}: no value of column {column!r} reads with --date-format {date_format!r} "
            f"(e.g. {v!r} at {where(frame, None, r)})"
        )
    if not date_format:
        foreign = [(r, v) for r, v in unread if isinstance(v, str) and not _ISO_SHAPED.match(v)
                   and _DATE_LIKE.match(v)]  # fmt: skip
        if foreign:
            raise SchemaError(_non_iso_message(foreign, frame, file, column))
    return pd.Series(days, index=values.index, dtype=object)


def _non_iso_message(foreign: list[tuple[int, str]], frame: pd.DataFrame, file, column: str) -> str:
    r, v = foreign[0]
    distinct = {val for _, val in foreign}
    fits = [f for f in _CANDIDATE_FORMATS if all(_strptime_ok(val, f) for val in distinct)]
    more = f", and neither are {len(foreign) - 1:,} more row(s)" if len(foreign) > 1 else ""
    msg = f"{where(frame, file, r)}, column {column!r}: {v!r} is not an ISO date (YYYY-MM-DD){more}; "
    if len(fits) > 1:
        readings = "; ".join(f"{f} reads {v!r} as {dt.datetime.strptime(v, f):%d %B %Y}" for f in fits[:2])
        msg += f"they are ambiguous ({readings}), so nothing was guessed. "
    elif fits:
        reads = "they all read" if len(distinct) > 1 else "it reads"
        msg += f"{reads} with {fits[0]}, but nothing was guessed. "
    msg += "Say how to read the column with --date-format"
    return msg + (f", e.g. --date-format '{fits[0]}'" if fits else " (strptime codes, e.g. '%d/%m/%Y')")


def _strptime_ok(value: str, fmt: str) -> bool:
    try:
        dt.datetime.strptime(value, fmt)
        return True
    except ValueError:
        return False


# ----------------------------------------------------------------------------------------------- impressions
_TRUE, _FALSE = {"true", "1", "yes", "y", "t"}, {"false", "0", "no", "n", "f"}


def coerce_impressions(
    df: pd.DataFrame, file: str | Path = IMPRESSIONS_FILE, date_format: str | None = None
) -> pd.DataFrame:
    """A user's click log in the contract's types. A value that does not convert becomes null (so
    ``validate`` quarantines its row) and its original text is kept in a ``raw_<column>`` column; input
    that cannot be read without guessing (non-ISO dates, mixed time zones) is a ``SchemaError``."""
    attrs = df.attrs
    df = df.copy()
    df.attrs = attrs
    text = {c: df[c].astype("string") for c in ("day", "position", "clicked")}
    day = parse_days(df["day"], file, date_format)
    position = pd.to_numeric(text["position"].str.strip(), errors="coerce")
    # 2.5 is no position, and neither is one beyond a 32-bit integer (3e9 would overflow the column).
    position = position.where((position == position.round()) & (position.abs() <= _INT32_MAX))
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
    df["day"] = day
    df["position"] = position.astype("Int32")
    df["clicked"] = clicked
    for col in ("session_id", "product_id"):
        df[col] = normalise_ids(df[col], file, col)
    df["query"] = df["query"].astype("string").astype(object).where(df["query"].notna(), None)
    return df


def _warn_unknown_products(impressions: pd.DataFrame, products: pd.DataFrame, file, products_file) -> int:
    """Print a loud line when most impressions name no catalogue product (ids written differently)."""
    known = set(products["product_id"].dropna())
    pid = impressions["product_id"]
    unknown = pid.notna() & ~pid.isin(known)
    n, total = int(unknown.sum()), len(impressions)
    if n and n * 2 > total:
        seen = ", ".join(map(repr, pid[unknown].drop_duplicates().head(3)))
        have = ", ".join(map(repr, products["product_id"].dropna().head(3)))
        print(
            f"ace-ray import: WARNING: {n:,} of {total:,} impressions ({n / total:.0%}) in {file} name a "
            f"product_id that is not in {products_file} (e.g. {seen}; the products' ids look like {have}). "
            "`ace-ray validate` will quarantine them as 'unknown product'; check that --id-col and the click "
            "log's product_id hold the same ids.",
            file=sys.stderr,
            flush=True,
        )
    return n


# ----------------------------------------------------------------------------------------------- images
def bring_images(src_root: Path, rel_paths: pd.Series, stage: Path, out: Path) -> pd.Series:
    """Each image's contract ``image_path``; images are linked under ``stage/images/`` (published as
    ``out/images/``) keeping their path relative to ``src_root``.

    Images already inside ``out`` (importing in place, ``--images OUT/images``) are referenced where they
    are and never touched. A blank cell stays missing, and a path that is absolute outside ``src_root`` or
    leaves it with ``..`` is kept as given, so that ``validate`` reports each with its own reason.
    """
    given = Path(src_root)
    src_root, out = given.resolve(), Path(out).resolve()
    if not src_root.is_dir():
        raise SchemaError(
            f"{given}: image folder not found" if not given.exists() else f"{given}: not a folder"
        )
    in_place = src_root.is_relative_to(out)
    prefix = src_root.relative_to(out).as_posix() if in_place else IMAGES_DIR
    out_paths: list[str | None] = []
    for cell in rel_paths.tolist():
        if cell is None or (isinstance(cell, float) and math.isnan(cell)) or str(cell).strip() == "":
            out_paths.append(None)
            continue
        rel = str(cell).strip()
        if "://" in rel:  # a URL: kept as given, for validate to name
            out_paths.append(rel)
            continue
        if Path(rel).is_absolute():
            inside = [
                b for b in (given.absolute(), src_root) if Path(os.path.normpath(rel)).is_relative_to(b)
            ]
            if not inside:
                out_paths.append(rel)
                continue
            rel = Path(os.path.normpath(rel)).relative_to(inside[0]).as_posix()
        norm = Path(os.path.normpath(rel)).as_posix()
        if norm == ".." or norm.startswith("../"):
            out_paths.append(rel)
            continue
        if not in_place and (src_root / norm).is_file():
            link_or_copy(src_root / norm, stage / IMAGES_DIR / norm)
        out_paths.append(f"{prefix}/{norm}")
    return pd.Series(out_paths, index=rel_paths.index, dtype=object)


def hide_in_title(products: pd.DataFrame, attributes: list[str]) -> pd.Series:
    """Each title without its product's value of ``attributes`` ("Women Navy Blue Heels" with colour "Navy
    Blue" -> "Women Heels"): whole words, any case. The click model still queries those attributes, so they are
    then only in the photo, as on many real shops."""
    missing = [a for a in attributes if a not in products.columns]
    if missing:
        raise SchemaError(
            f"data.synth.hide_in_title: no attribute column(s) {', '.join(missing)} in this catalogue "
            f"(has: {', '.join(c for c in products.columns if c not in ('product_id', 'title', 'image_path'))})"
        )
    titles = []
    for row in products[["title", *attributes]].itertuples(index=False):
        title = row[0] if isinstance(row[0], str) else None
        for value in row[1:]:
            if title and isinstance(value, str) and value.strip():
                words = r"\s+".join(re.escape(w) for w in value.split())
                title = re.sub(rf"(?<!\w){words}(?!\w)", " ", title, flags=re.IGNORECASE)
        titles.append(" ".join(title.split()) if title else row[0])
    return pd.Series(titles, index=products.index, dtype=object)


def finish_import(
    out: Path,
    products: pd.DataFrame,
    source: str,
    attribute_columns: list[str],
    impressions: pd.DataFrame | None,
    sim: SynthConfig,
    clicks: ClickModelConfig,
    params: dict,
    impressions_file: str | Path = IMPRESSIONS_FILE,
    date_format: str | None = None,
) -> Manifest:
    """Write the catalogue into ``out`` (the staging folder); with no impressions, simulate them from
    category + attributes (Ray tasks). ``sim.hide_in_title`` takes attributes out of the titles."""
    if sim.hide_in_title:
        products = products.assign(title=hide_in_title(products, sim.hide_in_title))
        params["hide_in_title"] = list(sim.hide_in_title)
    if impressions is None:
        usable = products.dropna(subset=["product_id", "category"]).drop_duplicates("product_id")
        impressions = clicklog.simulate_impressions(usable, attribute_columns, clicks, sim)
        kind = "simulated"
    else:
        missing = [c for c in IMPRESSIONS_SCHEMA.names if c not in impressions.columns]
        if missing:
            raise SchemaError(
                f"{impressions_file}: missing required column(s) {', '.join(missing)} "
                f"(has: {', '.join(map(str, impressions.columns))})"
            )
        impressions = coerce_impressions(impressions, impressions_file, date_format)
        params["impressions_unknown_product"] = _warn_unknown_products(
            impressions, products, impressions_file, params.get("products", "the products table")
        )
        kind = "logged"
    manifest = Manifest(source=source, impressions=kind, params=params, attribute_columns=attribute_columns)
    write_catalogue(out, products, impressions, manifest)
    return manifest
