"""How the training data's bytes, memory and read speed grow with the catalogue: products or clicks?

    python benchmarks/data_scale.py [--sizes 10000 50000 200000] [--pairs-per-product 5] [--pixel-size 224]

For each size: a synthetic catalogue (one small shared photo; clicks in proportion to the products, spread
over 5 days, the last one the test day) and a feature store of random features of the real shapes (no CNN:
RoI patch features 16 x 1280 float16; pixel patches of ``--pixel-size`` px in 32 px patches, uint8, cut from a
photo-like image: a white background around a smooth random colour field with a little noise, which the
table's PNG compresses about as well as fashion-products' real photos). Then
the real code paths: validation, hot queries, the feature table, the fine-tuning batches (P=100, 64 pairs)
and the pretraining set, and two Ray tasks reading the batches as two training workers do (rank 0 and 1 of
an ``EpochPlan``, features gathered from the table). Reported, per size: bytes on disk per product and per
pair, what the batches would hold if they still copied the features per pair (computed), the driver's peak
RSS and the Ray processes' peak PSS while the data is built, and pairs/s into each of 2 training workers.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import psutil  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import ray  # noqa: E402
from machine import record  # noqa: E402

from ace_ray.config import BatchConfig, TextConfig  # noqa: E402
from ace_ray.data import feature_store as fs  # noqa: E402
from ace_ray.data.batching import cached_finetune_batches  # noqa: E402
from ace_ray.data.feature_table import for_store  # noqa: E402
from ace_ray.data.hot_queries import write_hot_queries  # noqa: E402
from ace_ray.data.images import image_to_patches  # noqa: E402
from ace_ray.data.plan import EpochPlan, stream  # noqa: E402
from ace_ray.data.pretrain_set import build_pretrain_set  # noqa: E402
from ace_ray.data.schema import (
    IMPRESSIONS_FILE,
    IMPRESSIONS_SCHEMA,
    PRODUCTS_FILE,
    PRODUCTS_SCHEMA,
    write_table,
)  # noqa: E402
from ace_ray.data.validate import validate  # noqa: E402
from ace_ray.runtime import ensure_ray  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "data_scale.md"
WORDS = [
    "red",
    "blue",
    "green",
    "black",
    "white",
    "striped",
    "slim",
    "classic",
    "cotton",
    "linen",
    "summer",
    "winter",
]


def make_catalogue(root: Path, n: int, pairs_per_product: float, seed: int) -> int:
    """products.parquet, impressions.parquet (clicked rows only) and one shared photo; returns the clicks."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    cv2.imwrite(str(root / "images" / "p.jpg"), rng.integers(0, 255, (64, 64, 3), np.uint8))
    cats = rng.integers(0, 40, n)
    ids = np.array([f"p{i:07d}" for i in range(n)])
    words = np.array(WORDS)[rng.integers(0, len(WORDS), (n, 3))]
    titles = [f"{' '.join(w)} item {i}" for i, w in enumerate(words)]
    write_table(pd.DataFrame({"product_id": ids, "title": titles, "category": [f"c{c}" for c in cats],
                              "category_path": [f"all/c{c}" for c in cats], "image_path": "images/p.jpg"}),
                root / PRODUCTS_FILE, PRODUCTS_SCHEMA)  # fmt: skip
    m = int(n * pairs_per_product)
    prod = rng.integers(0, n, m)
    qword = rng.integers(0, len(WORDS), m)
    queries = [f"{WORDS[q]} c{cats[p]}" for p, q in zip(prod, qword, strict=True)]
    write_table(pd.DataFrame({"day": (pd.Timestamp("2026-01-01") + pd.to_timedelta(rng.integers(0, 5, m), "D")).date,
                              "session_id": [f"s{i}" for i in range(m)], "query": queries, "product_id": ids[prod],
                              "position": 0, "clicked": True}),
                root / IMPRESSIONS_FILE, IMPRESSIONS_SCHEMA)  # fmt: skip
    return m


def _photo(rng: np.random.Generator, size: int) -> np.ndarray:
    """A product-photo-like image: a white background and, on its middle, a smooth random colour field
    with +-2 levels of noise (PNG compresses it about as it does fashion-products' photos; noise it would not)."""
    img = np.full((size, size, 3), 255, np.uint8)
    a, b = size // 5, size - size // 5
    field = cv2.resize(
        rng.integers(0, 256, (6, 6, 3), np.uint8), (b - a, b - a), interpolation=cv2.INTER_CUBIC
    )
    noisy = field.astype(np.int16) + rng.integers(-2, 3, field.shape, np.int16)
    img[a:b, a:b] = np.clip(noisy, 0, 255).astype(np.uint8)
    return img


def write_store(root: Path, n: int, pixel_size: int, seed: int) -> fs.FeatureStore:
    """A published store of random features of the real shapes for products p0000000..; part by part."""
    m = fs.FeatureManifest(backbone="random-benchmark", weights_sha256="0" * 64, roi=True, grid=4, feature_dim=1280,
                           cnn_input=224, pixel_size=pixel_size, pixel_patch=32)  # fmt: skip
    staging = fs.FeatureStore.create(root / "features", m)
    rng = np.random.default_rng(seed)
    step = 2000
    for start in range(0, n, step):
        k = min(step, n - start)
        patches = rng.standard_normal((k, m.patches * m.feature_dim), np.float32).astype(fs.PATCH_DTYPE)
        pixels = np.stack([image_to_patches(_photo(rng, pixel_size), 32).reshape(-1) for _ in range(k)])
        pq.write_table(pa.table({"product_id": [f"p{i:07d}" for i in range(start, start + k)],
                                 "status": [fs.OK] * k,
                                 "patch_features": [r.tobytes() for r in patches],
                                 "pixels": [r.tobytes() for r in pixels]}),
                       staging / f"part-{start // step:05d}.parquet")  # fmt: skip
    return fs.FeatureStore.publish(staging, m, {"products": n})


def _anon_rss() -> int:
    """This process's anonymous resident memory (heap, arrays): RSS without the pages of mapped files,
    which the page cache can drop (the feature table is written and read through memory maps)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))


class Peaks:
    """Samples the driver's RSS and anonymous RSS and its local Ray's summed PSS every ``every`` s; keeps
    the peaks."""

    def __init__(self, every: float = 1.0):
        self.every, self.driver, self.driver_anon, self.cluster = every, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.wait(self.every):
            self.driver = max(self.driver, me.memory_info().rss)
            self.driver_anon = max(self.driver_anon, _anon_rss())
            pss = 0
            # The local Ray this script started is its descendants (not another job's Ray on the machine).
            for p in me.children(recursive=True):
                with contextlib.suppress(psutil.Error, OSError):  # gone, or not ours to read
                    pss += p.memory_full_info().pss
            self.cluster = max(self.cluster, pss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


@ray.remote(num_cpus=1)
def read_rate(plan: EpochPlan, rank: int, table, limit: int) -> tuple[int, float]:
    """(pairs, seconds) of worker ``rank`` reading up to ``limit`` batches with their features."""
    t0, pairs = time.perf_counter(), 0
    for i, b in enumerate(stream(plan, 0, rank, ["batch_id", "query_ids", "title_ids", "hot_ids", "product_id",
                                                  "feature_row"], features=table, feature_columns=("patches", "pixels"))):  # fmt: skip
        pairs += b["patches"].shape[1]
        if i + 1 >= limit:
            break
    return pairs, time.perf_counter() - t0


def make_inputs(root: Path, n: int, pairs_per_product: float, pixel_size: int, seed: int) -> tuple[int, str]:
    """The catalogue and its store: (clicks, store path)."""
    clicks = make_catalogue(root, n, pairs_per_product, seed)
    return clicks, str(write_store(root, n, pixel_size, seed).path)


def measure(tmp: Path, n: int, args) -> list:
    root = tmp / f"shop{n}"
    t0 = time.perf_counter()
    # In a child process: the driver's peak RSS is then what building the training data takes, not what
    # making the benchmark's inputs took (Python does not give freed memory back).
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        clicks, store_path = pool.submit(make_inputs, root, n, args.pairs_per_product, args.pixel_size,
                                         args.seed).result()  # fmt: skip
    store = fs.FeatureStore(store_path)
    print(
        f"[data_scale] {n:,} products, {clicks:,} clicks written in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    # Validation apart: it reads the click log whole on the driver (checking rows against each other), so
    # its peak is reported beside the training data's, not mixed into it.
    with Peaks() as checked:
        validate(root)
    with Peaks() as peaks:
        write_hot_queries(root, test_days=1)
        t0 = time.perf_counter()
        table = for_store(store)
        t_table = time.perf_counter() - t0
        t0 = time.perf_counter()
        batches, counts = cached_finetune_batches(
            root, store, 1, BatchConfig(batch_size=64, partitions=100), TextConfig()
        )
        t_batches = time.perf_counter() - t0
        pretrain = build_pretrain_set(root, store, TextConfig(), holdout=0.02, seed=0)
    plan = EpochPlan.for_directory(batches, 2, 1, 0, sort_column="batch_id", window=1)
    rates = ray.get([read_rate.remote(plan, r, table, args.read_batches) for r in range(2)])
    per_worker = min(p / s for p, s in rates)
    pairs = counts["pairs"]
    features = du(table.path)
    rest = {"store (Parquet)": du(store.path) - features, "table": features, "batches": du(batches),
            "pretrain set": du(pretrain)}  # fmt: skip
    total = sum(rest.values())
    m = store.manifest
    raw = m.patches * m.feature_dim * 2 + m.pixel_patches * m.pixel_dim  # a product's features, uncompressed
    old_batches = pairs * raw  # the features copied once per pair, as the batches held them before
    print(f"[data_scale] {n:,}: " + ", ".join(f"{k} {v / 2**20:,.0f} MB" for k, v in rest.items())
          + f"; {pairs:,} pairs; table {t_table:.0f} s, batches {t_batches:.0f} s; driver peak "
          f"{peaks.driver / 2**20:,.0f} MB ({peaks.driver_anon / 2**20:,.0f} MB anonymous), Ray PSS peak {peaks.cluster / 2**20:,.0f} MB; {per_worker:,.0f} pairs/s "
          "per worker", flush=True)  # fmt: skip
    return [f"{n:,}", f"{pairs:,}", f"{total / n / 1024:,.0f}", f"{features / n / 1024:,.1f}", f"{rest['batches'] / pairs:,.0f}",
            f"{(old_batches + du(batches)) / pairs / 1024:,.0f} KB", f"{peaks.driver / 2**20:,.0f}",
            f"{peaks.driver_anon / 2**20:,.0f}", f"{checked.driver_anon / 2**20:,.0f}", f"{peaks.cluster / 2**20:,.0f}",
            f"{t_table:.0f} / {t_batches:.0f}", f"{per_worker:,.0f}"]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    ap.add_argument(
        "--pairs-per-product", type=float, default=5.0, help="the paper's 25M clicks / 4.7M products"
    )
    ap.add_argument("--pixel-size", type=int, default=224, help="smaller to fit big sizes on a small disk")
    ap.add_argument("--read-batches", type=int, default=300, help="batches each worker reads for pairs/s")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", default=None, help="where to build (needs ~2 x features x products of disk)")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    ensure_ray(None)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for n in args.sizes:
            rows.append(measure(Path(tmp), n, args))
            shutil.rmtree(Path(tmp) / f"shop{n}")  # the next size needs the disk
    header = ["products", "pairs", "KB on disk / product (all)", "table KB / product", "batch bytes / pair",
              "old layout: batch bytes / pair", "driver peak RSS MB", "driver peak anonymous MB", "validate: driver anonymous MB", "Ray PSS peak MB", "build s (table / batches)",
              "pairs/s per worker (2 workers)"]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    for r in rows:
        print("| " + " | ".join(map(str, r)) + " |")
    if not args.no_record:
        cmd = "python benchmarks/data_scale.py " + " ".join(sys.argv[1:])
        record(str(RESULTS), f"Data scale (pixel size {args.pixel_size}, {args.pairs_per_product} pairs/product)",
               header, rows, cmd)  # fmt: skip


if __name__ == "__main__":
    main()
