"""Importers: the real fashion-products catalogue and a user's own table, into the same contract."""

import pandas as pd
import pytest

from ace_ray.config import ClickModelConfig, SynthConfig
from ace_ray.data import lexicon
from ace_ray.data.importers.fashion_products import import_fashion_products
from ace_ray.data.importers.table import ColumnMap, import_table
from ace_ray.data.schema import Manifest, SchemaError, read_impressions, read_products
from ace_ray.data.validate import read_quarantine, validate
from tests.conftest import FASHION

pytestmark = pytest.mark.ray
SIM = SynthConfig(days=3, sessions=200)


@pytest.mark.skipif(not (FASHION / "styles.csv").is_file(), reason="shared fashion-products data not present")
def test_fashion_products_import(tmp_path, ray_session):
    out = tmp_path / "fp"
    manifest = import_fashion_products(FASHION, out, SIM, ClickModelConfig())
    styles = pd.read_csv(FASHION / "styles.csv", dtype=str, keep_default_na=False)
    products = read_products(out)
    assert len(products) == len(styles) == manifest.counts["products"]
    assert manifest.source == "fashion-products" and manifest.impressions == "simulated"
    assert Manifest.read(out).impressions == "simulated"
    # Category: articleType, else subCategory; the path has all three levels.
    row = styles.index[styles["articleType"] == ""][0]
    assert products.loc[row, "category"] == styles.loc[row, "subCategory"]
    ok = styles.index[styles["articleType"] != ""][0]
    assert products.loc[ok, "category_path"] == "/".join(
        styles.loc[ok, ["masterCategory", "subCategory", "articleType"]]
    )
    assert products["title"].tolist()[:3] == styles["productDisplayName"].tolist()[:3]
    # "NA" in the usage column is missing, not a usage called NA.
    assert "NA" not in set(products["usage"].dropna())
    # Queries are written from the real attributes, e.g. "women blue heels".
    imp = read_impressions(out)
    queries = imp["query"].unique()
    assert any(lexicon.mentions(q, "women") and lexicon.mentions(q, "blue") for q in queries)
    report = validate(out)
    assert report.counts_in["products"] == len(styles)
    assert report.counts_kept["impressions"] == len(imp)


def _user_table(tmp_path, shop):
    """A user's catalogue with its own column names, images in its own folder."""
    src = read_products(shop).head(30)
    images = tmp_path / "user_images"
    rows = []
    for i, r in src.reset_index(drop=True).iterrows():
        rel = f"photos/{i:03d}.jpg"
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        (images / rel).write_bytes((shop / r["image_path"]).read_bytes())
        rows.append({"sku": f"SKU-{i}", "name": r["title"], "cat": r["category"], "pic": rel,
                     "color": ["red", "blue", "NA"][i % 3], "brand": "Acme"})  # fmt: skip
    rows.append({"sku": "SKU-bad", "name": "escaping", "cat": "mug", "pic": "../../etc/passwd", "color": "red",
                 "brand": "Acme"})  # fmt: skip
    path = tmp_path / "catalogue.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path, images


COLS = ColumnMap(id="sku", title="name", category="cat", image="pic", attributes=["color", "brand"])


def test_table_import_maps_columns_and_simulates_clicks(tmp_path, shop):
    path, images = _user_table(tmp_path, shop)
    out = tmp_path / "out"
    manifest = import_table(path, images, out, COLS, SIM, ClickModelConfig())
    products = read_products(out)
    assert products["product_id"].tolist()[:2] == ["SKU-0", "SKU-1"]
    assert products.loc[0, "image_path"] == "images/photos/000.jpg"
    assert (out / "images/photos/000.jpg").is_file()
    assert products["color"].tolist()[:2] == ["red", "blue"] and pd.isna(products.loc[2, "color"])
    assert manifest.impressions == "simulated" and manifest.attribute_columns == ["color", "brand"]
    imp = read_impressions(out)
    assert imp["session_id"].nunique() == SIM.days * SIM.sessions
    assert imp.groupby("session_id").size().max() == SIM.list_size  # fewer only where few products exist
    assert set(imp["product_id"]) <= set(products["product_id"])
    report = validate(out)
    q = read_quarantine(out)
    assert q.loc[q["file"] == "products.parquet", "reason"].tolist() == [
        "image path escapes the catalogue root"
    ]
    assert report.counts_kept["products"] == 30


def test_table_import_with_a_logged_click_log(tmp_path, shop):
    path, images = _user_table(tmp_path, shop)
    log = pd.DataFrame(
        {
            "day": ["2026-02-01", "2026-02-01", "not a date", "2026-02-02"],
            "session_id": ["s1", "s1", "s2", "s3"],
            "query": ["red mug", "red mug", "blue mug", "mug"],
            "product_id": ["SKU-0", "SKU-1", "SKU-2", "SKU-404"],
            "position": ["0", "1", "0", "0"],
            "clicked": ["yes", "0", "true", "maybe"],
        }
    )
    log.to_csv(tmp_path / "log.csv", index=False)
    out = tmp_path / "out"
    manifest = import_table(path, images, out, COLS, SIM, ClickModelConfig(), tmp_path / "log.csv")
    assert manifest.impressions == "logged"
    imp = read_impressions(out)
    assert imp["clicked"].tolist()[:2] == [True, False]
    assert imp.loc[2, "raw_day"] == "not a date"  # the original text is kept
    validate(out)
    q = read_quarantine(out)
    got = dict(q.loc[q["file"] == "impressions.parquet", ["row", "reason"]].values.tolist())
    assert got == {2: "bad date", 3: "missing clicked"}


def test_table_import_names_a_missing_column(tmp_path, shop):
    path, images = _user_table(tmp_path, shop)
    cols = ColumnMap(id="sku", title="title", category="cat", image="pic")
    with pytest.raises(SchemaError, match=r"catalogue\.csv: no column\(s\) title"):
        import_table(path, images, tmp_path / "out", cols, SIM, ClickModelConfig())
