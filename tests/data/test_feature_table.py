"""The feature table: every featurised product once, read by row, equal to the store it was built from."""

import shutil

import numpy as np
import pytest

from ace_ray.data import feature_store as fs
from ace_ray.data.feature_table import TABLE, FeatureTable, build, for_store

pytestmark = pytest.mark.ray


@pytest.fixture
def store(featurised_shop, tmp_path):
    """A private copy of the shared shop's store, without a table yet."""
    src = featurised_shop[2].path
    dst = tmp_path / src.name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(TABLE))
    return fs.FeatureStore(dst)


def test_gather_reads_the_stores_features_by_row(store):
    table = for_store(store)
    ids = table.ids
    ref = store.read(columns=["patch_features", "pixels"]).set_index("product_id")
    assert list(ids["product_id"]) == sorted(ref.index) and list(ids["row"]) == list(range(len(ref)))
    rows = np.random.default_rng(0).integers(0, len(ids), (3, 5))  # any shape, repeats allowed
    got = table.gather(rows, "patches")
    assert got.shape == (3, 5, store.manifest.patches, store.manifest.feature_dim)
    for i, j in np.ndindex(rows.shape):
        pid = ids["product_id"].iloc[rows[i, j]]
        np.testing.assert_array_equal(
            got[i, j], store.manifest.stack_patches([ref.loc[pid, "patch_features"]])[0]
        )
        np.testing.assert_array_equal(
            table.gather(rows, "pixels")[i, j], store.pixels(ref.loc[pid, "pixels"])
        )


def test_a_second_builder_keeps_the_first_table_and_leaves_nothing_behind(store):
    first = build(store)
    before = FeatureTable(first).gather(np.arange(5), "pixels")
    assert build(store) == first  # its own copy is dropped, the published one stays
    np.testing.assert_array_equal(FeatureTable(first).gather(np.arange(5), "pixels"), before)
    assert not list(store.path.glob(".*partial"))


def test_the_table_travels_to_a_worker_as_its_path(store):
    import ray

    table = for_store(store)
    rows = np.array([4, 0, 4])
    remote = ray.get(ray.remote(lambda t: t.gather(rows, "patches")).remote(table))
    np.testing.assert_array_equal(remote, table.gather(rows, "patches"))
