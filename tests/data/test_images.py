"""Decoding every kind of image, the edge-detection RoI against known boxes and real photos, and the
pixel patches against a naive reference."""

import io

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ace_ray.config import FeaturesConfig
from ace_ray.data.features import prepare_one
from ace_ray.data.images import BadImage, decode, detect_roi, iou, pixel_patches, square_crop
from ace_ray.data.schema import GROUND_TRUTH_FILE, read_products
from tests.conftest import FASHION


def _jpeg(img, quality=90):
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def _pil_bytes(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def test_decode_handles_alpha_grey_cmyk_and_huge():
    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[10:30, 10:40] = (0, 0, 255, 255)  # opaque red square on a transparent page
    out = decode(cv2.imencode(".png", rgba)[1].tobytes())
    assert out.shape == (40, 50, 3)
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[20, 20]) == (0, 0, 255)

    grey = decode(_jpeg(np.full((30, 30), 90, np.uint8)))
    assert grey.shape == (30, 30, 3) and abs(int(grey[5, 5, 0]) - 90) < 3

    cmyk = decode(_pil_bytes(Image.new("CMYK", (32, 24), (0, 255, 255, 0)), "JPEG"))  # red in CMYK
    assert cmyk.shape == (24, 32, 3) and cmyk[10, 10, 2] > 200 and cmyk[10, 10, 0] < 60

    huge = np.full((10000, 10000, 3), 250, np.uint8)
    huge[3000:7000, 2000:6000] = (30, 30, 200)
    out = decode(_jpeg(huge, 50), max_side=2048)
    assert max(out.shape[:2]) <= 2048 and min(out.shape[:2]) >= 1024  # decoded reduced, not in full


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "image file is empty"),
        (b"\xff\xd8\xff\xe0garbage that is not a jpeg", "unreadable image"),
        (_jpeg(np.zeros((1, 1, 3), np.uint8)), "image too small (1x1"),
    ],
    ids=["zero-byte", "corrupt", "1x1"],
)
def test_decode_rejects_with_reason(data, reason):
    with pytest.raises(BadImage, match=reason.replace("(", r"\(")):
        decode(data)


def test_truncated_jpeg_is_rejected_or_decoded_never_crashes():
    data = _jpeg(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    try:
        out = decode(data[: len(data) // 3])
    except BadImage as exc:
        assert str(exc).startswith("unreadable image")
    else:
        assert out.shape == (64, 64, 3)


def test_prepare_one_covers_missing_and_escaping_paths(tmp_path):
    root = tmp_path / "cat"
    (root / "images").mkdir(parents=True)
    (tmp_path / "outside.jpg").write_bytes(_jpeg(np.zeros((32, 32, 3), np.uint8)))
    cfg = FeaturesConfig(cnn_input=32)
    assert prepare_one(root, "images/missing.jpg", cfg)["status"] == "image file not found"
    assert prepare_one(root, "../outside.jpg", cfg)["status"] == "image path escapes the catalogue root"
    assert (
        prepare_one(root, str(tmp_path / "outside.jpg"), cfg)["status"]
        == "image path is absolute (it must be relative to the catalogue folder)"
    )
    (root / "images/ok.jpg").write_bytes(_jpeg(np.full((50, 80, 3), 200, np.uint8)))
    ok = prepare_one(root, "images/ok.jpg", cfg)
    assert ok["status"] == "ok" and len(ok["image"]) == 32 * 32 * 3 and len(ok["pixels"]) == 49 * 32 * 32 * 3


def test_roi_matches_synth_boxes(shop):
    truth = pd.read_parquet(shop / GROUND_TRUTH_FILE)
    paths = read_products(shop).set_index("product_id")["image_path"]
    ious = []
    for row in truth.itertuples():
        box, _ = detect_roi(decode((shop / paths[row.product_id]).read_bytes()))
        ious.append(iou(box, (row.box_x, row.box_y, row.box_w, row.box_h)))
    assert np.mean(np.array(ious) >= 0.8) >= 0.9


@pytest.mark.skipif(not (FASHION / "images").is_dir(), reason="shared fashion-products data not present")
def test_roi_contains_the_product_on_real_photos():
    contained, whole = [], []
    for path in sorted((FASHION / "images").glob("*.jpg"))[
        ::3
    ]:  # a third of them: the same figures, a third of the time
        img = decode(path.read_bytes())
        (x, y, w, h), _ = detect_roi(img)
        # Non-background: clearly different from the photo's border colour (studio backgrounds are plain).
        border = np.median(np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]), axis=0)
        fg = np.abs(img.astype(int) - border).sum(axis=2) > 40
        contained.append(fg[y : y + h, x : x + w].sum() / max(1, fg.sum()))
        whole.append(w * h >= 0.98 * img.shape[0] * img.shape[1])
    assert len(contained) > 3000
    assert np.mean(np.array(contained) >= 0.95) >= 0.95
    assert np.mean(whole) < 0.5


def test_roi_falls_back_to_the_whole_frame_on_a_blank_image():
    box, found = detect_roi(np.full((100, 120, 3), 240, np.uint8))
    assert box == (0, 0, 120, 100) and not found


def test_pixel_patches_match_a_naive_cut():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    fast = pixel_patches(img)
    rgb = img[..., ::-1]
    naive = []
    for r in range(7):
        for c in range(7):
            naive.append(rgb[r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32].reshape(-1))
    np.testing.assert_array_equal(fast, np.stack(naive))


def test_square_crop_pads_with_the_border_colour():
    img = np.full((100, 200, 3), 255, np.uint8)
    img[40:60, 20:120] = (255, 0, 0)  # blue (BGR) bar
    out = square_crop(img, (20, 40, 100, 20), 50)  # a wide box: padded above and below
    assert out.shape == (50, 50, 3)
    assert tuple(out[0, 25]) == (255, 255, 255)  # padding
    assert tuple(out[25, 25]) == (0, 0, 255)  # the bar, now RGB
