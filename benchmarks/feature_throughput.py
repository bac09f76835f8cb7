"""Images/s of the whole feature pipeline (decode + RoI + CNN + pixels + write, Ray Data on all cores)
against the bare CNN forward loop in one process on the same images and cores; and the peak memory of the
whole Ray job (driver + every Ray process) at two catalogue sizes.

    python benchmarks/feature_throughput.py [--sizes 2000 20000] [--bare-images 600]

Prints the figures and appends them, with the machine, to benchmarks/results/feature_throughput.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from machine import record  # noqa: E402

from ace_ray.config import ClickModelConfig, FeaturesConfig, RayConfig, SynthConfig  # noqa: E402
from ace_ray.data.backbone import load_backbone  # noqa: E402
from ace_ray.data.features import build_features, prepare_one  # noqa: E402
from ace_ray.data.schema import read_products  # noqa: E402
from ace_ray.data.synth.generate import synthesize  # noqa: E402
from ace_ray.data.validate import validate  # noqa: E402
from ace_ray.runtime import ensure_ray  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "feature_throughput.md"


class PeakMemory:
    """Samples the summed PSS of this process and every Ray process on the machine (PSS, not RSS: the
    object store is shared memory, and RSS would count it once for every process that maps it)."""

    def __init__(self, every: float = 0.5):
        self.every, self.peak, self._stop = every, 0, threading.Event()

    def _total(self) -> int:
        total = psutil.Process().memory_full_info().pss
        for p in psutil.process_iter(["name", "cmdline"]):
            try:
                cmd = " ".join(p.info["cmdline"] or [])
                if p.pid != os.getpid() and ("ray::" in cmd or "raylet" in cmd or "gcs_server" in cmd
                                              or (p.info["name"] or "").startswith("ray::")):  # fmt: skip
                    total += p.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._total())
            time.sleep(self.every)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def make_catalogue(n: int, root: Path) -> Path:
    synthesize(SynthConfig(products=n, days=2, sessions=100), ClickModelConfig(), root)
    validate(root)
    return root


def bare_cnn(root: Path, cfg: FeaturesConfig, threads: int, limit: int) -> float:
    """Images/s of the CNN alone: pre-cut crops of the first ``limit`` images, one process, ``threads``
    torch threads."""
    products = read_products(root).head(limit)
    crops = [
        np.frombuffer(prepare_one(root.resolve(), rel, cfg)["image"], np.uint8)
        for rel in products["image_path"]
    ]
    x = torch.from_numpy(np.stack(crops).reshape(-1, cfg.cnn_input, cfg.cnn_input, 3))
    torch.set_num_threads(threads)
    net = load_backbone(cfg.backbone)
    net.patch_features(x[: cfg.batch_size], cfg.grid)  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(x), cfg.batch_size):
        net.patch_features(x[i : i + cfg.batch_size], cfg.grid)
    return len(x) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000], help="catalogue sizes (products)")
    ap.add_argument("--bare-images", type=int, default=600, help="images for the bare CNN loop")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    ensure_ray(RayConfig())
    cfg = FeaturesConfig()
    rows, bare = [], None
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            root = make_catalogue(n, Path(tmp) / "shop")
            if bare is None:
                bare = bare_cnn(root, cfg, cores, args.bare_images)
            with PeakMemory() as mem:
                s = build_features(root, cfg, Path(tmp) / "features")
        ratio = s["images_per_s"] / bare
        print(f"{n} products: pipeline {s['images_per_s']:.1f} images/s ({s['cnn_actors']} CNN actors, start-up "
              f"included), bare CNN loop ({cores} threads) {bare:.1f} images/s, ratio {ratio:.2f}; peak memory "
              f"of the Ray job {mem.peak / 2**30:.2f} GiB")  # fmt: skip
        rows.append([f"{n:,} products", f"{s['images_per_s']:.1f}", f"{bare:.1f}", f"{ratio:.2f}",
                     f"{mem.peak / 2**30:.2f}"])  # fmt: skip
    if not args.no_record:
        cmd = "python benchmarks/feature_throughput.py " + " ".join(sys.argv[1:])
        header = ["catalogue", "pipeline images/s", "bare CNN images/s", "pipeline / bare",
                  "peak PSS of the Ray job (GiB)"]  # fmt: skip
        record(str(RESULTS), f"feature pipeline ({cfg.backbone}, {cfg.cnn_input}px, grid {cfg.grid})", header, rows,
               cmd.strip())  # fmt: skip
        print(f"recorded in {RESULTS}")


if __name__ == "__main__":
    main()
