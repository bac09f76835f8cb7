"""Is it the image path or the click signal? Issue 16's photo-colour probe (``photo_colour.py``) stays at chance
on a synthetic shop whose titles never name the colour. This benchmark separates the two causes on that shop:

1. the click signal: the share of training pairs whose query names a colour, and the share of those whose
   clicked product has that colour (the only pairs that can teach the photo's colour);
2. the image path's capacity: the towers trained in-process (no Ray Train) on 80% of the shop's products
   with synthetic queries, "<colour> <category>" for a share ``s`` of the pairs and "<category>" for the
   rest, then colour accuracy on the other 20%, products the model never saw: for each, the colour c whose
   query "<c> <its category>" it scores highest, against its true colour (13 colours). Held-out products matter: on products it trained on, even the
   text-only model learns their colours, by heart, from their otherwise unique titles. With s = 1 the
   photo is the only way to the loss's minimum; with s near the click share it shows what that much signal
   teaches in the same number of steps.

    python benchmarks/colour_signal.py [--products 400] [--steps 800] [--shares 1.0 0.12] \
        [--rows "cebert finetune.fusion=additive" cebert]

Prints the figures and appends them, with the machine, to benchmarks/results/colour_signal.md.
``--clicks-of ROOT`` only counts (1) on a validated catalogue with a ``colour`` column, such as a
fashion-products import made with ``--hide-in-title colour``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import record  # noqa: E402
from photo_colour import FEATURES, colour_hidden_shop  # noqa: E402

from ace_ray.config import ClickModelConfig, RayConfig  # noqa: E402
from ace_ray.data import feature_store as fs  # noqa: E402
from ace_ray.data import lexicon, text  # noqa: E402
from ace_ray.data.click_stream import read_train_clicks  # noqa: E402
from ace_ray.data.schema import GROUND_TRUTH_FILE, read_products  # noqa: E402
from ace_ray.data.synth.taxonomy import COLOURS  # noqa: E402
from ace_ray.eval.attribute_probe import attribute_accuracy  # noqa: E402
from ace_ray.eval.embed import product_inputs  # noqa: E402
from ace_ray.model.losses import bidirectional_softmax_loss  # noqa: E402
from ace_ray.model.presets import load_with_preset  # noqa: E402
from ace_ray.model.towers import build_towers, encode_query_texts  # noqa: E402
from ace_ray.runtime import ensure_ray  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "colour_signal.md"
CLICK_PAIRS = {"clicks": "the click log's pairs", "colour-clicks": "the click log's pairs naming a colour",
               "colour-click-products": "the products of those pairs, asked '<colour> <category>'"}  # fmt: skip
SYNTH_COLOURS = {form: c for c in COLOURS for form in lexicon.surface_forms(c)}  # how a query writes a colour


def click_signal(root: Path, colour_of: pd.Series, forms: dict[str, str]) -> tuple[int, int, int]:
    """(training pairs, pairs whose query names a colour, of those: clicked product of that colour).
    ``colour_of``: product_id -> colour; ``forms``: each way a query writes a colour -> that colour."""
    said = _colour_words(forms)
    pairs = read_train_clicks(root, test_days=1).to_pandas()
    named = matched = 0
    for query, pid in zip(pairs["query"], pairs["product_id"], strict=True):
        colours = {forms[f] for f in said.findall(str(query).lower())}
        named += bool(colours)
        matched += colour_of.loc[pid] in colours
    return len(pairs), named, matched


def _colour_words(forms: dict[str, str]) -> re.Pattern:
    """A pattern finding the colour phrases of ``forms`` in a lower-case query, longest first."""
    return re.compile(r"\b(" + "|".join(map(re.escape, sorted(forms, key=len, reverse=True))) + r")\b")


def _print_signal(where: str, pairs: int, named: int, matched: int) -> None:
    print(f"[colour_signal] {where}: {pairs:,} training pairs; {named:,} name a colour ({named / pairs:.1%}); "
          f"{matched:,} of those clicked a product of that colour ({matched / pairs:.1%} of all, "
          f"{matched / max(1, named):.0%} of those naming one)", flush=True)  # fmt: skip


def _ask(colour: str, category: str) -> str:
    """The probe's query for a colour and a category: "<colour> <category>" in their first surface forms."""
    return f"{lexicon.surface_forms(colour)[0]} {lexicon.surface_forms(category)[0]}"


def _click_pairs(root: Path, products: pd.DataFrame, held: np.ndarray, colour_only: bool) -> pd.DataFrame:
    """The click log's training pairs of the products not held out, with each product's row ``i`` in
    ``products``; with ``colour_only``, only those whose query names a colour."""
    clicks = read_train_clicks(root, test_days=1).to_pandas()
    index = pd.Series(np.arange(len(products)), index=products["product_id"])
    clicks = clicks.assign(i=index.loc[clicks["product_id"]].to_numpy())
    clicks = clicks[~held[clicks["i"].to_numpy()]]
    if colour_only:
        said = _colour_words(SYNTH_COLOURS)
        clicks = clicks[[bool(said.search(str(q).lower())) for q in clicks["query"]]]
    return clicks


def _ids(texts: list[str], tc: dict) -> tuple[torch.Tensor, torch.Tensor]:
    enc = text.encode(texts, tc["max_query"], tc["tokenizer"])
    return tuple(torch.from_numpy(enc[k].astype(np.int64)) for k in ("input_ids", "attention_mask"))


def train_and_probe(
    root: Path, row: str, share: float | str, steps: int, seed: int = 0
) -> tuple[float, float]:
    """Colour accuracy on held-out products of towers trained ``steps`` steps of 32 pairs (the colour whose
    query "<colour> <category>" scores highest is the product's), and the share of the commonest colour among
    the training products (what always guessing it scores). The pairs: synthetic queries naming the colour
    in a ``share`` of them, or the click log's own training pairs of those products (``share="clicks"``), or
    only those of them whose query names a colour (``"colour-clicks"``), or those pairs' products asked
    "<their colour> <their category>" (``"colour-click-products"``)."""
    name, *extra = row.split()
    w = load_with_preset(None, [f"data.root={root}", "data.test_days=1", "model.init=random", "model.size=tiny",
                                "model.layers=2", *FEATURES, *extra], name)  # fmt: skip
    store, tc = fs.for_workload(w), dataclasses.asdict(w.data.text)
    products = read_products(root)
    truth = pd.read_parquet(root / GROUND_TRUTH_FILE).set_index("product_id").loc[products["product_id"]]
    rows = store.read(["patch_features", "pixels"], ids=products["product_id"].tolist())
    rows = rows.set_index("product_id").loc[products["product_id"]].reset_index()
    inputs = product_inputs(
        rows.assign(title=products["title"].to_numpy(), hot_queries=None), store.manifest, tc
    )
    named_ids, named_mask = _ids(
        [_ask(c, k) for c, k in zip(truth["colour"], products["category"], strict=True)], tc
    )
    plain_ids, plain_mask = _ids([lexicon.surface_forms(k)[0] for k in products["category"]], tc)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    towers = build_towers(w, store.manifest.feature_dim, store.manifest.pixel_dim)
    opt = torch.optim.AdamW(towers.parameters(), lr=0.002)
    held = rng.random(len(products)) < 0.2
    train = np.flatnonzero(~held)
    if isinstance(share, str):
        clicks = _click_pairs(root, products, held, colour_only=share != "clicks")
        if share == "colour-click-products":  # the same products as often, in the probe's own words
            clicks = clicks.assign(query=[_ask(c, k) for c, k in zip(truth["colour"].to_numpy()[clicks["i"]],
                                                                     products["category"].to_numpy()[clicks["i"]],
                                                                     strict=True)])  # fmt: skip
        click_ids, click_mask = _ids(clicks["query"].tolist(), tc)
    for _ in range(steps):
        if isinstance(share, str):
            c = torch.from_numpy(rng.choice(len(clicks), 32, replace=False))
            b = torch.from_numpy(clicks["i"].to_numpy()[c.numpy()])
            batch = {k: v[b] for k, v in inputs.items()} | {
                "query_ids": click_ids[c],
                "query_mask": click_mask[c],
            }
        else:
            b = torch.from_numpy(rng.choice(train, 32, replace=False))
            named = torch.from_numpy(rng.random(32) < share)[:, None]
            batch = {k: v[b] for k, v in inputs.items()}
            batch["query_ids"] = torch.where(named, named_ids[b], plain_ids[b])
            batch["query_mask"] = torch.where(named, named_mask[b], plain_mask[b])
        q, a = towers(batch)
        same = (batch["query_ids"][:, None] == batch["query_ids"][None]).all(-1) | (b[:, None] == b[None])
        loss = bidirectional_softmax_loss(q, a, w.finetune.gamma, same.fill_diagonal_(False))
        opt.zero_grad()
        loss.backward()
        opt.step()
    towers.eval()
    # Each held-out product against the queries "<c> <its category>" of every colour c: which scores highest.
    with torch.inference_mode():
        emb = towers.encode_products({k: v[torch.from_numpy(held)] for k, v in inputs.items()}).numpy()
    word = {c: lexicon.surface_forms(c)[0] for c in COLOURS}
    accuracy = attribute_accuracy(
        lambda queries: np.einsum("nd,nd->n", encode_query_texts(towers, queries, tc), emb),
        [lexicon.surface_forms(k)[0] for k in products["category"].to_numpy()[held]],
        [word[c] for c in truth["colour"].to_numpy()[held]], [word[c] for c in sorted(COLOURS)],
    )  # fmt: skip
    majority = float(pd.Series(truth["colour"].to_numpy()[~held]).value_counts(normalize=True).iloc[0])
    return accuracy, majority


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=400)
    ap.add_argument("--sessions", type=int, default=300)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument(
        "--shares",
        nargs="+",
        default=["1.0", "0.12", "clicks"],
        help="shares of synthetic queries naming the colour; 'clicks': the click log's pairs; 'colour-clicks': "
        "those of them whose query names a colour; 'colour-click-products': the products of those, as often, "
        "each asked '<its colour> <its category>' (their coverage without their form or noise)",
    )
    ap.add_argument("--rows", nargs="+", default=["cebert finetune.fusion=additive", "twinbert"])
    ap.add_argument("--no-record", action="store_true", help="print only")
    ap.add_argument("--mismatch", type=float, default=ClickModelConfig().attribute_mismatch,
                    help="the simulated shoppers' data.clicks.attribute_mismatch (relevance kept per asked "
                    "attribute a product lacks)")  # fmt: skip
    ap.add_argument("--clicks-of", metavar="ROOT", help="only count the colour signal in the click log of a validated "
                    "catalogue with a `colour` column (e.g. a fashion-products import)")  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(2)
    ensure_ray(RayConfig(num_cpus=4))
    if args.clicks_of:
        root = Path(args.clicks_of)
        colour_of = read_products(root).set_index("product_id")["colour"].str.lower()
        counts = click_signal(root, colour_of, {c: c for c in colour_of.dropna().unique()})
        _print_signal(str(root), *counts)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "shop"
        clicks = ClickModelConfig(attribute_mismatch=args.mismatch)
        colour_hidden_shop(root, args.products, args.sessions, clicks)
        truth = pd.read_parquet(root / GROUND_TRUTH_FILE).set_index("product_id")
        pairs, named, matched = click_signal(root, truth["colour"], SYNTH_COLOURS)
        _print_signal("synthetic shop", pairs, named, matched)
        rows = []
        for row in args.rows:
            for arg in args.shares:
                share = arg if arg in CLICK_PAIRS else float(arg)
                what = CLICK_PAIRS.get(arg) or f"colour named in {float(arg):.0%} of queries"
                p, chance = train_and_probe(root, row, share, args.steps)
                print(f"[colour_signal] {row}, {what}: colour accuracy "
                      f"{p:.3f} after {args.steps} steps (commonest colour: {chance:.3f})", flush=True)  # fmt: skip
                rows.append([row, what, f"{p:.3f}", f"{chance:.3f}"])
    if not args.no_record:
        title = (f"colour only in the photo, held-out products (attribute_mismatch {args.mismatch:g}, {args.products} products, tiny random BERT, {args.steps} steps of 32); "
                 f"click log: {named / pairs:.1%} of {pairs:,} pairs name a colour, {matched / pairs:.1%} "
                 "name the clicked product's")  # fmt: skip
        record(str(RESULTS), title, ["row", "training pairs", "held-out colour accuracy", "commonest colour's share"], rows,
               "python benchmarks/colour_signal.py " + " ".join(sys.argv[1:]))  # fmt: skip


if __name__ == "__main__":
    main()
