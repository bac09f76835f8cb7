"""What orders a test-day query session's clicks: the GAUC (as evaluation computes it) of single signals
that need no model, on the test days' sessions of an imported catalogue.

    python benchmarks/gauc_signals.py ROOT [ROOT ...] [--test-days 2] [--no-record]

- position: the shop's own ranking, which decided what the shopper looked at (no model can see it);
- title overlap: the share of the query's words in the title (what a text-only model can read);
- query among hot queries / its train-day clicks on the product: what the hot-query text says about the pair;
- product train-day clicks, its click-through rate, its number of distinct clicked queries: popularity;
- title overlap + click-through rate: the two together;
- on a catalogue with a ``colour`` column: whether the product's true colour is the one the query asks (+1,
  -1 for another colour, 0 when the query names none), alone and added to the title overlap: what a model
  that read every photo's colour perfectly could add to the title (on a ``--hide-in-title colour`` import,
  the photo's whole worth for colour).

Each signal also gets the cold products' GAUC (``ace_ray.eval.metrics.cold_gauc``: their clicks against the
session's unclicked impressions, and against its unclicked cold ones only), where no popularity is known.

Simulated shoppers click by the product's true attributes times a latent appeal (``clicklog``), so a
product's past clicks say how likely it is to be clicked when shown: a model whose in-batch negatives are
drawn by clicks is pushed the other way unless the loss corrects for it (``finetune.logq_correction``).
Prints the figures and appends them, with the machine, to benchmarks/results/gauc_signals.md.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import record  # noqa: E402

from ace_ray.data import lexicon  # noqa: E402
from ace_ray.data.clicks import clean_clicks, first_test_day  # noqa: E402
from ace_ray.data.hot_queries import read_hot_queries  # noqa: E402
from ace_ray.data.validate import load_clean  # noqa: E402
from ace_ray.eval.metrics import cold_gauc, gauc  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "gauc_signals.md"


def colour_match(queries: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """+1 where the query names the product's colour, -1 where it names only other colours, 0 where none
    (colours as the catalogue writes them, matched case-blind as whole words, longest first)."""
    names = sorted(
        {str(c).lower() for c in pd.unique(colours) if isinstance(c, str) and c.strip()},
        key=len,
        reverse=True,
    )
    said = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    asked = [set(said.findall(str(q).lower())) for q in queries]
    return np.array(
        [0.0 if not a else 1.0 if str(c).lower() in a else -1.0 for a, c in zip(asked, colours, strict=True)]
    )


def signals(root: Path, test_days: int, hot_k: int = 10) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The test days' impressions of catalogue products (``cold``: the product has no train-day click) and
    each signal's score per impression."""
    products, imp = load_clean(root)
    train = clean_clicks(root, test_days, (products, imp))
    shown = imp[imp["product_id"].isin(set(products["product_id"]))]
    in_test = pd.to_datetime(shown["day"]) >= pd.Timestamp(first_test_day(root, test_days))
    test = shown[in_test].reset_index(drop=True)
    shown_train = shown[~in_test]["product_id"].value_counts()
    pair_clicks = train.groupby(["product_id", "query"]).size()
    # The stored table training and evaluation read, not a recount.
    hot = read_hot_queries(root, test_days, hot_k).explode("hot_queries")
    hot_pairs = set(zip(hot["product_id"], hot["hot_queries"], strict=True))
    clicks = train["product_id"].value_counts()
    distinct = train.groupby("product_id")["query"].nunique()
    title_words = products["title"].astype(str).map(lambda t: set(lexicon.tokens(t)))
    titles = dict(zip(products["product_id"], title_words, strict=True))
    pids, queries = test["product_id"].to_numpy(), test["query"].to_numpy()
    words = [lexicon.tokens(q) for q in queries]
    overlap = np.array([len(set(w) & titles[p]) / max(1, len(w)) for p, w in zip(pids, words, strict=True)])
    n_clicks = test["product_id"].map(clicks).fillna(0).to_numpy(float)
    ctr = n_clicks / (test["product_id"].map(shown_train).fillna(0).to_numpy(float) + 1)
    test["cold"] = n_clicks == 0
    out = {
        "position (the shop's ranking)": -test["position"].to_numpy(float),
        "title overlap": overlap,
        "query among the product's hot queries": np.array([(p, q) in hot_pairs for p, q in zip(pids, queries, strict=True)], float),
        "the query's train-day clicks on the product": np.array([pair_clicks.get((p, q), 0) for p, q in zip(pids, queries, strict=True)], float),
        "product's train-day clicks": n_clicks,
        "product's click-through rate": ctr,
        "product's distinct clicked queries": test["product_id"].map(distinct).fillna(0).to_numpy(float),
        "title overlap + click-through rate": overlap + ctr,
    }  # fmt: skip
    if "colour" in products:
        match = colour_match(
            queries, test["product_id"].map(products.set_index("product_id")["colour"]).to_numpy()
        )
        out["the product's true colour is the one asked"] = match
        out["title overlap + true colour"] = overlap + match
    return test, out


def rows_for(root: Path, test_days: int) -> list[list]:
    test, scores = signals(root, test_days)
    y, sessions = test["clicked"].astype(int).to_numpy(), test["session_id"].astype(str).to_numpy()
    cold = test["cold"].to_numpy()
    out = []
    for name, s in scores.items():
        g, c = gauc(sessions, y, s), cold_gauc(sessions, y, s, cold)
        print(f"{root.name}: {name}: GAUC {g['gauc']:.3f} ({g['sessions']} sessions), cold GAUC "
              f"{c['cold_gauc']:.3f}, among cold {c['cold_among_cold_gauc']:.3f}")  # fmt: skip
        out.append([root.name, name, f"{g['gauc']:.3f}", f"{c['cold_gauc']:.3f}",
                    f"{c['cold_among_cold_gauc']:.3f}", g["sessions"]])  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("roots", nargs="+", type=Path, help="imported catalogue directories")
    ap.add_argument("--test-days", type=int, default=2)
    ap.add_argument("--no-record", action="store_true", help="print only")
    args = ap.parse_args()
    rows = [row for root in args.roots for row in rows_for(root.resolve(), args.test_days)]
    if not args.no_record:
        record(str(RESULTS), "GAUC of single signals on the test days' sessions (no model)",
               ["import", "signal", "GAUC", "cold GAUC", "cold among cold GAUC", "sessions"], rows,
               "python benchmarks/gauc_signals.py " + " ".join(sys.argv[1:]))  # fmt: skip


if __name__ == "__main__":
    main()
