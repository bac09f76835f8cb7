"""``ace-ray validate``: check a catalogue against the contract and quarantine every unusable row.

Each bad row is reported with its file, row number and reason and written to ``quarantine.parquet``
(with the whole row as JSON, so nothing is lost); per table, rows in = rows kept + rows quarantined.
Later stages read the catalogue through ``load_clean`` and so never see a quarantined row. The quarantine
names rows by number, so it is bound to the exact files it describes (their SHA-256 is stored with it): once
either file changes, it is refused until ``validate`` runs again, instead of dropping the wrong rows.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import ray

from ace_ray.data.images import BadImage, image_size, imdecode, locate, too_small
from ace_ray.data.schema import (
    IMPRESSIONS_FILE,
    PRODUCTS_FILE,
    QUARANTINE_FILE,
    QUARANTINE_SCHEMA,
    REPORT_FILE,
    SchemaError,
    read_impressions,
    read_products,
    read_table,
    write_table,
)
from ace_ray.runtime import run_bounded

_MIN_DAY, _MAX_DAY = pd.Timestamp("1990-01-01"), pd.Timestamp("2100-01-01")
_IMAGE_CHUNK = 512  # images checked per Ray task
_BOUND_TO = b"ace_ray.validated_files"  # quarantine metadata: {file name: sha256} it describes


@dataclass
class Report:
    """What ``validate`` found: counts per table and the reasons rows were quarantined."""

    root: str
    counts_in: dict[str, int] = field(default_factory=dict)
    counts_kept: dict[str, int] = field(default_factory=dict)
    counts_quarantined: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    per_day: list[dict] = field(default_factory=list)
    per_category: list[dict] = field(default_factory=list)
    files_sha256: dict[str, str] = field(default_factory=dict)  # the exact files this report describes

    @property
    def ok(self) -> bool:
        return not any(self.counts_quarantined.values())


class _Quarantine:
    """Collects bad rows; the first reason found for a row wins."""

    def __init__(self, file: str, df: pd.DataFrame, key: pd.Series):
        self.file, self.df, self.key = file, df, key
        self.reason: dict[int, str] = {}

    def add(self, rows, reason: str | list[str]) -> None:
        reasons = [reason] * len(rows) if isinstance(reason, str) else reason
        for r, why in zip(rows, reasons, strict=True):
            self.reason.setdefault(int(r), why)

    def bad(self) -> np.ndarray:
        mask = np.zeros(len(self.df), bool)
        mask[list(self.reason)] = True
        return mask

    def frame(self) -> pd.DataFrame:
        rows = sorted(self.reason)
        return pd.DataFrame(
            {
                "file": self.file,
                "row": rows,
                "key": [str(self.key.iloc[r]) for r in rows],
                "reason": [self.reason[r] for r in rows],
                "record": [self.df.iloc[r].to_json(date_format="iso", default_handler=str) for r in rows],
            },
            columns=QUARANTINE_SCHEMA.names,
        )


def _blank(s: pd.Series) -> pd.Series:
    return s.isna() | (s.astype(str).str.strip() == "")


def _first_rows(df: pd.DataFrame, cols: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Rows that repeat an earlier row's ``cols``, and the row number of that earlier row."""
    d = df.reset_index(drop=True)
    dup = d.duplicated(cols, keep="first").to_numpy()
    firsts = d.reset_index().groupby(cols, dropna=False, sort=False)["index"].transform("min").to_numpy()
    return np.flatnonzero(dup), firsts[dup]


def check_image(path: str, min_side: int = 8) -> str | None:
    """Why the file at ``path`` is not a usable image (as ``features`` would decide), or None."""
    p = Path(path)
    if not p.is_file():
        return "image file not found"
    data = p.read_bytes()
    try:
        width, height = image_size(data)
        if reason := too_small(width, height, min_side):
            return reason
        # A reduced decode checks the stream at a fraction of the cost of a full one; OpenCV asserts on
        # reduced decodes of images under 8 px, so small ones are decoded in full.
        imdecode(data, cv2.IMREAD_REDUCED_COLOR_8 if min(width, height) >= 64 else cv2.IMREAD_COLOR)
    except BadImage as exc:
        return str(exc)
    return None


@ray.remote
def _check_images(paths: list[str], min_side: int) -> list[str | None]:
    return [check_image(p, min_side) for p in paths]


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB pieces)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(2**20):
            h.update(chunk)
    return h.hexdigest()


def _check_products(root: Path, products: pd.DataFrame, q: _Quarantine, workers: int, min_side: int) -> None:
    q.add(np.flatnonzero(_blank(products["product_id"])), "missing product_id")
    rows, firsts = _first_rows(products, ["product_id"])
    q.add(rows, [f"duplicate product_id (first at row {f})" for f in firsts])
    q.add(np.flatnonzero(_blank(products["title"])), "empty title")
    q.add(np.flatnonzero(_blank(products["category"])), "empty category")
    q.add(np.flatnonzero(_blank(products["image_path"])), "missing image_path")
    real_root = root.resolve()
    todo: list[tuple[int, str]] = []
    for r, rel in enumerate(products["image_path"].tolist()):
        if r in q.reason:
            continue
        full, why = locate(real_root, rel)
        if why:
            q.add([r], why)
        else:
            todo.append((r, str(full)))
    chunks = [todo[i : i + _IMAGE_CHUNK] for i in range(0, len(todo), _IMAGE_CHUNK)]
    results = run_bounded(
        lambda c: _check_images.remote([p for _, p in c], min_side), chunks, workers, "checking images"
    )
    for chunk, reasons in zip(chunks, results, strict=True):
        for (r, _), why in zip(chunk, reasons, strict=True):
            if why:
                q.add([r], why)


def _check_impressions(
    imp: pd.DataFrame, products: pd.DataFrame, product_bad: np.ndarray, q: _Quarantine
) -> None:
    days = pd.to_datetime(imp["day"], errors="coerce")
    q.add(np.flatnonzero(days.isna() | (days < _MIN_DAY) | (days >= _MAX_DAY)), "bad date")
    q.add(np.flatnonzero(_blank(imp["session_id"])), "missing session_id")
    q.add(np.flatnonzero(_blank(imp["query"])), "empty query")
    pos = pd.to_numeric(imp["position"], errors="coerce")
    q.add(np.flatnonzero(pos.isna() | (pos < 0) | (pos != pos.round())), "bad position")
    q.add(np.flatnonzero(imp["clicked"].isna()), "missing clicked")
    known = set(products["product_id"].astype(str))
    pid = imp["product_id"].astype(str)
    q.add(np.flatnonzero(~pid.isin(known) | imp["product_id"].isna()), "unknown product")
    bad_ids = set(products["product_id"].astype(str)[product_bad]) - set(
        products["product_id"].astype(str)[~product_bad]
    )
    q.add(np.flatnonzero(pid.isin(bad_ids)), "product quarantined")
    rows, firsts = _first_rows(imp, ["session_id", "position"])
    q.add(rows, [f"duplicate impression (session and position first at row {f})" for f in firsts])


def _summaries(products: pd.DataFrame, imp: pd.DataFrame) -> tuple[list[dict], list[dict]]:
    by_day = (
        imp.assign(day=pd.to_datetime(imp["day"]).dt.date.astype(str))
        .groupby("day")
        .agg(
            impressions=("session_id", "size"), sessions=("session_id", "nunique"), clicks=("clicked", "sum")
        )
        .reset_index()
    )
    by_day["ctr"] = (by_day["clicks"] / by_day["impressions"]).round(4)
    clicks = imp[imp["clicked"].astype(bool)].merge(products[["product_id", "category"]], on="product_id")
    by_cat = products.groupby("category").size().rename("products").to_frame()
    by_cat["clicks"] = clicks.groupby("category").size()
    by_cat = by_cat.fillna(0).astype(int).reset_index().sort_values("products", ascending=False)
    return by_day.to_dict("records"), by_cat.to_dict("records")


def validate(root: str | Path, workers: int = 0, min_side: int = 8) -> Report:
    """Check everything under ``root`` (Ray must be initialised); writes quarantine and report files,
    bound to the SHA-256 of the products and impressions files they describe."""
    root = Path(root).resolve()
    products = read_products(root)
    imp = read_impressions(root)
    if not len(products):
        raise SchemaError(f"{root / PRODUCTS_FILE}: has no rows")
    if not len(imp):
        raise SchemaError(f"{root / IMPRESSIONS_FILE}: has no rows")
    sha = {name: file_sha256(root / name) for name in (PRODUCTS_FILE, IMPRESSIONS_FILE)}
    qp = _Quarantine(PRODUCTS_FILE, products, products["product_id"])
    _check_products(root, products, qp, workers, min_side)
    qi = _Quarantine(IMPRESSIONS_FILE, imp, imp["session_id"].astype(str) + "#" + imp["position"].astype(str))
    _check_impressions(imp, products, qp.bad(), qi)
    quarantine = pd.concat([qp.frame(), qi.frame()], ignore_index=True)
    write_table(quarantine, root / QUARANTINE_FILE, QUARANTINE_SCHEMA, {_BOUND_TO: json.dumps(sha)})
    kept_p, kept_i = products[~qp.bad()], imp[~qi.bad()]
    per_day, per_cat = _summaries(kept_p, kept_i)
    report = Report(
        root=str(root),
        counts_in={"products": len(products), "impressions": len(imp)},
        counts_kept={"products": len(kept_p), "impressions": len(kept_i)},
        counts_quarantined={"products": len(qp.reason), "impressions": len(qi.reason)},
        reasons=dict(Counter(why.split(" (")[0] for why in quarantine["reason"]).most_common()),
        per_day=per_day,
        per_category=per_cat,
        files_sha256=sha,
    )
    (root / REPORT_FILE).write_text(json.dumps(asdict(report), indent=2, default=str))
    return report


def read_quarantine(root: str | Path) -> pd.DataFrame:
    """The quarantine written by the last ``validate`` of ``root``; a ``SchemaError`` when the products or
    impressions file has changed since (its row numbers would name other rows)."""
    root = Path(root)
    path = root / QUARANTINE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{root}: not validated yet (no {QUARANTINE_FILE}); run `ace-ray validate {root}`"
        )
    bound = json.loads((pq.read_schema(path).metadata or {}).get(_BOUND_TO, b"{}"))
    if not bound:
        raise SchemaError(
            f"{path}: does not say which files it describes (written by an older ace-ray); "
            f"run `ace-ray validate {root}` again"
        )
    for name, sha in bound.items():
        if not (root / name).is_file() or file_sha256(root / name) != sha:
            raise SchemaError(
                f"{root / name}: changed since `ace-ray validate` wrote {QUARANTINE_FILE}, which describes "
                f"another version of it (its rows would drop the wrong products); run `ace-ray validate {root}` "
                "again"
            )
    return read_table(path, QUARANTINE_SCHEMA)


def load_clean(root: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Products and impressions without their quarantined rows; the catalogue must have been validated,
    and not changed since."""
    q = read_quarantine(root)
    imp = read_impressions(root)
    return _without(read_products(root), quarantined_rows(q, PRODUCTS_FILE)), _without(
        imp, quarantined_rows(q, IMPRESSIONS_FILE)
    )


def load_clean_products(root: str | Path) -> pd.DataFrame:
    """The products without their quarantined rows, without reading the click log."""
    return _without(read_products(root), quarantined_rows(read_quarantine(root), PRODUCTS_FILE))


def quarantined_rows(quarantine: pd.DataFrame, file: str) -> np.ndarray:
    """The quarantined row numbers of ``file``, sorted."""
    return np.sort(quarantine.loc[quarantine["file"] == file, "row"].to_numpy(np.int64))


def _without(table: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    return table.drop(index=table.index[rows]).reset_index(drop=True)


def format_report(report: Report, max_rows: int = 40) -> str:
    """The report as the text ``ace-ray validate`` prints."""
    lines = [f"catalogue {report.root}"]
    for t in report.counts_in:
        lines.append(
            f"  {t:<12} in {report.counts_in[t]:>9,}  kept {report.counts_kept[t]:>9,}"
            f"  quarantined {report.counts_quarantined[t]:>7,}"
        )
    if report.reasons:
        lines.append("quarantined rows by reason:")
        lines += [f"  {n:>7,}  {why}" for why, n in report.reasons.items()]
    unknown, total = report.reasons.get("unknown product", 0), report.counts_in.get("impressions", 0)
    if unknown * 2 > total:
        # Most of a click log naming no product is an id mismatch, not noise: say so where it is seen.
        lines.append(
            f"WARNING: {unknown:,} of {total:,} impressions ({unknown / total:.0%}) name a product_id that is "
            f"not in {PRODUCTS_FILE}; do the click log and the catalogue use the same ids?"
        )
    lines.append("per day:        impressions  sessions    clicks     ctr")
    lines += [
        f"  {d['day']:<12} {d['impressions']:>11,} {d['sessions']:>9,} {d['clicks']:>9,}  {d['ctr']:.3f}"
        for d in report.per_day
    ]
    lines.append("per category:      products    clicks")
    for c in report.per_category[:max_rows]:
        lines.append(f"  {str(c['category'])[:16]:<16} {c['products']:>9,} {c['clicks']:>9,}")
    if len(report.per_category) > max_rows:
        lines.append(f"  ... {len(report.per_category) - max_rows} more categories in {REPORT_FILE}")
    return "\n".join(lines)
