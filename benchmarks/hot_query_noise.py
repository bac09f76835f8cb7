"""What the hot queries say about a product's attributes, beside what its title says. For each attribute column
of the catalogue (the fashion importer's ``colour`` and ``gender``): the share of titles, of hot queries and of
the clicked queries (train days, test days) that name a value of it, and the share of those that name another
value than the product's own ("women black heels" for blue heels). A value contained in the product's own or
the other way round ("blue" for "Navy Blue") counts as its own.

    python benchmarks/hot_query_noise.py ROOT [ROOT ...] [--test-days 2] [--hot-k 10] [--no-record]

Where the title names the attribute right and the hot queries often name another value, the hot queries can
only blur what the title says (clicks on near misses become a product's hot queries); where the title does
not name it, they are the product's only text that does. Prints the figures and appends them, with the
machine, to benchmarks/results/hot_query_effect.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import record  # noqa: E402

from ace_ray.data.clicks import clean_clicks, first_test_day  # noqa: E402
from ace_ray.data.hot_queries import read_hot_queries  # noqa: E402
from ace_ray.data.validate import load_clean  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "hot_query_effect.md"
ATTRIBUTES = ("colour", "gender")  # the fashion importer's attribute columns, where a catalogue has them


def names_other(text: str, own: str, values: list[str]) -> bool | None:
    """Whether ``text`` names a value of the attribute other than ``own``; None where it names none. Whole
    words only; a value whose words are among ``own``'s, or the other way round, is ``own``."""
    words = f" {text.lower()} "
    named = [v for v in values if f" {v} " in words]
    if not named:
        return None
    mine = set(own.lower().split())
    return not any(set(v.split()) <= mine or mine <= set(v.split()) for v in named)


def shares(texts: pd.Series, own: pd.Series, values: list[str]) -> tuple[float, float, int]:
    """(share naming a value, share of those naming another value than ``own``, how many texts)."""
    flags = pd.Series([names_other(t, o, values) for t, o in zip(texts, own, strict=True)], dtype=object)
    named = flags.dropna().astype(bool)
    return len(named) / max(len(flags), 1), float(named.mean()) if len(named) else float("nan"), len(flags)


def noise_rows(root: Path, test_days: int, hot_k: int) -> list[list]:
    """One row per attribute column and kind of text."""
    loaded = load_clean(root)
    products, imp = loaded[0].set_index("product_id"), loaded[1]
    hot = read_hot_queries(root, test_days, hot_k).explode("hot_queries").dropna(subset=["hot_queries"])
    day = pd.to_datetime(imp["day"])
    test = imp[(day >= pd.Timestamp(first_test_day(root, test_days))) & imp["clicked"].astype(bool)]
    train = clean_clicks(root, test_days, loaded)
    texts = {
        "titles": (products["title"], products.index),
        "hot queries": (hot["hot_queries"], hot["product_id"]),
        "train-day clicks' queries": (train["query"], train["product_id"]),
        "test-day clicks' queries": (test["query"], test["product_id"]),
    }
    rows = []
    for attr in (a for a in ATTRIBUTES if a in products):
        own = products[attr].fillna("").astype(str)
        values = sorted({v.lower() for v in own if v})
        for kind, (text, ids) in texts.items():
            keep = pd.Index(ids).isin(products.index)
            named, other, n = shares(text[keep], own.reindex(pd.Index(ids)[keep]), values)
            print(f"[hot_query_noise] {root.name}: {attr}, {kind}: {n:,} texts, {named:.3f} name a {attr}, "
                  f"{other:.3f} of those another than the product's", flush=True)  # fmt: skip
            rows.append([root.name, attr, kind, f"{n:,}", f"{named:.3f}", f"{other:.3f}"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("roots", nargs="+", type=Path, help="imported catalogue directories")
    ap.add_argument("--test-days", type=int, default=2)
    ap.add_argument("--hot-k", type=int, default=10)
    ap.add_argument("--no-record", action="store_true", help="print only")
    args = ap.parse_args()
    rows = [row for root in args.roots for row in noise_rows(root, args.test_days, args.hot_k)]
    if not args.no_record:
        record(str(RESULTS), "what the hot queries say about a product's attributes, beside its title",
               ["import", "attribute", "texts", "how many", "share naming one", "of those, another than the product's"],
               rows, "python benchmarks/hot_query_noise.py " + " ".join(sys.argv[1:]))  # fmt: skip


if __name__ == "__main__":
    main()
