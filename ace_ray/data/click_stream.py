"""The train days' clicks as a Ray Data stream, for work that grows with clicks (fine-tune pairs, hot queries).

The click log is read one Parquet row group per task, each row carrying its row number in the file: the
quarantine names rows by number, so it applies chunk by chunk, and the row number is the pair's name in the
batch plan (``batch_plan``). No process ever holds the whole log; the driver holds the quarantined row
numbers and the row-group offsets only.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from ace_ray.data.clicks import first_test_day, train_click_mask
from ace_ray.data.schema import IMPRESSIONS_FILE, IMPRESSIONS_SCHEMA, check_columns
from ace_ray.data.validate import quarantined_rows, read_quarantine

_MASK_COLUMNS = ("day", "clicked")


def _read_group(task: pd.DataFrame, path: str, columns: tuple[str, ...], cutoff: dt.date,
                dropped: np.ndarray) -> pa.Table:  # fmt: skip
    """One row group -> its kept train-day clicks: ``columns`` plus ``row``. An Arrow table, typed as in the
    file even when no click is kept (a row group of test days only): an empty pandas block would reach Ray
    Data with untyped (null) columns, which its shuffles cannot concatenate with the others."""
    group, start = int(task["group"].iloc[0]), int(task["start"].iloc[0])
    wanted = list(dict.fromkeys([*columns, *_MASK_COLUMNS]))
    chunk = pq.ParquetFile(path).read_row_group(group, columns=wanted)
    rows = start + np.arange(chunk.num_rows, dtype=np.int64)
    keep = train_click_mask(chunk.select(list(_MASK_COLUMNS)).to_pandas(), cutoff) & ~np.isin(
        rows, dropped, assume_unique=True
    )
    return chunk.select(list(columns)).filter(pa.array(keep)).append_column("row", pa.array(rows[keep]))


def read_train_clicks(root: str | Path, test_days: int,
                      columns: tuple[str, ...] = ("query", "product_id")) -> ray.data.Dataset:  # fmt: skip
    """The clicks before the first test day that the quarantine kept, as (``row``, *columns*) rows: the
    same clicks as ``clean_clicks`` before its catalogue filter (join with the catalogue for that)."""
    root = Path(root).resolve()
    path = root / IMPRESSIONS_FILE
    check_columns(path, IMPRESSIONS_SCHEMA)
    dropped = quarantined_rows(read_quarantine(root), IMPRESSIONS_FILE)
    cutoff = first_test_day(root, test_days)
    meta = pq.ParquetFile(path).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int) if sizes else []
    tasks = [{"group": i, "start": int(s)} for i, s in enumerate(starts)]
    return ray.data.from_items(tasks, override_num_blocks=max(1, len(tasks))).map_batches(
        _read_group,
        batch_size=1,
        batch_format="pandas",
        fn_kwargs={"path": str(path), "columns": tuple(columns), "cutoff": cutoff, "dropped": dropped},
    )


def impression_rows(root: str | Path) -> int:
    """Rows in the click log (from the Parquet footer)."""
    return pq.ParquetFile(Path(root) / IMPRESSIONS_FILE).metadata.num_rows
