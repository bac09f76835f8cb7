"""Mixed negative sampling, whole batches per worker, the pretraining set and pairs, and no test-day leaks."""

import threading

import numpy as np
import pandas as pd
import pytest

from ace_ray.config import BatchConfig, ClickModelConfig, FeaturesConfig, SynthConfig, TextConfig
from ace_ray.data import feature_store as fs
from ace_ray.data.batching import (
    build_finetune_batches,
    finetune_dataset,
    finetune_pairs,
    normalise_pixels,
    plan_batches,
)
from ace_ray.data.features import build_features
from ace_ray.data.hot_queries import build_hot_queries
from ace_ray.data.pretrain_set import build_pretrain_set, pair_in_batch, pretrain_dataset, read_holdout
from ace_ray.data.schema import IMPRESSIONS_FILE, read_impressions
from ace_ray.data.synth.generate import synthesize
from ace_ray.data.validate import validate

TEST_ONLY = "zzz leaked test day query"


def _distinct_per_batch(batch_ids, cats):
    return pd.DataFrame({"b": batch_ids, "c": cats}).groupby("b")["c"].nunique().to_numpy()


def test_one_partition_gives_single_category_batches():
    cats = np.random.default_rng(0).choice([f"c{i}" for i in range(20)], 20000)
    distinct = _distinct_per_batch(plan_batches(cats, 1, 64, seed=0), cats)
    assert np.mean(distinct == 1) > 0.9  # only the batches that straddle two categories mix


def test_many_partitions_match_random_batching():
    rng = np.random.default_rng(1)
    cats = rng.choice([f"c{i}" for i in range(20)], 20000, p=np.r_[0.3, np.full(19, 0.7 / 19)])
    mixed = _distinct_per_batch(plan_batches(cats, 20000, 64, seed=0), cats).mean()
    random = _distinct_per_batch(rng.permutation(20000) // 64, cats).mean()
    assert abs(mixed - random) / random < 0.05
    # And in between: more partitions, more categories per batch.
    means = [_distinct_per_batch(plan_batches(cats, p, 64, 0), cats).mean() for p in (1, 30, 300)]
    assert means[0] < means[1] < means[2] <= random * 1.05


def test_plan_covers_every_pair_once_in_full_batches():
    cats = np.random.default_rng(2).choice(list("abcde"), 1000)
    b = plan_batches(cats, 7, 64, seed=3)
    sizes = np.bincount(b)
    assert sizes.sum() == 1000 and (sizes[:-1] == 64).all() and sizes[-1] == 1000 - 64 * 15
    with pytest.raises(ValueError, match="partitions"):
        plan_batches(cats, 0, 64, 0)


def test_pretrain_pairs_one_positive_three_negatives():
    titles, images, label = pair_in_batch(50, 3, np.random.default_rng(0))
    assert len(label) == 200 and label.mean() == 0.25
    assert (titles[label == 1] == images[label == 1]).all()
    assert (titles[label == 0] != images[label == 0]).all()  # a negative never shows the title's own image
    assert (np.bincount(titles) == 4).all() and (np.bincount(images[label == 1]) == 1).all()
    with pytest.raises(ValueError, match="two products"):
        pair_in_batch(1, 3, np.random.default_rng(0))


def test_pixel_normalisation_matches_a_naive_loop():
    px = np.random.default_rng(0).integers(0, 256, (2, 3, 4 * 4 * 3), dtype=np.uint8)
    out = normalise_pixels(px)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    for i in range(px.shape[-1]):
        c = i % 3
        np.testing.assert_allclose(out[..., i], (px[..., i] / 255.0 - mean[c]) / std[c], rtol=1e-5)


@pytest.fixture(scope="module")
def featurised(tmp_path_factory, ray_session):
    """A small shop with features, where the test days have a query no train day has."""
    root = tmp_path_factory.mktemp("batching") / "shop"
    synthesize(SynthConfig(products=120, days=4, sessions=120, shard_size=60), ClickModelConfig(), root)
    imp = read_impressions(root)
    last = imp["day"] == imp["day"].max()
    imp.loc[last, "query"] = TEST_ONLY
    imp.to_parquet(root / IMPRESSIONS_FILE)
    validate(root)
    store = fs.FeatureStore(
        build_features(root, FeaturesConfig(cnn_input=64, grid=2, batch_size=16))["store"]
    )
    return root, store


@pytest.mark.ray
def test_test_day_clicks_never_reach_training(featurised):
    root, _ = featurised
    hot = build_hot_queries(root, test_days=1).to_pandas()
    assert len(hot) > 0 and all(TEST_ONLY not in q for q in hot["hot_queries"])
    assert all(len(q) <= 10 for q in hot["hot_queries"])
    pairs = finetune_pairs(root, test_days=1)
    assert TEST_ONLY not in set(pairs["query"]) and len(pairs) > 100
    # With the last day counted as a train day the query does show up: the split is what keeps it out.
    assert TEST_ONLY in set(finetune_pairs(root, test_days=0)["query"])


@pytest.mark.ray
def test_hot_queries_are_the_most_clicked(featurised):
    root, _ = featurised
    hot = build_hot_queries(root, test_days=1).to_pandas().set_index("product_id")
    imp = read_impressions(root)
    clicks = imp[imp["clicked"] & (imp["day"] < imp["day"].max())]
    pid = clicks["product_id"].value_counts().index[0]
    counts = clicks[clicks["product_id"] == pid]["query"].value_counts()
    assert hot.loc[pid, "hot_clicks"][0] == counts.iloc[0]
    assert list(hot.loc[pid, "hot_clicks"]) == sorted(hot.loc[pid, "hot_clicks"], reverse=True)


@pytest.mark.ray
def test_every_pair_once_per_epoch_across_workers(featurised, tmp_path):
    root, store = featurised
    stats = build_finetune_batches(root, store, 1, BatchConfig(batch_size=16, partitions=2), TextConfig(),
                                   tmp_path / "batches")  # fmt: skip
    ds = finetune_dataset(tmp_path / "batches")

    def consume(it, out):
        for b in it.iter_batches(batch_size=1, batch_format="numpy"):
            out.append((int(b["batch_id"][0]), b["pair_id"][0].tolist()))
            assert b["patches"][0].shape[1:] == (4, 1280) and b["pixels"][0].shape[1:] == (49, 3072)
            assert b["query_ids"][0].shape == (len(b["pair_id"][0]), 16)

    orders = []
    for _epoch in range(2):
        seen = [[], []]
        threads = [threading.Thread(target=consume, args=(it, out)) for it, out in zip(ds.streaming_split(2), seen, strict=True)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        pair_ids = [p for worker in seen for _, ids in worker for p in ids]
        assert sorted(pair_ids) == list(range(stats["pairs"]))  # each pair exactly once, none lost
        assert all(worker for worker in seen)  # both workers got whole batches
        assert len({b for w in seen for b, _ in w}) == stats["batches"]
        orders.append([b for w in seen for b, _ in w])
    assert orders[0] != orders[1]  # a new batch order every epoch


@pytest.mark.ray
def test_pretrain_set_holds_every_featurised_product_once_with_a_stable_holdout(featurised):
    root, store = featurised
    path = build_pretrain_set(root, store, TextConfig(), holdout=0.2, seed=0)
    train = pretrain_dataset(path).to_pandas()
    held = read_holdout(path, limit=10_000)
    ok = set(store.read(columns=[])["product_id"])
    assert set(train["product_id"]) | set(held["product_id"]) == ok
    assert not set(train["product_id"]) & set(held["product_id"]) and len(train) + len(held) == len(ok)
    assert 0.1 < len(held) / len(ok) < 0.3
    assert len(train.loc[0, "title_ids"]) == 32
    assert build_pretrain_set(root, store, TextConfig(), holdout=0.2, seed=0) == path  # reused, not rebuilt
