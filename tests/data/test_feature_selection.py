"""A run uses the feature store that matches its whole data.features config, never merely the newest."""

import json
import shutil

import pandas as pd
import pytest

from ace_ray.config import with_overrides
from ace_ray.data import feature_store as fs
from tests.conftest import SHOP_FEATURES

pytestmark = pytest.mark.ray


def test_the_store_is_chosen_by_every_feature_setting(featurised_shop, tmp_path):
    w, root, store = featurised_shop
    assert fs.for_workload(w).path == store.path
    # The workload's defaults (grid 4, 224-px CNN input) do not match the store (grid 2, 64 px): refused,
    # naming the fields, instead of training on features of another grid.
    default = with_overrides(w, ["data.features.grid=4", "data.features.cnn_input=224"])
    with pytest.raises(fs.FeatureMismatch, match=r"grid: store has 2, workload 4; cnn_input: store has 64"):
        fs.for_workload(default)
    with pytest.raises(fs.NoMatchingStore, match=r"roi: store has True, workload False"):
        fs.for_workload(with_overrides(w, ["data.features.roi=false"]))


def test_two_stores_of_the_same_settings_are_ambiguous(featurised_shop, tmp_path):
    _, root, store = featurised_shop
    out = tmp_path / "features"
    shutil.copytree(store.path, out / store.path.name)
    other = json.loads((store.path / fs.MANIFEST).read_text()) | {"weights_sha256": "f" * 64}
    version = fs.FeatureManifest(**other).version
    shutil.copytree(store.path, out / version)
    (out / version / fs.MANIFEST).write_text(json.dumps(other))
    w = with_overrides(featurised_shop[0], [f"data.features.out={out}", *SHOP_FEATURES])
    with pytest.raises(
        fs.FeatureMismatch, match=r"2 feature stores match .*weights_sha256 ffffffffffff"
    ) as err:
        fs.for_workload(w)
    assert not isinstance(err.value, fs.NoMatchingStore)  # not missing: ambiguous, so nothing is built
    shutil.rmtree(out / version)
    assert fs.for_workload(w).path == out / store.path.name


def test_features_of_an_older_catalogue_are_not_taken(featurised_shop, tmp_path):
    w, root, store = featurised_shop
    copy = tmp_path / "shop"
    copy.mkdir()
    shutil.copy(root / "products.parquet", copy / "products.parquet")
    same = with_overrides(w, [f"data.root={copy}", f"data.features.out={store.path.parent}"])
    assert fs.for_workload(same).path == store.path  # the same bytes: the same catalogue
    products = pd.read_parquet(copy / "products.parquet")
    products.loc[0, "title"] = "re-imported title"
    products.to_parquet(copy / "products.parquet")
    with pytest.raises(fs.NoMatchingStore, match="made from another products.parquet"):
        fs.for_workload(same)


def test_features_decoded_or_cropped_otherwise_are_other_features(featurised_shop, tmp_path):
    w, root, store = featurised_shop
    out = tmp_path / "features"
    mine = json.loads((store.path / fs.MANIFEST).read_text())
    # A store written before the manifest recorded the decoding (default decoding) keeps its name and is found.
    old = {k: v for k, v in mine.items() if k != "decode"}
    assert not mine["decode"] and fs.FeatureManifest(**old).version == store.path.name
    shutil.copytree(store.path, out / store.path.name)
    (out / store.path.name / fs.MANIFEST).write_text(json.dumps(old))
    # Features cropped with another RoI blur are another store; each workload takes its own.
    blurred = mine | {"decode": {"roi_params.blur": 7}}
    version = fs.FeatureManifest(**blurred).version
    assert version != store.path.name
    shutil.copytree(store.path, out / version)
    (out / version / fs.MANIFEST).write_text(json.dumps(blurred))
    w = with_overrides(w, [f"data.features.out={out}"])
    assert fs.for_workload(w).path.name == store.path.name
    assert fs.for_workload(with_overrides(w, ["data.features.roi_params.blur=7"])).path.name == version
    with pytest.raises(fs.NoMatchingStore, match=r"decode: store has \{.*\}, workload \{'max_side': 512\}"):
        fs.for_workload(with_overrides(w, ["data.features.max_side=512"]))
    # Whole-image features crop nothing: the RoI settings are not theirs.
    assert (
        fs.decode_settings(
            with_overrides(w, ["data.features.roi=false", "data.features.roi_params.blur=7"]).data.features
        )
        == {}
    )
