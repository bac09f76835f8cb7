"""Search-service latency over real HTTP on loopback (issue 14): p50/p95/p99 and QPS at concurrency 1, 8
and 32 for cached (hot) and uncached (tail) queries, with the teacher and the distilled query tower, at
10k products (a real index of a synthetic shop) and 1M products (synthetic embeddings derived from the
real ones: HNSW, IVF-PQ, IVF-PQ re-ranked with stored vectors), beside a Ray Serve endpoint that does
nothing (the floor); ANN Recall@100 against exact search with the search-time latency for a few
settings of each index (in-process, one FAISS thread as served); the query tower in PyTorch and ONNX
Runtime in-process.

    python benchmarks/serve_latency.py [--work data/bench_serve] [--seconds 4] [--only ann,http]
        [--towers student] [--indexes flat10k,hnsw,ivfpq-refine] [--ef-search 512] [--nprobe 64]

Everything runs on this machine, on 127.0.0.1, bounded per cell in requests and seconds; each cell is
preceded by unmeasured warm-up requests. The shop, model and indexes are kept in ``--work`` so a rerun
only measures. Results are appended to ``benchmarks/results/serve_latency.md``, with the load average.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import record  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "serve_latency.md"
CONCURRENCY = (1, 8, 32)
# Noise (as a norm) added to a real embedding to make a synthetic product: large enough that the 1M
# products are distinct, not 100 near-copies of each real one (a degenerate case for graph indexes).
NOISE = 0.6
HNSW = {"hnsw_m": 32, "ef_construction": 80, "ef_search": 256}
IVFPQ = {"pq_m": 32, "nprobe": 64, "train_size": 65_536}
# The 1M indexes: name -> (kind, IndexSettings overrides); directory names keep the first run's.
BIG = {"hnsw": ("hnsw", {}), "ivfpq": ("ivfpq", {}), "ivfpq-refine": ("ivfpq", {"refine": "flat"}),
       "ivfpq-sq8": ("ivfpq", {"refine": "sq8"})}  # fmt: skip
# Search-time settings swept for Recall@100 vs latency.
SWEEP = {"hnsw": [{"ef_search": e} for e in (128, 256, 512, 1024, 2048)],
         "ivfpq": [{"nprobe": p} for p in (64, 256)],
         "ivfpq-refine": [{"nprobe": p, "k_factor": f} for p in (32, 64, 128) for f in (2, 4, 8)],
         "ivfpq-sq8": [{"nprobe": p, "k_factor": f} for p in (64, 128) for f in (4, 8)]}  # fmt: skip


def setup_shop(work: Path, products: int):
    """A featurised synthetic shop of ``products`` products and its workload (made once)."""
    from ace_ray.config import load_workload
    from ace_ray.data import feature_store as fs
    from ace_ray.data.features import build_features
    from ace_ray.data.hot_queries import write_hot_queries
    from ace_ray.data.synth.generate import synthesize
    from ace_ray.data.validate import validate

    root = work / "shop"
    w = load_workload(None, [f"workspace={work}", f"data.root={root}", "data.test_days=1", f"data.synth.products={products}",
                             "data.synth.days=4", "data.synth.sessions=1500", "data.features.cnn_input=64",
                             "data.features.grid=2"])  # fmt: skip
    if not (root / "validation.json").is_file():
        synthesize(w.data.synth, w.data.clicks, root)
        validate(root)
    try:
        store = fs.for_workload(w)
    except FileNotFoundError:
        build_features(root, w.data.features)
        store = fs.for_workload(w)
    write_hot_queries(root, test_days=1)
    return w, root, store


def setup_models(w, root: Path, store, work: Path) -> tuple[Path, Path]:
    """The teacher (MiniLM, first 4 layers, untrained projection: latency does not depend on training)
    and its distilled 2-layer student (``ace_ray.train.distill``, one epoch)."""
    import torch

    from ace_ray.data.clicks import train_split
    from ace_ray.model.towers import build_towers, save_towers
    from ace_ray.train.distill import distill

    teacher, student = work / "teacher", work / "student"
    if not (teacher / "ace_ray.json").is_file():
        torch.manual_seed(0)
        towers = build_towers(w, store.manifest.feature_dim, store.manifest.pixel_dim).eval()
        save_towers(towers, teacher, w.data.text.tokenizer, {"feature_manifest": dataclasses.asdict(store.manifest),
                    "preset": "acebert", "text": dataclasses.asdict(w.data.text), "split": train_split(root, 1)})  # fmt: skip
    if not (student / "ace_ray.json").is_file():
        cfg = dataclasses.replace(w.finetune.distill, layers=2, epochs=1)
        distill(teacher, root, 1, cfg, student)
    return teacher, student


def big_dir(work: Path, n: int, name: str) -> Path:
    return work / f"synthetic-{n}-{name}-noise{NOISE}"


def synthetic_index(
    real: Path, out: Path, n: int, kind: str, seed: int = 0, **overrides
) -> tuple[Path, float]:
    """An index directory of ``n`` synthetic products: each a real product's embedding plus noise
    (so the 1M catalogue keeps the real one's structure), for the same model; returns (dir, build s).
    ``overrides``: ``IndexSettings`` fields beside the benchmark's HNSW and IVF-PQ ones."""
    import faiss
    import pandas as pd

    from ace_ray.eval import index as faiss_index
    from ace_ray.serve import index_dir
    from ace_ray.serve.index_job import StreamingIndex
    from ace_ray.serve.settings import IndexSettings

    if (out / index_dir.MANIFEST_FILE).is_file():
        return out, json.loads((out / index_dir.MANIFEST_FILE).read_text())["params"].get("seconds", 0.0)
    base = faiss_index.load_index(real / index_dir.INDEX_FILE)
    base = base.reconstruct_n(0, base.ntotal)
    cats = pd.read_parquet(real / index_dir.PRODUCTS_FILE)["category"].to_numpy()
    rng = np.random.default_rng(seed)
    cfg = IndexSettings(kind=kind, **{**HNSW, **IVFPQ, **overrides})
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    idx = StreamingIndex(kind, n, cfg)
    for start in range(0, n, 100_000):
        emb = synthetic_embeddings(base, start, min(n, start + 100_000), rng)
        idx.add(emb)
    index = idx.finish()
    seconds = time.perf_counter() - t0
    faiss_index.save_index(index, out / index_dir.INDEX_FILE)
    ids = np.array([f"synth-{i}" for i in range(n)])
    pd.DataFrame({"product_id": ids, "title": np.char.add("synthetic product ", np.arange(n).astype(str)),
                  "category": cats[np.arange(n) % len(cats)]}).to_parquet(out / index_dir.PRODUCTS_FILE)  # fmt: skip
    pd.read_parquet(real / index_dir.HOT_FILE).to_parquet(out / index_dir.HOT_FILE)
    m = index_dir.IndexManifest.read(real)
    m = dataclasses.replace(
        m,
        version=out.name,
        kind=kind,
        products=n,
        params={"seconds": seconds, "synthetic": True, **dataclasses.asdict(cfg)},
    )
    m.write(out)
    del faiss
    return out, seconds


def synthetic_embeddings(base: np.ndarray, start: int, stop: int, rng) -> np.ndarray:
    """Rows ``start:stop`` of the synthetic catalogue: a real embedding plus Gaussian noise, unit length."""
    x = base[np.arange(start, stop) % len(base)] + rng.normal(
        0, NOISE / np.sqrt(base.shape[1]), (stop - start, base.shape[1])
    )
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_top(real: Path, n: int, queries: np.ndarray, k: int = 100) -> np.ndarray:
    """Exact top ``k`` rows of the ``n`` synthetic products (regenerated as the indexes were) per query."""
    import faiss

    from ace_ray.eval import index as faiss_index
    from ace_ray.serve import index_dir

    base = faiss_index.load_index(real / index_dir.INDEX_FILE)
    base = base.reconstruct_n(0, base.ntotal)
    exact = faiss.IndexFlatIP(base.shape[1])
    rng = np.random.default_rng(0)  # the same draws the indexes were built from
    for start in range(0, n, 100_000):
        exact.add(synthetic_embeddings(base, start, min(n, start + 100_000), rng))
    return faiss_index.search(exact, queries, k)[1]


def ann_sweep(name: str, path: Path, queries: np.ndarray, want: np.ndarray, k: int = 100) -> list[dict]:
    """Recall@k against ``want`` (exact) and single-query latency with one FAISS thread (as a ProductIndex
    replica serves) for each search-time setting of ``SWEEP[name]``; index memory (serialised size)."""
    import faiss

    from ace_ray.eval import index as faiss_index
    from ace_ray.serve import index_dir

    index = faiss_index.load_index(path / index_dir.INDEX_FILE)
    mib = (path / index_dir.INDEX_FILE).stat().st_size / 2**20
    faiss.omp_set_num_threads(1)
    rows = []
    for params in SWEEP[name]:
        index_dir.set_search_params(index, **params)
        for q in queries[:10]:  # warm-up
            index.search(q.reshape(1, -1), k)
        lat, got = [], []
        for q in queries:
            t0 = time.perf_counter()
            got.append(index.search(q.reshape(1, -1), k)[1][0])
            lat.append((time.perf_counter() - t0) * 1000)
        recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got, want, strict=True)]))
        rows.append({"index": name, "params": params, "recall": recall, "p50": np.percentile(lat, 50),
                     "p99": np.percentile(lat, 99), "mib": mib, "load": os.getloadavg()[0]})  # fmt: skip
        print(f"[bench] ann {rows[-1]}", flush=True)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return rows


def load(url: str, bodies: list[dict], concurrency: int, seconds: float, max_requests: int) -> dict:
    """Closed-loop load: ``concurrency`` threads, each with a keep-alive session, posting bodies in turn
    until ``seconds`` pass or ``max_requests`` are sent; latency percentiles and QPS of the 200s."""
    import requests

    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    end = time.monotonic() + seconds
    counter = iter(range(max_requests))

    def worker() -> None:
        s = requests.Session()
        for i in counter:
            if time.monotonic() > end:
                break
            t0 = time.perf_counter()
            r = s.post(url, json=bodies[i % len(bodies)], timeout=60)
            dt = time.perf_counter() - t0
            with lock:
                if r.status_code == 200:
                    lat.append(dt)
                else:
                    errors[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.array(lat) * 1000 if lat else np.array([np.nan])
    return {"n": len(lat), "errors": errors[0], "p50": np.percentile(ms, 50), "p95": np.percentile(ms, 95),
            "p99": np.percentile(ms, 99), "qps": len(lat) / wall}  # fmt: skip


def noop_app():
    """A Serve endpoint that does nothing (reads the body, answers a fixed JSON) through the same proxy and
    HTTP path as the search service: the floor its latency is compared against."""
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @serve.deployment(name="Noop", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=100)
    @serve.ingress(api)
    class Noop:
        @api.post("/search")
        async def search(self) -> dict:
            return {"results": []}

    return Noop.bind()


def tower_speed(teacher: Path, student: Path, queries: list[str]) -> list[list]:
    """ms per query in-process, batch 1 and batch 16, for each tower and runtime."""
    from ace_ray.serve.query_tower import OnnxQueryEncoder, TorchQueryEncoder

    rows = []
    for name, path in (("teacher (4 layers)", teacher), ("student (2 layers)", student)):
        for cls in (TorchQueryEncoder, OnnxQueryEncoder):
            enc = cls(path)
            enc.encode(queries[:16])
            for batch in (1, 16):
                t0 = time.perf_counter()
                for i in range(0, 160, batch):
                    enc.encode(queries[i : i + batch])
                rows.append([name, enc.backend, batch, f"{(time.perf_counter() - t0) * 1000 / 160:.2f}"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="data/bench_serve", help="shop, models and indexes (kept between runs)")
    ap.add_argument("--products", type=int, default=10_000)
    ap.add_argument("--big", type=int, default=1_000_000, help="products of the synthetic catalogue")
    ap.add_argument("--seconds", type=float, default=4.0, help="per measured cell")
    ap.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of unmeasured requests before each cell"
    )
    ap.add_argument("--port", type=int, default=8321)
    ap.add_argument("--only", default="tower,ann,http", help="sections to run: tower, ann, http (comma list)")
    ap.add_argument("--towers", default="teacher,student", help="query towers of the uncached HTTP cells")
    ap.add_argument("--indexes", default="flat10k,hnsw,ivfpq,ivfpq-refine",
                    help=f"indexes of the HTTP cells: flat10k, {', '.join(BIG)}")  # fmt: skip
    ap.add_argument("--ann", default=",".join(BIG), help="1M indexes whose search settings are swept")
    ap.add_argument("--ef-search", type=int, default=0, help="HNSW efSearch served (0: the index's own)")
    ap.add_argument("--nprobe", type=int, default=0, help="IVF nprobe served (0: the index's own)")
    ap.add_argument(
        "--k-factor", type=int, default=0, help="re-ranked candidates per result (0: the index's)"
    )
    args = ap.parse_args()
    only = set(args.only.split(","))
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")

    from ray import serve

    from ace_ray.config import RayConfig
    from ace_ray.runtime import ensure_ray
    from ace_ray.serve import app as search_app
    from ace_ray.serve.index_dir import HOT_FILE, find
    from ace_ray.serve.index_job import build_index_dir
    from ace_ray.serve.query_tower import TorchQueryEncoder
    from ace_ray.serve.settings import IndexSettings, ServiceSettings

    t_start = time.perf_counter()
    ensure_ray(RayConfig(num_cpus=4))
    w, root, store = setup_shop(work, args.products)
    teacher, student = setup_models(w, root, store, work)
    try:
        real = find(work / "indexes")
    except FileNotFoundError:
        real = build_index_dir(
            teacher, root, store, work / "indexes", IndexSettings(kind="flat", hot_cache=2000), 1
        )
    print(f"[bench] setup done in {time.perf_counter() - t_start:.0f} s; index {real}", flush=True)

    import pandas as pd

    cmd = "python " + " ".join(sys.argv)
    hot = pd.read_parquet(real / HOT_FILE)["key"].tolist()[:200]
    tail = [f"{q} extra words {i}" for i, q in enumerate(hot * 10)][:1000]  # never cached
    needed = set(args.indexes.split(",")) - {"flat10k"} if "http" in only else set()
    needed |= set(args.ann.split(",")) if "ann" in only else set()
    big = {}
    for name in [b for b in BIG if b in needed]:
        kind, overrides = BIG[name]
        path, build_s = synthetic_index(real, big_dir(work, args.big, name), args.big, kind, **overrides)
        big[name] = {"path": path, "build_s": build_s}
        print(f"[bench] {name} at {args.big:,}: built in {build_s:.0f} s", flush=True)

    if "tower" in only:
        record(str(RESULTS), "Query tower in-process (160 tail queries)", ["tower", "runtime", "batch", "ms per query"],
               tower_speed(teacher, student, tail), cmd)  # fmt: skip

    if "ann" in only:
        tail_emb = TorchQueryEncoder(teacher).encode(tail[:200])
        t0 = time.perf_counter()
        want = exact_top(real, args.big, tail_emb)
        exact_s = time.perf_counter() - t0
        rows = []
        for name in args.ann.split(","):
            for r in ann_sweep(name, big[name]["path"], tail_emb, want):
                params = ", ".join(f"{k} {v}" for k, v in r["params"].items())
                rows.append([name, params, f"{r['recall']:.3f}", f"{r['p50']:.2f}", f"{r['p99']:.2f}",
                             f"{r['mib']:.0f}", f"{big[name]['build_s']:.0f}", f"{r['load']:.1f}"])  # fmt: skip
        flat_mib = args.big * tail_emb.shape[1] * 4 / 2**20
        record(str(RESULTS), f"ANN at {args.big:,} synthetic products: Recall@100 vs exact and search latency "
               f"(200 tail queries, one at a time, one FAISS thread; exact ground truth {exact_s:.0f} s; "
               f"float32 vectors alone {flat_mib:.0f} MiB)",
               ["index", "search setting", "Recall@100", "p50 ms", "p99 ms", "index MiB", "build s", "load 1m"],
               rows, cmd)  # fmt: skip

    if "http" in only:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        url = f"http://127.0.0.1:{args.port}"
        serve.run(noop_app(), name="noop", route_prefix="/noop")
        rows = []

        def measure(label: str, tower: str, index: str, path: str, bodies: list[dict]) -> None:
            for c in CONCURRENCY:
                load(f"{url}{path}", bodies[::-1], c, args.warmup, 1000 * c)  # unmeasured warm-up
                r = load(f"{url}{path}", bodies, c, args.seconds, 400 * c)
                rows.append([label, tower, index, c, r["n"], r["errors"], f"{r['p50']:.1f}", f"{r['p95']:.1f}",
                             f"{r['p99']:.1f}", f"{r['qps']:.0f}", f"{os.getloadavg()[0]:.1f}"])  # fmt: skip
                print(f"[bench] {rows[-1]}", flush=True)

        body_hot = [{"query": q, "k": 10} for q in hot]
        body_tail = [{"query": q, "k": 10} for q in tail]
        measure("do-nothing endpoint (floor)", "-", "-", "/noop/search", body_hot)
        m = args.big // 10**6
        labels = {"flat10k": (f"{args.products // 1000}k real, flat", real), "hnsw": (f"{m}M synthetic, HNSW", None),
                  "ivfpq": (f"{m}M synthetic, IVF-PQ", None), "ivfpq-refine": (f"{m}M synthetic, IVF-PQ + re-rank", None),
                  "ivfpq-sq8": (f"{m}M synthetic, IVF-PQ + sq8 re-rank", None)}  # fmt: skip
        towers = {"teacher": "", "student": str(student)}
        for i, tower in enumerate(args.towers.split(",")):
            settings = ServiceSettings(index=str(real), model=str(teacher), query_model=towers[tower], max_batch_size=16,
                                       max_ongoing_requests=64, scaling={"min_replicas": 1, "max_replicas": 1},
                                       ef_search=args.ef_search, nprobe=args.nprobe, k_factor=args.k_factor)  # fmt: skip
            serve.run(search_app.build(settings), name="search", route_prefix="/")
            for name in args.indexes.split(","):
                label, path = labels[name]
                search_app.swap_index(settings, path or big[name]["path"])
                if i == 0:
                    measure("cached /search", "-", label, "/search", body_hot)
                measure("uncached /search", tower, label, "/search", body_tail)
            serve.delete("search")
        serve.shutdown()
        total = time.perf_counter() - t_start
        record(str(RESULTS), f"HTTP latency, {args.products:,} and {args.big:,} products ({total:.0f} s in all)",
               ["queries", "query tower", "index", "concurrency", "requests", "errors", "p50 ms", "p95 ms", "p99 ms",
                "QPS", "load 1m"], rows, cmd)  # fmt: skip
    print(f"[bench] done in {time.perf_counter() - t_start:.0f} s; results in {RESULTS}")


if __name__ == "__main__":
    main()
