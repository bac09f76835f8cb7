"""Do the stored image features know a product's colour? A linear probe on a catalogue's feature store.

    python benchmarks/colour_probe.py --root data/fp [--attribute colour] [--top 12]

The photo can only help where the title is silent if the features the model sees carry what the title
does not. This fits a multinomial logistic regression (full batch, L-BFGS, 1 thread) from each kind of
stored feature to the product's attribute (the ``--top`` most frequent values), on 80% of the products, and
reports accuracy on the other 20%, beside the majority-class rate:
- RoI patch features (the CNN's, mean over the RoI grid);
- pixel patches (mean RGB of each 32 px patch: the colour layout the pixel segment sees);
- both.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from machine import record  # noqa: E402

from ace_ray.data import feature_store as fs  # noqa: E402
from ace_ray.data.feature_table import for_store  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "colour_probe.md"


def probe(x: np.ndarray, y: np.ndarray, train: np.ndarray, classes: int, l2: float = 1e-3) -> float:
    """Held-out accuracy of a logistic regression from standardised ``x`` to ``y``."""
    x = torch.from_numpy(x.astype(np.float32))
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    x = (x - mu) / sd
    y = torch.from_numpy(y)
    lin = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(x[train]), y[train]) + l2 * lin.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((lin(x[~train]).argmax(1) == y[~train]).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="catalogue directory with features (data.root)")
    ap.add_argument("--attribute", default="colour")
    ap.add_argument("--top", type=int, default=12, help="the most frequent values kept as classes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(args.root)
    store = fs.latest(root / "features", roi=True)
    table = for_store(store)
    products = pd.read_parquet(root / "products.parquet", columns=["product_id", args.attribute])
    ids = table.ids.merge(products, on="product_id")
    keep = ids[args.attribute].value_counts().index[: args.top]
    ids = ids[ids[args.attribute].isin(keep)].reset_index(drop=True)
    y = pd.Categorical(ids[args.attribute], categories=keep).codes.astype(np.int64)
    rows = ids["row"].to_numpy()
    patches = np.concatenate([table.gather(rows[i : i + 512], "patches").astype(np.float32).mean(1)
                              for i in range(0, len(rows), 512)])  # fmt: skip
    m = store.manifest
    pixels = np.concatenate([table.gather(rows[i : i + 512], "pixels").reshape(-1, m.pixel_patches, m.pixel_patch**2, 3)
                             .mean(2).reshape(-1, m.pixel_patches * 3) for i in range(0, len(rows), 512)])  # fmt: skip
    train = np.random.default_rng(args.seed).random(len(y)) < 0.8
    majority = float(np.mean(y[~train] == np.bincount(y[train]).argmax()))
    res = {
        "RoI patch features (CNN, mean over patches)": probe(patches, y, train, len(keep)),
        "pixel patches (mean RGB per patch)": probe(pixels, y, train, len(keep)),
        "both": probe(np.concatenate([patches, pixels], 1), y, train, len(keep)),
    }
    rows_out = [["majority class", f"{majority:.3f}"]] + [[k, f"{v:.3f}"] for k, v in res.items()]
    for k, v in rows_out:
        print(f"{k:48s} {v}")
    if not args.no_record:
        record(str(RESULTS), f"{args.attribute} from the stored features of {root.name} ({len(y):,} products, "
               f"{len(keep)} classes, held-out 20%)", ["features", "held-out accuracy"], rows_out,
               "python benchmarks/colour_probe.py " + " ".join(sys.argv[1:]))  # fmt: skip


if __name__ == "__main__":
    main()
