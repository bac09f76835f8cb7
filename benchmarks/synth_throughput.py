"""Products/s of ``ace-ray synth`` (products + images, then the click log) at 1 and at 2 Ray workers.

    python benchmarks/synth_throughput.py [--products 4000] [--workers 1 2]

Prints the figures and appends them, with the machine, to benchmarks/results/synth_throughput.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import record  # noqa: E402

from ace_ray.config import ClickModelConfig, RayConfig, SynthConfig  # noqa: E402
from ace_ray.data.synth.generate import synthesize  # noqa: E402
from ace_ray.runtime import ensure_ray  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "synth_throughput.md"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=4000)
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--sessions", type=int, default=2000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-record", action="store_true", help="print only")
    args = ap.parse_args()
    ensure_ray(RayConfig(num_cpus=max(args.workers)))
    # Warm-up: the first tasks pay for worker start-up, which is not generation speed.
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(SynthConfig(products=200, days=1, sessions=10, shard_size=100), ClickModelConfig(), tmp)
    rows = []
    for w in args.workers:
        cfg = SynthConfig(products=args.products, days=args.days, sessions=args.sessions, workers=w)
        out = Path(tempfile.mkdtemp(prefix="synth-bench-"))
        try:
            fig = synthesize(cfg, ClickModelConfig(), out)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        total_ps = fig["products"] / fig["seconds_total"]
        print(
            f"workers={w}: {fig['products_per_s']:.0f} products/s (products + images), "
            f"{total_ps:.0f} products/s including the click log ({fig['impressions']:.0f} impressions), "
            f"{fig['seconds_total']:.1f} s"
        )
        rows.append(
            [
                w,
                args.products,
                f"{fig['products_per_s']:.0f}",
                f"{total_ps:.0f}",
                f"{fig['seconds_total']:.1f}",
            ]
        )
    if len(rows) > 1:
        print(
            f"speed-up {args.workers[-1]} vs {args.workers[0]} workers: {float(rows[-1][2]) / float(rows[0][2]):.2f}x"
        )
    if not args.no_record:
        cmd = "python benchmarks/synth_throughput.py " + " ".join(sys.argv[1:])
        header = [
            "workers",
            "products",
            "products/s (products+images)",
            "products/s (incl. click log)",
            "seconds",
        ]
        record(str(RESULTS), "synth throughput", header, rows, cmd.strip())
        print(f"recorded in {RESULTS}")


if __name__ == "__main__":
    main()
