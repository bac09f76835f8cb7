"""Every bad-row kind is quarantined with its file, row and reason; counts always add up."""

import datetime as dt
import json

import pandas as pd
import pytest

from ace_ray.config import ClickModelConfig, SynthConfig
from ace_ray.data.schema import (
    IMPRESSIONS_FILE,
    PRODUCTS_FILE,
    REPORT_FILE,
    SchemaError,
    read_impressions,
    read_products,
)
from ace_ray.data.synth.generate import synthesize
from ace_ray.data.validate import load_clean, read_quarantine, validate

pytestmark = pytest.mark.ray


@pytest.fixture
def catalogue(tmp_path, ray_session):
    root = tmp_path / "cat"
    synthesize(SynthConfig(products=40, days=2, sessions=20, shard_size=20), ClickModelConfig(), root)
    return root


def _corrupt(root):
    """Break one row per kind; returns {reason prefix: (file, row)}."""
    products, imp = read_products(root), read_impressions(root)
    expect = {}
    (root / products.loc[0, "image_path"]).unlink()
    expect["image file not found"] = (PRODUCTS_FILE, 0)
    (root / products.loc[1, "image_path"]).write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    expect["unreadable image"] = (PRODUCTS_FILE, 1)
    (root / products.loc[2, "image_path"]).write_bytes(b"")
    expect["image file is empty"] = (PRODUCTS_FILE, 2)
    (root.parent / "outside.jpg").write_bytes((root / products.loc[3, "image_path"]).read_bytes())
    products.loc[3, "image_path"] = "../outside.jpg"
    expect["image path escapes the catalogue root"] = (PRODUCTS_FILE, 3)
    products.loc[4, "image_path"] = str((root / products.loc[4, "image_path"]).resolve())  # absolute
    products.loc[5, "title"] = "   "
    expect["empty title"] = (PRODUCTS_FILE, 5)
    dup = products.iloc[[6]].assign(title="same id again")
    products = pd.concat([products, dup], ignore_index=True)
    expect["duplicate product_id"] = (PRODUCTS_FILE, len(products) - 1)

    imp["day"] = imp["day"].astype(str).astype(object)
    good = imp.loc[10, "product_id"]
    imp.loc[10, "product_id"] = "no-such-product"
    expect["unknown product"] = (IMPRESSIONS_FILE, 10)
    imp.loc[11, "day"] = "2026-13-45"
    expect["bad date"] = (IMPRESSIONS_FILE, 11)
    imp.loc[12, "day"] = None
    broken = set(products["product_id"].iloc[:7])
    clean_row = next(i for i in range(13, len(imp)) if imp.loc[i, "product_id"] not in broken)
    imp = pd.concat([imp, imp.iloc[[clean_row]]], ignore_index=True)
    expect["duplicate impression"] = (IMPRESSIONS_FILE, len(imp) - 1)
    assert good  # the row had a real product before
    products.to_parquet(root / PRODUCTS_FILE)
    imp.to_parquet(root / IMPRESSIONS_FILE)
    return expect, len(products), len(imp)


def test_every_bad_row_kind_is_quarantined_with_reason(catalogue):
    expect, n_products, n_imp = _corrupt(catalogue)
    report = validate(catalogue)
    q = read_quarantine(catalogue)
    found = {(f, r): why for f, r, why in q[["file", "row", "reason"]].itertuples(index=False)}
    for reason, where in expect.items():
        assert where in found, f"{reason} not quarantined"
        assert found[where].startswith(reason), (reason, found[where])
    assert found[(PRODUCTS_FILE, 4)] == "image path is absolute (it must be relative to the catalogue folder)"
    assert found[(IMPRESSIONS_FILE, 12)] == "bad date"
    # The duplicate names the row it repeats.
    assert found[expect["duplicate product_id"]] == "duplicate product_id (first at row 6)"
    # Impressions of quarantined products are quarantined too, with that reason.
    assert "product quarantined" in set(q["reason"])
    # Counts in = counts kept + quarantined, per table.
    assert report.counts_in == {"products": n_products, "impressions": n_imp}
    for t in report.counts_in:
        assert report.counts_in[t] == report.counts_kept[t] + report.counts_quarantined[t]
    assert report.counts_quarantined["products"] == 7
    # Nothing is lost: the quarantined row is there in full.
    assert json.loads(q.loc[q["reason"] == "empty title", "record"].iloc[0])["title"] == "   "
    assert json.loads((catalogue / REPORT_FILE).read_text())["counts_in"]["products"] == n_products
    products, imp = load_clean(catalogue)
    assert len(products) == report.counts_kept["products"] and len(imp) == report.counts_kept["impressions"]
    assert products["product_id"].is_unique
    assert set(imp["product_id"]) <= set(products["product_id"])


def test_clean_catalogue_passes_and_counts_per_day(catalogue):
    report = validate(catalogue)
    assert report.ok
    assert [d["day"] for d in report.per_day] == ["2026-01-01", "2026-01-02"]
    assert sum(d["impressions"] for d in report.per_day) == report.counts_in["impressions"]
    assert sum(c["products"] for c in report.per_category) == 40


def test_missing_column_is_a_clear_error(catalogue):
    original = read_products(catalogue)
    original.drop(columns=["title"]).to_parquet(catalogue / PRODUCTS_FILE)
    with pytest.raises(SchemaError, match=r"products\.parquet: missing required column\(s\) title"):
        validate(catalogue)
    # Numeric ids written by hand would match nothing in the other table ("1.0" is not "1"): refused.
    original.assign(product_id=original.index.astype(float)).to_parquet(catalogue / PRODUCTS_FILE)
    with pytest.raises(
        SchemaError, match=r"products\.parquet: column product_id holds double values; ids must be text"
    ):
        validate(catalogue)


def test_load_clean_needs_validation(catalogue):
    with pytest.raises(FileNotFoundError, match="ace-ray validate"):
        load_clean(catalogue)


def test_dates_out_of_range_are_bad(catalogue):
    imp = read_impressions(catalogue)
    imp.loc[0, "day"] = dt.date(1900, 1, 1)
    imp.to_parquet(catalogue / IMPRESSIONS_FILE)
    validate(catalogue)
    q = read_quarantine(catalogue)
    assert q.loc[q["file"] == IMPRESSIONS_FILE, ["row", "reason"]].values.tolist() == [[0, "bad date"]]
