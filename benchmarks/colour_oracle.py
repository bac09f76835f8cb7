"""The most a photo could add on a colour-hidden import (issue 16's 1.3x target, measured against its ceiling).

On ``ace-ray import fashion-products --hide-in-title colour`` the titles lose their colour words while the
simulated shoppers still ask for colours, so only the photo can tell a product tower that a shirt is blue.
This builds a copy of such a catalogue whose titles name the colour again (``"<colour> <title>"``), with the
same click log and images, and runs ``ace-ray reproduce`` on it with the text-only preset, the same workload,
seeds and budget. That model reads every product's colour without error, so its recall on the same test
clicks is the ceiling for any model that has to read the colour from the photo; the gap between it and
TwinBERT on the colour-hidden catalogue is all the photo can win there.

    python benchmarks/colour_oracle.py --data data/fp_colour [key=value ...] \
        [--workload workloads/levers_fashion.yaml] [--out data/fp_colour_oracle] [--rows twinbert ...]

(``--rows`` takes every word after it, so overrides go before it.)

Prints the figures and appends them, with the machine, to benchmarks/results/colour_oracle.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import record  # noqa: E402

from ace_ray.data.schema import (  # noqa: E402
    IMAGES_DIR,
    IMPRESSIONS_FILE,
    MANIFEST_FILE,
    PRODUCTS_FILE,
    QUARANTINE_FILE,
)
from ace_ray.data.validate import file_sha256  # noqa: E402
from ace_ray.eval.report import summarise_seeds  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "colour_oracle.md"
METRICS = ["recall@100", "gauc", "cold_recall@100", "cold_among_cold_recall@100"]


def with_colour_titles(src: Path, out: Path, ace_ray: str) -> int:
    """Copy catalogue ``src`` to ``out`` (images hard-linked) with each product's ``colour`` put back in
    front of its title, and validate it. An ``out`` that already holds exactly that copy is kept, with the
    features built in it. Returns how many titles name their colour."""
    products = pd.read_parquet(src / PRODUCTS_FILE)
    if "colour" not in products.columns:
        raise SystemExit(
            f"{src / PRODUCTS_FILE}: no colour column; make the import with --hide-in-title colour"
        )
    colour = products["colour"].where(products["colour"].notna(), "").astype(str).str.strip()
    titled = colour + " " + products["title"].astype(str)
    products["title"] = titled.where(colour != "", products["title"]).str.strip()
    manifest = json.loads((src / MANIFEST_FILE).read_text())
    manifest.setdefault("params", {})["colour_oracle_of"] = str(src.resolve())
    if not _holds(out, products, manifest, src):
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        products.to_parquet(out / PRODUCTS_FILE, index=False)
        shutil.copy2(src / IMPRESSIONS_FILE, out / IMPRESSIONS_FILE)
        (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        # Hard links: validation refuses images that link outside the catalogue; the bytes are not copied.
        shutil.copytree(src / IMAGES_DIR, out / IMAGES_DIR, copy_function=os.link)
        subprocess.run([ace_ray, "validate", str(out)], check=True, stdout=subprocess.DEVNULL)
    return int((colour != "").sum())


def _holds(out: Path, products: pd.DataFrame, manifest: dict, src: Path) -> bool:
    """Whether ``out`` is already this copy of ``src``, validated."""
    try:
        return (
            pd.read_parquet(out / PRODUCTS_FILE).equals(products)
            and json.loads((out / MANIFEST_FILE).read_text()) == manifest
            and file_sha256(out / IMPRESSIONS_FILE) == file_sha256(src / IMPRESSIONS_FILE)
            and (out / QUARANTINE_FILE).is_file()
        )
    except (OSError, ValueError):
        return False


def reproduce(ace_ray: str, workload: str, data: Path, rows: list[str], overrides: list[str]) -> Path:
    """Run ``ace-ray reproduce`` with ``rows`` as its one table; the report directory it wrote."""
    tables = json.dumps({"Colour oracle: titles that name the colour": rows})
    cmd = [ace_ray, "reproduce", "--workload", workload, "--data", str(data), f"reproduce.tables={tables}",
           *overrides]  # fmt: skip
    print("+", " ".join(cmd), flush=True)
    found = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:  # its progress shows as it runs
        for line in proc.stdout:
            sys.stdout.write(line)
            found += re.findall(r"\[reproduce\] report (\S+) \(", line)
    if proc.returncode or not found:
        raise SystemExit(f"ace-ray reproduce failed (exit {proc.returncode})")
    return Path(found[-1]).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="a validated --hide-in-title colour import")
    ap.add_argument("--out", type=Path, help="where the copy goes (default: DATA_oracle beside it)")
    ap.add_argument("--workload", default="workloads/levers_fashion.yaml")
    ap.add_argument("--rows", nargs="+", default=["twinbert"])
    ap.add_argument(
        "overrides", nargs="*", help="key=value workload overrides, e.g. finetune.train.max_steps=200"
    )
    args = ap.parse_args()
    out = args.out or args.data.with_name(args.data.name + "_oracle")
    ace_ray = str(Path(sys.executable).with_name("ace-ray"))
    changed = with_colour_titles(args.data, out, ace_ray)
    print(f"{out}: {changed} titles name their colour again")
    report = reproduce(ace_ray, args.workload, out, args.rows, args.overrides)
    summary = summarise_seeds(pd.read_csv(report / "results.csv"), ["method"], METRICS)
    table = []
    for _, r in summary.iterrows():
        cells = [f"{r[f'{m}_mean']:.4f} ± {r[f'{m}_std']:.4f}" for m in METRICS]
        table.append([r["method"], *cells, r["n"]])
        print(r["method"], *cells)
    command = (
        f"python benchmarks/colour_oracle.py --data {args.data} --workload {args.workload} --rows "
        + " ".join(f"'{r}'" for r in args.rows)
        + "".join(f" {o}" for o in args.overrides)
    )
    record(str(RESULTS), f"titles that name the colour again on {args.data.name} (report {report})",
           ["method", *METRICS, "seeds"], table, command)  # fmt: skip


if __name__ == "__main__":
    main()
