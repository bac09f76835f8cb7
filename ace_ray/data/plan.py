"""Which stored batches each training worker reads, in which order: a function of (seed, epoch, rank) only.

A training set on disk is a list of Parquet files (fine-tuning: one planned batch per file; pretraining:
``ROWS_PER_FILE`` products per file). Every epoch the files are put in a new order drawn from (seed, epoch);
worker ``rank`` of ``world`` takes every ``world``-th file of it, reads them in that order with Ray Data and
cuts micro-batches from the rows, mixing rows inside a window with a generator seeded by (seed, epoch, rank,
window). Nothing depends on timing or on which worker asked first, so a run that is stopped and resumed
consumes exactly the batches of the unbroken run, and a restarted worker finds the batches it had.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ace_ray.data.feature_table import FeatureTable

INDEX_FILE = "_index.json"


def seed_for(*parts) -> int:
    """A 31-bit seed from the parts (seed, epoch, rank, ...)."""
    return zlib.crc32(":".join(map(str, parts)).encode()) & 0x7FFFFFFF


def file_index(directory: str | Path, sort_column: str | None = None) -> list[tuple[str, int]]:
    """(file relative to ``directory``, rows) of every Parquet file under it, in a stable order (by the
    first value of ``sort_column`` when given, else by path); cached in ``_index.json``."""
    directory = Path(directory)
    cached = directory / INDEX_FILE
    if cached.is_file():
        return [tuple(x) for x in json.loads(cached.read_text())]
    files = sorted(p for p in directory.rglob("*.parquet"))
    entries = []
    for p in files:
        name = str(p.relative_to(directory))
        key = (pq.read_table(p, columns=[sort_column]).column(0)[0].as_py(), name) if sort_column else name
        entries.append((key, name, pq.read_metadata(p).num_rows))
    out = [(f, n) for _, f, n in sorted(entries)]
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    tmp.replace(cached)
    return out


@dataclass(frozen=True)
class EpochPlan:
    """The files of a training set and how they are dealt to ``world`` workers, epoch by epoch."""

    directory: str
    files: tuple[str, ...]
    rows: tuple[int, ...]
    world: int
    rows_per_batch: int  # rows of the stream per micro-batch (fine-tuning: 1 row = 1 planned batch)
    seed: int
    grad_accum: int = 1
    window: int = 4  # micro-batches whose rows are mixed together (pretraining; 1 = no mixing)

    @classmethod
    def for_directory(cls, directory: str | Path, world: int, rows_per_batch: int, seed: int,
                      sort_column: str | None = None, **kw) -> EpochPlan:  # fmt: skip
        index = file_index(directory, sort_column)
        return cls(str(directory), tuple(f for f, _ in index), tuple(n for _, n in index), world,
                   rows_per_batch, seed, **kw)  # fmt: skip

    def order(self, epoch: int) -> np.ndarray:
        """The file order of ``epoch``."""
        return np.random.default_rng(seed_for(self.seed, "epoch", epoch)).permutation(len(self.files))

    def shard(self, epoch: int, rank: int) -> list[int]:
        """The file positions worker ``rank`` reads in ``epoch``, in order."""
        return [int(i) for i in self.order(epoch)[rank :: self.world]]

    def batches(self, epoch: int) -> int:
        """Micro-batches every worker takes in ``epoch``: the fewest any worker's files give, rounded down
        to whole optimiser steps (every rank must step the same number of times)."""
        rows = min(sum(self.rows[i] for i in self.shard(epoch, r)) for r in range(self.world))
        n = rows // self.rows_per_batch
        return n - n % self.grad_accum

    def steps(self, epochs: int) -> int:
        """Optimiser steps in ``epochs`` epochs."""
        return sum(self.batches(e) // self.grad_accum for e in range(epochs))

    def mix(self, rows: dict[str, np.ndarray], epoch: int, rank: int, window: int) -> list[dict]:
        """One window of rows -> its micro-batches, rows shuffled by (seed, epoch, rank, window)."""
        n = len(next(iter(rows.values())))
        if self.window > 1:
            perm = np.random.default_rng(seed_for(self.seed, "mix", epoch, rank, window)).permutation(n)
            rows = {k: v[perm] for k, v in rows.items()}
        size = self.rows_per_batch
        return [{k: v[i : i + size] for k, v in rows.items()} for i in range(0, n - size + 1, size)]

    def to_dict(self) -> dict:
        return asdict(self)


def stream(plan: EpochPlan, epoch: int, rank: int, columns: list[str] | None = None, skip: int = 0,
           lookahead: int = 4, features: FeatureTable | None = None,
           feature_columns: tuple[str, ...] = ()) -> Iterator[dict[str, np.ndarray]]:  # fmt: skip
    """Worker ``rank``'s micro-batches of ``epoch`` (numpy columns), after the first ``skip``: exactly
    ``plan.batches(epoch) - skip`` of them. Files are read in the plan's order by a background thread,
    ``lookahead`` files ahead of training (a Ray Data execution per worker and epoch cost seconds of
    scheduling for what is a sequential read of a few files). With ``features``, the same thread adds the
    ``feature_columns`` ("patches", "pixels") of every row's ``feature_row`` from that feature table."""
    total = plan.batches(epoch)
    if skip >= total:
        return
    paths = [f"{plan.directory}/{plan.files[i]}" for i in plan.shard(epoch, rank)]
    read = functools.partial(
        _read_columns, columns=columns, features=features, feature_columns=feature_columns
    )
    chunk = plan.rows_per_batch * max(1, plan.window)
    done, window, buffer = 0, 0, None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="plan-reader") as pool:
        pending = deque(pool.submit(read, p) for p in paths[:lookahead])
        upcoming = iter(paths[lookahead:])
        while pending and done < total:
            table = pending.popleft().result()
            nxt = next(upcoming, None)
            if nxt is not None:
                pending.append(pool.submit(read, nxt))
            buffer = table if buffer is None else {k: np.concatenate([buffer[k], table[k]]) for k in table}
            # Cut whole windows as soon as there are rows for one; the last, partial one at the end.
            while buffer is not None and (_rows(buffer) >= chunk or (not pending and _rows(buffer))):
                rows = {k: v[:chunk] for k, v in buffer.items()}
                buffer = {k: v[chunk:] for k, v in buffer.items()} if _rows(buffer) > chunk else None
                for batch in plan.mix(rows, epoch, rank, window):
                    if done >= total:
                        return
                    if done >= skip:
                        yield batch
                    done += 1
                window += 1


def _rows(columns: dict[str, np.ndarray]) -> int:
    return len(next(iter(columns.values())))


def _read_columns(path: str, columns: list[str] | None, features: FeatureTable | None = None,
                  feature_columns: tuple[str, ...] = ()) -> dict[str, np.ndarray]:  # fmt: skip
    """One Parquet file (local path or URI) as numpy columns, as Ray Data's numpy batches hold them:
    tensors as ndarrays [rows, ...], lists and bytes as object arrays; plus the feature columns gathered
    by ``feature_row``."""
    import ray.data  # noqa: F401  (registers Ray's tensor extension types, so tensors read as tensors)

    table = pq.read_table(path, columns=columns)
    out = {n: table.column(n).combine_chunks().to_numpy(zero_copy_only=False) for n in table.column_names}
    if features is not None:
        rows = np.stack(out["feature_row"]) if out["feature_row"].dtype == object else out["feature_row"]
        out.update({name: features.gather(rows, name) for name in feature_columns})
    return out
