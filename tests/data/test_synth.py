"""The synthetic shop: deterministic, and with the statistics of a real one."""

import hashlib

import numpy as np
import pandas as pd
import pytest

from ace_ray.config import ClickModelConfig, SynthConfig
from ace_ray.data import lexicon
from ace_ray.data.schema import GROUND_TRUTH_FILE, read_impressions, read_products
from ace_ray.data.synth.generate import synthesize
from ace_ray.data.synth.taxonomy import COLOURS

pytestmark = pytest.mark.ray


def _digest(root):
    products, imp = read_products(root), read_impressions(root)
    h = hashlib.sha256()
    for rel in products["image_path"]:
        h.update((root / rel).read_bytes())
    return products, imp, pd.read_parquet(root / GROUND_TRUTH_FILE), h.hexdigest()


def test_same_seed_same_shop_whatever_the_worker_count(tmp_path, ray_session):
    cfg = SynthConfig(products=90, days=2, sessions=40, shard_size=25, seed=3)
    synthesize(SynthConfig(**(vars(cfg) | {"workers": 1})), ClickModelConfig(), tmp_path / "a")
    synthesize(SynthConfig(**(vars(cfg) | {"workers": 3})), ClickModelConfig(), tmp_path / "b")
    synthesize(SynthConfig(**(vars(cfg) | {"seed": 4})), ClickModelConfig(), tmp_path / "c")
    a, b, c = (_digest(tmp_path / x) for x in "abc")
    for x, y in zip(a[:3], b[:3], strict=True):
        pd.testing.assert_frame_equal(x, y)
    assert a[3] == b[3]  # every image byte-identical
    assert not a[0]["title"].equals(c[0]["title"])
    assert a[3] != c[3]


def test_catalogue_shape_and_ground_truth_kept_apart(shop):
    products = read_products(shop)
    truth = pd.read_parquet(shop / GROUND_TRUTH_FILE)
    assert products["product_id"].is_unique and len(products) == 1500
    assert products["category"].nunique() >= 20
    assert products["category_path"].str.split("/").str[0].nunique() >= 5
    # Training reads products.parquet: the true attributes must not be in it.
    assert not {"colour", "pattern", "material", "box_x"} & set(products.columns)
    assert set(truth["product_id"]) == set(products["product_id"])


def test_titles_leave_out_colour_sometimes(shop):
    m = read_products(shop).merge(pd.read_parquet(shop / GROUND_TRUTH_FILE)[["product_id", "colour"]])
    missing = np.mean([not lexicon.mentions(t, c) for t, c in zip(m["title"], m["colour"], strict=True)])
    assert 0.2 <= missing <= 0.4  # so for about 30% of products only the image shows the colour


def test_images_show_the_product_off_centre_at_30_to_70_percent(shop):
    import cv2

    truth = pd.read_parquet(shop / GROUND_TRUTH_FILE).head(200)
    products = read_products(shop).set_index("product_id")
    side = np.maximum(truth["box_w"], truth["box_h"]) / 224
    assert side.between(0.25, 0.75).all()
    centre_x = (truth["box_x"] + truth["box_w"] / 2) / 224
    assert centre_x.std() > 0.08  # placed around the frame, not always centred
    shares = []
    for _, row in truth.head(20).iterrows():
        img = cv2.imread(str(shop / products.loc[row["product_id"], "image_path"]))
        assert img.shape == (224, 224, 3)
        x, y, w, h = row[["box_x", "box_y", "box_w", "box_h"]].astype(int)
        inside = img[y : y + h, x : x + w].reshape(-1, 3).astype(float)
        # A good part of the box has the product's chromaticity (patterns, shading and holes aside).
        target = np.array(COLOURS[row["colour"]], float)
        chroma = inside / (inside.sum(axis=1, keepdims=True) + 1)
        shares.append((np.abs(chroma - target / target.sum()).sum(axis=1) < 0.1).mean())
    assert min(shares) > 0.05 and np.mean(shares) > 0.4


def test_click_through_falls_with_position(shop):
    ctr = read_impressions(shop).groupby("position")["clicked"].mean().to_numpy()
    assert ctr[0] > 2.5 * ctr[-1]
    assert (np.diff(ctr[:5]) < 0).all()


def test_query_popularity_is_skewed(shop):
    counts = read_impressions(shop).drop_duplicates("session_id")["query"].value_counts()
    top_1pct = counts.iloc[: max(1, len(counts) // 100)].sum() / counts.sum()
    assert top_1pct > 0.15
    assert counts.iloc[0] >= 20 * counts.median()


def test_clicks_follow_true_attributes_not_titles(shop):
    """For queries naming a colour, products of that colour are clicked far more often, whether or not
    their title says the colour."""
    imp = read_impressions(shop).merge(pd.read_parquet(shop / GROUND_TRUTH_FILE)[["product_id", "colour"]])
    imp = imp.merge(read_products(shop)[["product_id", "title"]])
    wanted = imp["query"].map(lambda q: next((c for c in COLOURS if lexicon.mentions(q, c)), None))
    imp = imp[wanted.notna()].assign(wanted=wanted[wanted.notna()])
    match = imp["colour"] == imp["wanted"]
    named = np.array([lexicon.mentions(t, c) for t, c in zip(imp["title"], imp["colour"], strict=True)])
    ctr = lambda m: imp.loc[m, "clicked"].mean()  # noqa: E731
    assert ctr(match) > 4 * ctr(~match)
    assert ctr(match & ~named) > 2 * ctr(~match)


def test_an_interrupted_resynth_keeps_the_previous_shop_whole(tmp_path, ray_session, monkeypatch):
    """Stopped after drawing new photos: the folder still holds the old shop, photos matching its table."""
    from ace_ray.cli import main
    from ace_ray.data.synth import generate

    out = tmp_path / "shop"
    args = ["synth", "--out", str(out), "--products", "6", "--days", "1", "--sessions", "3",
            f"workspace={tmp_path}", "data.synth.shard_size=6", "data.synth.image_size=32"]  # fmt: skip
    assert main(args) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def stop(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate.clicklog, "simulate_impressions", stop)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--seed", "9"])
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_a_colour_hidden_from_titles_is_left_only_in_the_photo(tmp_path, ray_session):
    cfg = SynthConfig(products=60, days=2, sessions=30, shard_size=30, seed=5)
    synthesize(cfg, ClickModelConfig(), tmp_path / "plain")
    synthesize(
        SynthConfig(**(vars(cfg) | {"hide_in_title": ["colour"]})), ClickModelConfig(), tmp_path / "hidden"
    )
    plain, _, truth, photos = _digest(tmp_path / "plain")
    hidden, imp, truth_h, photos_h = _digest(tmp_path / "hidden")
    # The same products and photos; only the titles lost their colour words.
    assert photos == photos_h
    pd.testing.assert_frame_equal(truth, truth_h)
    named = [lexicon.mentions(t, c) for t, c in zip(plain["title"], truth["colour"], strict=True)]
    assert sum(named) > len(named) // 2
    assert not any(lexicon.mentions(t, c) for t, c in zip(hidden["title"], truth["colour"], strict=True))
    # Shoppers still ask for colours.
    assert any(lexicon.mentions(q, c) for q in imp["query"].unique() for c in COLOURS)
    with pytest.raises(Exception, match="data.synth.hide_in_title: price"):
        synthesize(
            SynthConfig(**(vars(cfg) | {"hide_in_title": ["price"]})), ClickModelConfig(), tmp_path / "x"
        )
