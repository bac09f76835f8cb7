"""The Ray Data feature pipeline end to end: every bad image kind, counts, the versioned store."""

import dataclasses
import io
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ace_ray.config import ClickModelConfig, FeaturesConfig, SynthConfig
from ace_ray.data import feature_store as fs
from ace_ray.data.backbone import load_backbone
from ace_ray.data.features import build_features, manifest_for, prepare_one
from ace_ray.data.schema import (
    IMAGES_DIR,
    IMPRESSIONS_FILE,
    MANIFEST_FILE,
    PRODUCTS_FILE,
    SchemaError,
    read_products,
)
from ace_ray.data.synth.generate import synthesize
from ace_ray.data.validate import validate

pytestmark = pytest.mark.ray
SMALL = dict(cnn_input=64, grid=2, batch_size=8)  # the real CNN, small inputs: fast on 2 cores


@pytest.fixture(scope="module")
def tiny_resnet(tmp_path_factory):
    """An HF vision model in a local directory (the path users take for ResNeXt and friends)."""
    from transformers import ResNetConfig, ResNetModel

    path = tmp_path_factory.mktemp("tiny-resnet")
    torch.manual_seed(0)
    ResNetModel(
        ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    ).save_pretrained(path)
    return str(path)


def _catalogue(root: Path) -> Path:
    synthesize(SynthConfig(products=24, days=1, sessions=10, shard_size=12), ClickModelConfig(), root)
    validate(root)
    return root


@pytest.fixture
def catalogue(tmp_path, ray_session):
    return _catalogue(tmp_path / "cat")


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_session):
    """A catalogue with one store built under ``SMALL`` (shared: the tests that add a store to it say so)."""
    root = _catalogue(tmp_path_factory.mktemp("built") / "cat")
    return root, build_features(root, FeaturesConfig(**SMALL))


def _break_images(root):
    """After validation (files change under a running system), break one image per kind."""
    products = read_products(root)
    path = lambda i: root / products.loc[i, "image_path"]  # noqa: E731
    img = cv2.imread(str(path(0)))
    path(0).write_bytes(b"\xff\xd8\xff\xe0 corrupt")
    path(1).write_bytes(b"")
    path(2).unlink()
    cv2.imwrite(str(path(3)), np.zeros((1, 1, 3), np.uint8))
    cv2.imwrite(str(root.parent.parent / "outside.jpg"), img)
    path(4).unlink()
    path(4).symlink_to(root.parent.parent / "outside.jpg")
    rgba = cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)
    rgba[:20, :, 3] = 0
    cv2.imwrite(str(path(5)), rgba)  # PNG bytes with alpha under a .jpg name, as real shops have
    cv2.imwrite(str(path(6)), cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
    buf = io.BytesIO()
    Image.fromarray(img[..., ::-1]).convert("CMYK").save(buf, "JPEG")
    path(7).write_bytes(buf.getvalue())
    cv2.imwrite(
        str(path(8)),
        cv2.resize(img, (10000, 10000), interpolation=cv2.INTER_NEAREST),
        [cv2.IMWRITE_JPEG_QUALITY, 60],
    )
    # products.parquet itself is unchanged: a changed one would need validating again.
    return {
        products.loc[0, "product_id"]: "unreadable image",
        products.loc[1, "product_id"]: "image file is empty",
        products.loc[2, "product_id"]: "image file not found",
        products.loc[3, "product_id"]: "image too small",
        products.loc[4, "product_id"]: "image is a symlink to outside the catalogue root",
    }


def test_pipeline_featurises_or_quarantines_every_image(catalogue):
    expected_bad = _break_images(catalogue)
    stats = build_features(catalogue, FeaturesConfig(**SMALL))
    assert stats["products_in"] == 24
    assert stats["featurised"] + stats["quarantined"] == stats["products_in"]
    assert stats["quarantined"] == len(expected_bad)
    store = fs.FeatureStore(stats["store"])
    q = pd.read_parquet(store.path / fs.QUARANTINE).set_index("product_id")["reason"]
    for pid, reason in expected_bad.items():
        assert q[pid].startswith(reason), (pid, q[pid])
    ok = store.read(columns=["patch_features", "pixels", "roi"])
    assert len(ok) == 19 and ok["product_id"].is_unique
    feats = store.patch_features(ok.loc[0, "patch_features"])
    assert feats.shape == (4, 1280) and np.isfinite(feats).all()
    assert store.pixels(ok.loc[0, "pixels"]).shape == (49, 3072)
    assert json.loads((store.path / fs.STATS).read_text())["featurised"] == 19


def test_pipeline_features_equal_a_direct_forward_pass(built):
    catalogue, stats = built
    cfg = FeaturesConfig(**SMALL)
    store = fs.FeatureStore(stats["store"])
    row = store.read(columns=["patch_features", "pixels"]).iloc[3]
    rel = read_products(catalogue).set_index("product_id").loc[row["product_id"], "image_path"]
    prepared = prepare_one(catalogue.resolve(), rel, cfg)
    crop = torch.from_numpy(np.frombuffer(prepared["image"], np.uint8).reshape(1, 64, 64, 3).copy())
    direct = load_backbone(cfg.backbone).patch_features(crop, cfg.grid)[0].numpy()
    np.testing.assert_allclose(store.patch_features(row["patch_features"]), direct, rtol=2e-2, atol=2e-2)
    assert row["pixels"] == prepared["pixels"]


def test_hf_backbone_from_a_local_directory_and_whole_image_mode(built, tiny_resnet):
    """Also: a store made under other settings lives beside the first one and becomes the latest."""
    catalogue, first = built
    cfg = FeaturesConfig(backbone=tiny_resnet, roi=False, cnn_input=64, grid=2, batch_size=8)
    stats = build_features(catalogue, cfg)
    assert stats["version"] != first["version"] and fs.FeatureStore(first["store"]).manifest.roi
    assert fs.latest(catalogue / "features").manifest.version == stats["version"]
    store = fs.FeatureStore(stats["store"])
    assert store.manifest.backbone == tiny_resnet and store.manifest.feature_dim == 16
    assert not store.manifest.roi
    ok = store.read(columns=["patch_features", "roi", "width", "height"])
    assert len(ok) == 24 and store.patch_features(ok.loc[0, "patch_features"]).shape == (4, 16)
    # Whole-image mode: the "RoI" is the full frame.
    assert all(list(r) == [0, 0, w, h] for r, w, h in zip(ok["roi"], ok["width"], ok["height"], strict=True))


def test_store_refuses_features_made_under_another_manifest(built, tiny_resnet):
    store = fs.FeatureStore(built[1]["store"])
    store.check(manifest_for(FeaturesConfig(**SMALL)))  # the same config: fine
    with pytest.raises(fs.FeatureMismatch, match=r"grid: store has 2, expected 4"):
        store.check(manifest_for(FeaturesConfig(**(SMALL | {"grid": 4}))))
    with pytest.raises(fs.FeatureMismatch, match=r"backbone: store has 'efficientnet-lite0'.*weights_sha256"):
        store.check(manifest_for(FeaturesConfig(backbone=tiny_resnet, cnn_input=64, grid=2)))


def test_an_interrupted_run_leaves_no_store_that_looks_finished(catalogue, monkeypatch):
    """Stopped while writing (Ctrl-C, SIGTERM, a crash): later commands find no features, not half of them."""
    import ray.data

    def interrupted(self, path, **kwargs):
        (Path(path) / "part-0.parquet").write_bytes(b"PAR1 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(ray.data.Dataset, "write_parquet", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_features(catalogue, FeaturesConfig(**SMALL))
    with pytest.raises(FileNotFoundError, match="no features yet"):
        fs.latest(catalogue / "features")
    assert not list((catalogue / "features").glob("*/*.parquet"))
    # A store folder without its completion mark (as older runs left them) is refused by name.
    half = catalogue / "features" / "0123456789ab"
    half.mkdir()
    (half / fs.MANIFEST).write_text(json.dumps(dataclasses.asdict(manifest_for(FeaturesConfig(**SMALL)))))
    assert not fs.is_complete(half)
    with pytest.raises(fs.IncompleteStore, match="incomplete feature store .* run `ace-ray features` again"):
        fs.FeatureStore(half)


def test_a_catalogue_with_every_product_quarantined_is_refused_by_name(tmp_path, ray_session):
    """Its images folder a link to another catalogue's (validate refuses images outside the root): a clear
    error that says where the reasons are, not pyarrow's complaint about an empty store."""
    src = _catalogue(tmp_path / "src")
    root = tmp_path / "linked"
    root.mkdir()
    for name in (PRODUCTS_FILE, IMPRESSIONS_FILE, MANIFEST_FILE):
        shutil.copy2(src / name, root / name)
    (root / IMAGES_DIR).symlink_to(src / IMAGES_DIR, target_is_directory=True)
    validate(root)
    with pytest.raises(SchemaError, match="every product is quarantined.*quarantine.parquet"):
        build_features(root, FeaturesConfig(**SMALL))
