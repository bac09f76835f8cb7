"""Mixed negative sampling, whole batches per worker, the pretraining set and pairs, and no test-day leaks."""

import datetime as dt
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ace_ray.config import BatchConfig, ClickModelConfig, FeaturesConfig, SynthConfig, TextConfig
from ace_ray.data import feature_store as fs
from ace_ray.data import text
from ace_ray.data.batch_plan import number_partition, pair_draws, partition_offsets, plan_batches, with_draws
from ace_ray.data.batching import build_finetune_batches
from ace_ray.data.click_stream import _read_group, read_train_clicks
from ace_ray.data.clicks import check_split, clean_clicks, first_test_day, train_split
from ace_ray.data.feature_table import for_store
from ace_ray.data.features import build_features
from ace_ray.data.hot_queries import build_hot_queries, hot_queries_path, read_hot_queries
from ace_ray.data.plan import EpochPlan, _read_columns, file_index, stream
from ace_ray.data.pretrain_set import build_pretrain_set, pair_in_batch, read_holdout
from ace_ray.data.schema import IMPRESSIONS_FILE, read_impressions
from ace_ray.data.synth.generate import synthesize
from ace_ray.data.validate import load_clean_products, quarantined_rows, read_quarantine, validate

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


def test_numbering_partition_by_partition_equals_the_whole_plan_and_draws_depend_on_the_pair_alone():
    """What Ray Data does in pieces (draws per block, counts -> offsets, one task a partition) is the plan
    of one sort over all pairs, and a pair's draws do not depend on which other pairs a task holds."""
    rng = np.random.default_rng(4)
    rows = np.sort(rng.choice(10**7, 3000, replace=False))
    cats = rng.choice([f"c{i}" for i in range(9)], 3000)
    for partitions, size in ((1, 64), (5, 32), (200, 16)):
        whole = plan_batches(cats, partitions, size, seed=7, rows=rows)
        drawn = with_draws(pd.DataFrame({"row": rows, "category": cats}), partitions, seed=7)
        offsets = partition_offsets(drawn["part"].value_counts().to_dict())
        pieces = pd.concat(number_partition(g, offsets[p], size) for p, g in drawn.groupby("part"))
        np.testing.assert_array_equal(pieces.sort_values("row")["batch_id"].to_numpy(), whole)
    part, tie = pair_draws(rows, 5, seed=7)
    sub_part, sub_tie = pair_draws(rows[::7], 5, seed=7)
    np.testing.assert_array_equal(sub_part, part[::7])
    np.testing.assert_array_equal(sub_tie, tie[::7])
    assert not np.array_equal(pair_draws(rows, 5, seed=8)[0], part)  # another seed, another plan
    assert np.bincount(part, minlength=5).min() > 500  # roughly even partitions


def test_pretrain_pairs_one_positive_three_negatives():
    titles, images, label = pair_in_batch(50, 3, np.random.default_rng(0))
    assert len(label) == 200 and label.mean() == 0.25
    assert (titles[label == 1] == images[label == 1]).all()
    assert (titles[label == 0] != images[label == 0]).all()  # a negative never shows the title's own image
    assert (np.bincount(titles) == 4).all() and (np.bincount(images[label == 1]) == 1).all()
    with pytest.raises(ValueError, match="two products"):
        pair_in_batch(1, 3, np.random.default_rng(0))


@pytest.fixture(scope="module")
def featurised(tmp_path_factory, ray_session):
    """A small shop with features, where the test days have a query no train day has, and one train-day
    click is logged twice (validation quarantines the second copy)."""
    root = tmp_path_factory.mktemp("batching") / "shop"
    synthesize(SynthConfig(products=120, days=4, sessions=120, shard_size=60), ClickModelConfig(), root)
    imp = read_impressions(root)
    last = imp["day"] == imp["day"].max()
    imp.loc[last, "query"] = TEST_ONLY
    dup = imp[imp["clicked"] & ~last].iloc[[0]]
    # Small row groups: the click stream reads one a task, so several are read and their row numbers add up.
    pd.concat([imp, dup], ignore_index=True).to_parquet(root / IMPRESSIONS_FILE, row_group_size=1000)
    validate(root)
    store = fs.FeatureStore(
        build_features(root, FeaturesConfig(cnn_input=64, grid=2, batch_size=16))["store"]
    )
    return root, store, dup.iloc[0]


@pytest.mark.ray
def test_test_day_clicks_never_reach_training(featurised):
    root, _, _ = featurised
    hot = build_hot_queries(root, test_days=1)
    assert len(hot) > 0 and all(TEST_ONLY not in q for q in hot["hot_queries"])
    assert all(len(q) <= 10 for q in hot["hot_queries"])
    pairs = read_train_clicks(root, test_days=1).to_pandas()
    assert TEST_ONLY not in set(pairs["query"]) and len(pairs) > 100
    # With the last day counted as a train day the query does show up: the split is what keeps it out.
    assert TEST_ONLY in set(read_train_clicks(root, test_days=0).to_pandas()["query"])


def _reference_pairs(root, test_days: int) -> pd.DataFrame:
    """The train-day clicks the naive way: the whole log in memory, rows numbered, quarantine dropped."""
    imp = read_impressions(root).assign(row=lambda d: np.arange(len(d)))
    imp = imp[~imp["row"].isin(quarantined_rows(read_quarantine(root), IMPRESSIONS_FILE))]
    day = pd.to_datetime(imp["day"]).dt.date
    clicks = imp[imp["clicked"] & (day < first_test_day(root, test_days))]
    return clicks.merge(load_clean_products(root)[["product_id", "category"]], on="product_id")


@pytest.mark.ray
def test_the_click_stream_reads_the_same_clicks_as_the_whole_log(featurised):
    root, _, _ = featurised
    assert pq.ParquetFile(root / IMPRESSIONS_FILE).metadata.num_row_groups > 2
    stream_rows = read_train_clicks(root, 1, ("session_id", "query", "product_id")).to_pandas()
    ref = _reference_pairs(root, 1)
    known = stream_rows[stream_rows["product_id"].isin(set(ref["product_id"]))].sort_values("row")
    np.testing.assert_array_equal(known["row"].to_numpy(), np.sort(ref["row"].to_numpy()))
    cleaned = clean_clicks(root, 1)  # evaluation's view of the same days
    assert sorted(zip(cleaned["session_id"], cleaned["query"], cleaned["product_id"], strict=True)) == sorted(
        zip(known["session_id"], known["query"], known["product_id"], strict=True)
    )


@pytest.mark.ray
@pytest.mark.parametrize("partitions", [1, 3])
def test_ray_data_batches_are_the_reference_plans(featurised, tmp_path, partitions):
    """The batches written by the Ray Data path hold exactly the pairs the one-sort reference puts in each
    batch, for one partition (category batches) and several."""
    root, store, _ = featurised
    cfg = BatchConfig(batch_size=16, partitions=partitions, seed=5)
    # Several shuffle partitions, as on a large log: batches are numbered and assembled in several tasks.
    stats = build_finetune_batches(
        root, store, 1, cfg, TextConfig(), tmp_path / "b", shuffle_partitions=partitions
    )
    ref = _reference_pairs(root, 1)
    ref = ref[ref["product_id"].isin(set(for_store(store).ids["product_id"]))]
    ref = ref.assign(batch=plan_batches(ref["category"].to_numpy(), partitions, 16, 5, ref["row"].to_numpy()))
    want = {int(b): sorted(g["row"]) for b, g in ref.groupby("batch")}
    got = [
        _read_columns(str(f), ["batch_id", "pair_id", "product_id"])
        for f in (tmp_path / "b").glob("*.parquet")
    ]
    assert {int(b["batch_id"][0]): sorted(b["pair_id"][0]) for b in got} == want
    assert stats["pairs_with_features"] == len(ref) and stats["batches"] == len(want)
    by_row = ref.set_index("row")["product_id"]
    assert all(list(by_row.loc[list(b["pair_id"][0])]) == list(b["product_id"][0]) for b in got)
    # Each pair's product carries its hot queries, and the same less the pair's own query (which a
    # train-day click's query nearly always is among), and how many train-day clicks made the query hot.
    hot = read_hot_queries(root, 1).set_index("product_id")["hot_queries"].map(list)
    cfg_t, pairs, left_out = TextConfig(), ref.set_index("row"), 0
    clicks = ref.groupby(["product_id", "query"]).size()
    own_clicks, product_clicks = [], ref.groupby("product_id").size()
    for f in (tmp_path / "b").glob("*.parquet"):
        b = _read_columns(str(f), ["pair_id", "hot_ids", "hot_other_ids", "hot_other_mask", "hot_own_clicks",
                                   "product_clicks"])  # fmt: skip
        p = pairs.loc[list(b["pair_id"][0])]
        # How often each pair's product is a positive in the whole plan (the sampling correction's Q).
        assert list(b["product_clicks"][0]) == list(product_clicks.loc[p["product_id"]])
        want_own = [clicks[(pid, q)] if q in hot.get(pid, []) else 0
                    for pid, q in zip(p["product_id"], p["query"], strict=True)]  # fmt: skip
        assert list(b["hot_own_clicks"][0]) == want_own
        own_clicks += want_own
        full = [hot.get(pid, []) for pid in p["product_id"]]
        others = [[x for x in h if x != q] for h, q in zip(full, p["query"], strict=True)]
        left_out += sum(len(h) - len(o) for h, o in zip(full, others, strict=True))
        for col, lists in (("hot_ids", full), ("hot_other_ids", others)):
            want_ids = text.encode([text.join_hot_queries(x) for x in lists], cfg_t.max_hot, cfg_t.tokenizer)
            assert np.array_equal(np.stack(b[col][0]), want_ids["input_ids"])
    assert left_out >= 0.9 * len(ref)  # nearly every pair's query is among its product's hot queries
    assert 0 < own_clicks.count(1) < len(own_clicks) and max(own_clicks) > 1  # one-click and repeated ones
    assert product_clicks.min() == 1 and product_clicks.max() > 1


@pytest.mark.ray
def test_hot_queries_are_the_most_clicked(featurised):
    root, _, _ = featurised
    hot = build_hot_queries(root, test_days=1).set_index("product_id")
    imp = read_impressions(root)
    clicks = imp[imp["clicked"] & (imp["day"] < imp["day"].max())]
    pid = clicks["product_id"].value_counts().index[0]
    counts = clicks[clicks["product_id"] == pid]["query"].value_counts()
    assert hot.loc[pid, "hot_clicks"][0] == counts.iloc[0]
    assert list(hot.loc[pid, "hot_clicks"]) == sorted(hot.loc[pid, "hot_clicks"], reverse=True)


def test_a_row_group_of_test_days_only_is_an_empty_block_with_the_logs_column_types(tmp_path):
    """A large log has whole row groups on the test days (the fashion-products import: its second row group).
    Their empty blocks must keep the column types, or Ray Data's shuffle for the hot queries fails on them
    ("Schema at index 1 was different: query: null")."""
    days = [dt.date(2026, 1, 1)] * 3 + [dt.date(2026, 1, 2)] * 2
    imp = pd.DataFrame({"query": ["red dress", "blue bag", "bag", "shoes", "hat"], "product_id": list("abcde"),
                        "day": days, "clicked": [True, False, True, True, True]})  # fmt: skip
    path = tmp_path / IMPRESSIONS_FILE
    with pq.ParquetWriter(path, pa.Table.from_pandas(imp, preserve_index=False).schema) as out:
        for part in (imp.iloc[:3], imp.iloc[3:]):  # a row group each: the second holds the test day only
            out.write_table(pa.Table.from_pandas(part, preserve_index=False))
    blocks = [pa.table(_read_group(pd.DataFrame({"group": [g], "start": [s]}), str(path), ("query", "product_id"),
                                   dt.date(2026, 1, 2), np.array([], np.int64)))
              for g, s in ((0, 0), (1, 3))]  # fmt: skip
    assert blocks[0].column("row").to_pylist() == [0, 2] and blocks[1].num_rows == 0
    schemas = [b.schema.remove_metadata() for b in blocks]
    assert schemas[1] == schemas[0] and not pa.types.is_null(schemas[1].field("query").type)


@pytest.mark.ray
def test_hot_queries_are_kept_per_split_and_a_model_of_another_split_is_refused(featurised):
    root, _, _ = featurised
    one, two = hot_queries_path(root, 1), hot_queries_path(root, 2)
    assert one != two  # another split, another table: a features run with other test days leaks nowhere
    hot1 = read_hot_queries(root, 1)
    assert set(map(tuple, hot1["hot_queries"])) == set(map(tuple, build_hot_queries(root, 1)["hot_queries"]))
    assert len(read_hot_queries(root, 2)) < len(hot1)  # fewer train days, fewer clicked products
    check_split(train_split(root, 1), root, 1, "model")
    check_split(train_split(root, 2), root, 1, "model")  # it held out a validation day as well: no leak
    with pytest.raises(ValueError, match=r"trained on clicks before .* use data\.test_days=1"):
        check_split(train_split(root, 1), root, 2, "the model")  # it trained on the first of these test days


@pytest.mark.ray
def test_training_and_evaluation_clean_clicks_the_same_way(featurised):
    from ace_ray.data.validate import load_clean

    root, _, dup = featurised
    clicks = clean_clicks(root, 1)
    same = clicks[(clicks["session_id"] == dup["session_id"]) & (clicks["product_id"] == dup["product_id"])]
    assert len(same) == 1  # the first copy of a duplicated impression is kept, the second quarantined
    _, imp = load_clean(root)  # what evaluation reads
    day = pd.to_datetime(imp["day"])
    train = imp[imp["clicked"] & (day < day.max())]
    assert len(train) == len(clicks)


def _deal(plan: EpochPlan, epoch: int) -> list[list[int]]:
    return [[int(b["batch_id"][0]) for b in stream(plan, epoch, r, ["batch_id"])] for r in range(plan.world)]


@pytest.mark.ray
def test_every_pair_once_per_epoch_in_an_order_fixed_by_seed_and_epoch(featurised, tmp_path):
    root, store, _ = featurised
    stats = build_finetune_batches(root, store, 1, BatchConfig(batch_size=16, partitions=2), TextConfig(),
                                   tmp_path / "batches")  # fmt: skip
    plan = EpochPlan.for_directory(tmp_path / "batches", 2, 1, seed=0, sort_column="batch_id", window=1)
    assert [int(pd.read_parquet(tmp_path / "batches" / f, columns=["batch_id"]).iloc[0, 0]) for f in plan.files] \
        == list(range(stats["batches"]))  # fmt: skip
    first = next(stream(plan, 0, 0))
    assert first["query_ids"][0].shape == (len(first["pair_id"][0]), 16)
    # The batches hold feature rows; read with the table, they hold the store's features of their products,
    # as the batches that copied the features in did.
    table = for_store(store)
    ref = store.read(columns=["patch_features", "pixels"]).set_index("product_id")
    for batch in stream(plan, 0, 0, features=table, feature_columns=("patches", "pixels")):
        ids = list(batch["product_id"][0])
        assert batch["patches"].shape == (1, len(ids), 4, 1280) and batch["pixels"].shape == (
            1,
            len(ids),
            49,
            3072,
        )
        np.testing.assert_array_equal(
            batch["patches"][0], store.manifest.stack_patches(ref.loc[ids, "patch_features"])
        )
        np.testing.assert_array_equal(batch["pixels"][0], store.manifest.stack_pixels(ref.loc[ids, "pixels"]))
    every = EpochPlan.for_directory(tmp_path / "batches", 1, 1, seed=0, window=1)
    pair_ids = [int(p) for b in stream(every, 0, 0, ["pair_id"]) for p in b["pair_id"][0]]
    assert (
        len(pair_ids) == len(set(pair_ids)) == stats["pairs_with_features"]
    )  # every pair in exactly one batch
    orders = []
    for epoch in range(2):
        deal = _deal(plan, epoch)
        assert all(len(r) == plan.batches(epoch) == stats["batches"] // 2 for r in deal)  # whole batches each
        seen = [b for r in deal for b in r]
        assert (
            len(set(seen)) == len(seen) and len(seen) >= stats["batches"] - 1
        )  # once each, at most one left
        orders.append(deal)
    assert orders[0] != orders[1]  # a new order every epoch ...
    assert _deal(plan, 1) == orders[1]  # ... that is a function of (seed, epoch, rank) only
    assert _deal(EpochPlan.for_directory(tmp_path / "batches", 2, 1, seed=1, window=1), 1) != orders[1]
    # A resumed worker skips exactly what it had consumed.
    assert [int(b["batch_id"][0]) for b in stream(plan, 1, 1, ["batch_id"], skip=2)] == orders[1][1][2:]


def test_pretraining_plan_mixes_rows_reproducibly_and_deals_equal_shares(tmp_path):
    for i, n in enumerate([64, 64, 64, 40, 64, 17]):
        pd.DataFrame({"product_id": [f"p{i}-{j}" for j in range(n)]}).to_parquet(
            tmp_path / f"part-{i}.parquet"
        )
    plan = EpochPlan.for_directory(tmp_path, world=2, rows_per_batch=12, seed=3, grad_accum=2)
    for epoch in range(3):
        deal = [[tuple(b["product_id"]) for b in stream(plan, epoch, r)] for r in range(2)]
        assert len(deal[0]) == len(deal[1]) == plan.batches(epoch) and plan.batches(epoch) % 2 == 0
        flat = [p for r in deal for b in r for p in b]
        assert len(set(flat)) == len(flat)  # no product twice in an epoch
        assert deal == [[tuple(b["product_id"]) for b in stream(plan, epoch, r)] for r in range(2)]
    assert file_index(tmp_path) == [(f"part-{i}.parquet", n) for i, n in enumerate([64, 64, 64, 40, 64, 17])]


@pytest.mark.ray
def test_pretrain_set_holds_every_featurised_product_once_with_a_stable_holdout(featurised):
    root, store, _ = featurised
    path = build_pretrain_set(root, store, TextConfig(), holdout=0.2, seed=0)
    plan = EpochPlan.for_directory(path / "split=train", world=1, rows_per_batch=1, seed=0)
    train = pd.DataFrame({"product_id": [b["product_id"][0] for b in stream(plan, 0, 0)],
                          "title_ids": [b["title_ids"][0] for b in stream(plan, 0, 0)]})  # fmt: skip
    held = read_holdout(path, limit=10_000)
    ok = set(store.read(columns=[])["product_id"])
    assert set(train["product_id"]) | set(held["product_id"]) == ok
    assert not set(train["product_id"]) & set(held["product_id"]) and len(train) + len(held) == len(ok)
    assert 0.1 < len(held) / len(ok) < 0.3
    assert len(train.loc[0, "title_ids"]) == 32
    assert build_pretrain_set(root, store, TextConfig(), holdout=0.2, seed=0) == path  # reused, not rebuilt
    # A rebuild holds the same files with the same rows, so a run's data order does not depend on how the
    # join was scheduled the day the set was built.
    before = [(f, list(_read_columns(str(path / "split=train" / f), ["product_id"])["product_id"]))
              for f, _ in file_index(path / "split=train")]  # fmt: skip
    shutil.rmtree(path)
    assert build_pretrain_set(root, store, TextConfig(), holdout=0.2, seed=0) == path
    after = [(f, list(_read_columns(str(path / "split=train" / f), ["product_id"])["product_id"]))
             for f, _ in file_index(path / "split=train")]  # fmt: skip
    assert [ids for _, ids in after] == [ids for _, ids in before]
