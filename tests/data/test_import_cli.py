"""Bringing your own catalogue through `ace-ray import table`, as a user runs it: input files are never
modified or deleted, bad input is one `error:` line naming the file and line (or a quarantined row with its
reason), and a failed import leaves nothing that looks finished."""

import datetime as dt
import hashlib
import os

import cv2
import numpy as np
import pandas as pd
import pytest

from ace_ray.cli import main
from ace_ray.config import ConfigError
from ace_ray.data.schema import (
    IMPRESSIONS_FILE,
    PRODUCTS_FILE,
    QUARANTINE_FILE,
    read_impressions,
    read_products,
)
from ace_ray.data.summary import summarize
from ace_ray.data.validate import read_quarantine

pytestmark = pytest.mark.ray
COLS = ["--id-col", "sku", "--title-col", "name", "--category-col", "cat", "--image-col", "pic"]


def _photo(path, size=(40, 40), ext=".jpg"):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((*size, 3), np.uint8)
    img[size[0] // 4 : -size[0] // 4, size[1] // 4 : -size[1] // 4] = (30, 60, 200)
    ok, buf = cv2.imencode(ext, img)
    assert ok
    path.write_bytes(buf.tobytes())


def _shop(tmp_path, n=4, images="images"):
    """A user's folder: photos, products.csv and a click log (all ids SKU-i, ISO days)."""
    shop = tmp_path / "shop"
    for i in range(n):
        _photo(shop / images / f"p{i}.jpg")
    pd.DataFrame(
        {
            "sku": [f"SKU-{i}" for i in range(n)],
            "name": [f"blue mug {i}" for i in range(n)],
            "cat": "mug",
            "pic": [f"p{i}.jpg" for i in range(n)],
        }  # fmt: skip
    ).to_csv(shop / "products.csv", index=False)
    _clicks(shop / "clicks.csv", [f"SKU-{i}" for i in range(n)])
    return shop


def _clicks(path, pids, days=None):
    pd.DataFrame(
        {
            "day": days or ["2026-02-01"] * len(pids),
            "session_id": [f"s{i}" for i in range(len(pids))],
            "query": "mug",
            "product_id": pids,
            "position": "0",
            "clicked": "1",
        }  # fmt: skip
    ).to_csv(path, index=False)


def _fingerprint(folder):
    """Every file under ``folder``: (bytes hash, mtime) by path."""
    return {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def _import(tmp_path, products, images, out, *extra):
    return main(["import", "table", "--products", str(products), "--images", str(images), "--out", str(out),
                 *COLS, *map(str, extra), f"workspace={tmp_path}"])  # fmt: skip


def test_importing_in_place_keeps_every_input_file(tmp_path, ray_session, capsys):
    shop = _shop(tmp_path)
    before = _fingerprint(shop)
    for _ in range(2):  # a re-import in place as well
        assert _import(tmp_path, shop / "products.csv", shop / "images", shop, "--impressions",
                       shop / "clicks.csv") == 0, capsys.readouterr().err  # fmt: skip
        after = _fingerprint(shop)
        assert {p: after[p] for p in before} == before  # nothing deleted, nothing modified
    assert read_products(shop)["image_path"].tolist() == [f"images/p{i}.jpg" for i in range(4)]
    assert main(["validate", str(shop), "--strict"]) == 0
    # An --out that would overwrite an input file is refused before anything is written.
    read_products(shop).rename(columns={"product_id": "sku", "title": "name", "category": "cat",
                                        "image_path": "pic"}).to_parquet(shop / "mine.parquet")  # fmt: skip
    os.replace(shop / "mine.parquet", shop / PRODUCTS_FILE)
    before = _fingerprint(shop)
    assert _import(tmp_path, shop / PRODUCTS_FILE, shop, shop) == 2
    assert "is an input, and importing to --out" in capsys.readouterr().err
    assert _fingerprint(shop) == before


def test_a_failed_import_leaves_nothing_and_keeps_the_previous_catalogue(tmp_path, ray_session, capsys):
    shop = _shop(tmp_path)
    out = tmp_path / "out"
    (shop / "ragged.csv").write_text("day,session_id,query,product_id,position,clicked\n"
                                     "2026-02-01,s1,mug,SKU-0,0,1\n2026-02-01,s2,red, mug,SKU-1,0,1\n")  # fmt: skip
    assert (
        _import(tmp_path, shop / "products.csv", shop / "images", out, "--impressions", shop / "ragged.csv")
        == 2
    )
    err = capsys.readouterr().err
    assert f"ace-ray import: error: {shop / 'ragged.csv'}, line 3: 7 field(s) where the header has 6" in err
    assert not out.exists()  # no partial images/, no products.parquet
    assert (
        _import(tmp_path, shop / "products.csv", shop / "images", out, "--impressions", shop / "clicks.csv")
        == 0
    )
    good = _fingerprint(out)
    assert (
        _import(tmp_path, shop / "products.csv", shop / "images", out, "--impressions", shop / "ragged.csv")
        == 2
    )
    assert _fingerprint(out) == good and not [p for p in out.iterdir() if p.name.startswith(".")]
    # A folder holding files of the contract's names that ace-ray did not write is not written over.
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / IMPRESSIONS_FILE).write_bytes(b"someone else's table")
    assert _import(tmp_path, shop / "products.csv", shop / "images", tmp_path / "theirs") == 2
    assert "impressions.parquet: already exists and was not written by ace-ray" in capsys.readouterr().err
    assert (tmp_path / "theirs" / IMPRESSIONS_FILE).read_bytes() == b"someone else's table"


def test_bad_input_is_one_error_line_naming_file_and_line(tmp_path, ray_session, capsys):
    shop = _shop(tmp_path)
    cases = {
        "latin1.csv": (
            "sku,name,cat,pic\nSKU-0,caf\xe9 mug,mug,p0.jpg\n".encode("latin-1"),
            "line 2: not UTF-8",
        ),
        "empty.csv": (b"", "the file is empty"),
        "header.csv": (b"sku,name,cat,pic\n", "has a header but no rows"),
        "ragged.csv": (b"sku,name,cat,pic\nSKU-0,mug,p0.jpg\n", "line 2: 3 field(s) where the header has 4"),
    }
    for name, (data, message) in cases.items():
        (shop / name).write_bytes(data)
        assert _import(tmp_path, shop / name, shop / "images", tmp_path / "out") == 2, name
        err = capsys.readouterr().err
        assert f"ace-ray import: error: {shop / name}" in err and message in err, err
        assert "Traceback" not in err
    (shop / "header_only_clicks.csv").write_text("day,session_id,query,product_id,position,clicked\n")
    assert _import(tmp_path, shop / "products.csv", shop / "images", tmp_path / "out",
                   "--impressions", shop / "header_only_clicks.csv") == 2  # fmt: skip
    assert "header_only_clicks.csv: has a header but no rows" in capsys.readouterr().err
    assert _import(tmp_path, shop / "products.csv", tmp_path / "no_such_folder", tmp_path / "out") == 2
    assert "no_such_folder: image folder not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["synth", "--out", str(tmp_path / "s"), "--products", "0", f"workspace={tmp_path}"]) == 2
    assert "data.synth.products" in capsys.readouterr().err


def test_semicolon_csv_and_huge_positions(tmp_path, ray_session, capsys):
    """A semicolon-separated export (European spreadsheets) reads; a position beyond 32 bits is a
    quarantined row with its text kept, not an overflow."""
    shop = _shop(tmp_path, n=2)
    (shop / "products.csv").write_text("sku;name;cat;pic\nSKU-0;mug, blue;mug;p0.jpg\nSKU-1;mug;mug;p1.jpg\n")
    (shop / "clicks.csv").write_text("day,session_id,query,product_id,position,clicked\n"
                                     "2026-02-01,s1,mug,SKU-0,0,1\n2026-02-01,s1,mug,SKU-1,3e9,0\n")  # fmt: skip
    out = tmp_path / "out"
    assert (
        _import(tmp_path, shop / "products.csv", shop / "images", out, "--impressions", shop / "clicks.csv")
        == 0
    )
    assert read_products(out)["title"].tolist() == ["mug, blue", "mug"]
    assert read_impressions(out).loc[1, "raw_position"] == "3e9"
    assert main(["validate", str(out)]) == 0
    q = read_quarantine(out)
    assert q[["file", "row", "reason"]].values.tolist() == [[IMPRESSIONS_FILE, 1, "bad position"]]


def test_days_iso_forms_explicit_format_and_refusals(tmp_path, ray_session, capsys):
    shop = _shop(tmp_path)
    out, pids = tmp_path / "out", [f"SKU-{i}" for i in range(4)]
    # Different ISO 8601 forms in one column all read, as the day written.
    _clicks(shop / "iso.csv", pids, ["2026-02-01", "20260202", "2026-02-03T23:30:00", "2026-02-04 08:00"])
    assert (
        _import(tmp_path, shop / "products.csv", shop / "images", out, "--impressions", shop / "iso.csv") == 0
    )
    assert read_impressions(out)["day"].tolist() == [dt.date(2026, 2, d) for d in range(1, 5)]
    # 12/01/2026 could be 12 January or 1 December: refused, not guessed ...
    _clicks(shop / "dmy.csv", pids, ["12/01/2026", "13/01/2026", "01/02/2026", "12/01/2026"])
    assert (
        _import(tmp_path, shop / "products.csv", shop / "images", out, "--impressions", shop / "dmy.csv") == 2
    )
    err = capsys.readouterr().err
    assert "dmy.csv, line 2, column 'day': '12/01/2026' is not an ISO date" in err and "--date-format" in err
    _clicks(shop / "ambiguous.csv", pids, ["12/01/2026", "11/01/2026", "01/02/2026", "12/01/2026"])
    assert (
        _import(
            tmp_path, shop / "products.csv", shop / "images", out, "--impressions", shop / "ambiguous.csv"
        )
        == 2
    )
    assert "ambiguous" in capsys.readouterr().err
    # ... and read as the user says.
    assert _import(tmp_path, shop / "products.csv", shop / "images", out, "--impressions", shop / "dmy.csv",
                   "--date-format", "%d/%m/%Y") == 0  # fmt: skip
    assert read_impressions(out)["day"].tolist()[:3] == [dt.date(2026, 1, 12), dt.date(2026, 1, 13),
                                                          dt.date(2026, 2, 1)]  # fmt: skip
    # Mixed time-zone offsets: an error line, not a traceback.
    _clicks(shop / "tz.csv", pids, ["2026-02-01T10:00:00+01:00", "2026-02-01T23:00:00-05:00"] * 2)
    assert (
        _import(tmp_path, shop / "products.csv", shop / "images", out, "--impressions", shop / "tz.csv") == 2
    )
    err = capsys.readouterr().err
    assert "tz.csv: column 'day' mixes time zones" in err and "Traceback" not in err


def test_float_ids_match_and_a_log_of_unknown_products_is_loud(tmp_path, ray_session, capsys):
    shop = _shop(tmp_path, n=3)
    # One missing id makes pandas store the id column as floats: 1 -> 1.0.
    pd.DataFrame({"sku": [1.0, 2.0, np.nan], "name": ["a mug", "b mug", "c mug"], "cat": "mug",
                  "pic": ["p0.jpg", "p1.jpg", "p2.jpg"]}).to_parquet(shop / "products.parquet")  # fmt: skip
    pd.DataFrame({"day": ["2026-02-01"] * 2, "session_id": ["s1", "s2"], "query": "mug", "product_id": [1, 2],
                  "position": [0, 0], "clicked": [True, False]}).to_parquet(shop / "clicks.parquet")  # fmt: skip
    out = tmp_path / "out"
    assert _import(tmp_path, shop / "products.parquet", shop / "images", out, "--impressions",
                   shop / "clicks.parquet") == 0  # fmt: skip
    assert read_products(out)["product_id"].tolist()[:2] == ["1", "2"]
    assert read_impressions(out)["product_id"].tolist() == ["1", "2"]
    assert main(["validate", str(out)]) == 0
    assert "unknown product" not in set(read_quarantine(out)["reason"])
    # A one-day click log cannot give the default two test days: a config error naming the key.
    with pytest.raises(ConfigError, match=r"data.test_days=2 leaves no train days .* 1 usable day"):
        summarize(out, test_days=2)
    assert "WARNING" not in capsys.readouterr().err
    _clicks(shop / "other_ids.csv", ["X-1", "X-2", "X-3", "1"])
    assert _import(tmp_path, shop / "products.parquet", shop / "images", out, "--impressions",
                   shop / "other_ids.csv") == 0  # fmt: skip
    assert "WARNING: 3 of 4 impressions (75%)" in capsys.readouterr().err
    assert main(["validate", str(out)]) == 0
    assert "WARNING: 3 of 4 impressions (75%) name a product_id that is not in" in capsys.readouterr().out


def test_tiny_images_and_precise_reasons(tmp_path, ray_session, capsys):
    """Placeholder images of a few pixels are quarantined, not a crash; an empty cell, an absolute path
    and a symlink out of the catalogue each say what they are."""
    shop = _shop(tmp_path, n=1)
    _photo(shop / "images/one.png", (1, 1), ".png")
    _photo(shop / "images/five.webp", (5, 5), ".webp")
    _photo(shop / "images/five.bmp", (5, 5), ".bmp")
    _photo(tmp_path / "elsewhere/x.jpg")
    (shop / "images/link.jpg").symlink_to(tmp_path / "elsewhere/x.jpg")
    pics = ["p0.jpg", "one.png", "five.webp", "five.bmp", "", str(tmp_path / "elsewhere/x.jpg"), "link.jpg"]
    pd.DataFrame(
        {"sku": [f"S{i}" for i in range(len(pics))], "name": "mug", "cat": "mug", "pic": pics}
    ).to_csv(shop / "products.csv", index=False)
    _clicks(shop / "clicks.csv", ["S0"])
    # In place, so the catalogue holds the user's symlink as it is.
    assert (
        _import(tmp_path, shop / "products.csv", shop / "images", shop, "--impressions", shop / "clicks.csv")
        == 0
    )
    assert main(["validate", str(shop)]) == 0
    q = read_quarantine(shop)
    reasons = dict(q.loc[q["file"] == PRODUCTS_FILE, ["row", "reason"]].values.tolist())
    assert reasons == {
        1: "image too small (1x1; at least 8 px a side)",
        2: "image too small (5x5; at least 8 px a side)",
        3: "image too small (5x5; at least 8 px a side)",
        4: "missing image_path",
        5: "image path is absolute (it must be relative to the catalogue folder)",
        6: "image is a symlink to outside the catalogue root",
    }


def test_a_changed_catalogue_is_not_read_with_its_old_quarantine(tmp_path, ray_session, capsys):
    """The quarantine names rows by number: it must never be applied to another version of the tables."""
    out = tmp_path / "shop"
    synth = ["synth", "--out", str(out), "--products", "12", "--days", "2", "--sessions", "5",
             f"workspace={tmp_path}", "data.synth.shard_size=12", "data.synth.image_size=32"]  # fmt: skip
    small = ["data.features.cnn_input=32", "data.features.grid=1", f"workspace={tmp_path}"]
    assert main(synth) == 0
    (out / read_products(out).loc[0, "image_path"]).write_bytes(b"")  # one quarantined product
    assert main(["validate", str(out)]) == 0
    # Re-synthesising into the folder takes the old validation away with the old tables ...
    assert main([*synth, "--seed", "3"]) == 0
    assert main(["features", str(out), *small]) == 2
    assert (
        f"not validated yet (no {QUARANTINE_FILE}); run `ace-ray validate {out}`" in capsys.readouterr().err
    )
    # ... and a table changed by anything else after `validate` is refused, naming it.
    assert main(["validate", str(out)]) == 0
    read_products(out).iloc[::-1].to_parquet(out / PRODUCTS_FILE)  # same rows, other row numbers
    assert main(["features", str(out), *small]) == 2
    err = capsys.readouterr().err
    assert f"{out / PRODUCTS_FILE}: changed since `ace-ray validate` wrote {QUARANTINE_FILE}" in err
    assert f"run `ace-ray validate {out}` again" in err


def test_hide_in_title_takes_an_attribute_out_of_every_title(tmp_path, ray_session, capsys):
    shop = _shop(tmp_path, n=3)
    table = pd.read_csv(shop / "products.csv")
    table["name"] = ["Women Navy Blue heels", "NAVY BLUE mug navy", "Blueberry mug"]
    table["colour"] = ["Navy Blue", "navy blue", "Blue"]
    table.to_csv(shop / "products.csv", index=False)
    out = tmp_path / "out"
    assert _import(tmp_path, shop / "products.csv", shop / "images", out, "--attr-cols", "colour",
                   "--hide-in-title", "colour") == 0  # fmt: skip
    assert read_products(out)["title"].tolist() == ["Women heels", "mug navy", "Blueberry mug"]
    assert _import(tmp_path, shop / "products.csv", shop / "images", tmp_path / "out2", "--attr-cols", "colour",
                   "--hide-in-title", "brand") == 2  # fmt: skip
    assert "data.synth.hide_in_title: no attribute column(s) brand" in capsys.readouterr().err


def test_category_path_column_is_kept_and_a_missing_path_is_the_category(tmp_path, ray_session, capsys):
    shop = _shop(tmp_path, n=3)
    table = pd.read_csv(shop / "products.csv")
    table["path"] = ["kitchen/drinkware/mug", "", "garden/mug"]
    table.to_csv(shop / "products.csv", index=False)
    out = tmp_path / "out"
    assert _import(tmp_path, shop / "products.csv", shop / "images", out, "--category-path-col", "path",
                   "--impressions", shop / "clicks.csv") == 0, capsys.readouterr().err  # fmt: skip
    products = read_products(out)
    assert products["category_path"].tolist() == ["kitchen/drinkware/mug", "mug", "garden/mug"]
    assert main(["validate", str(out), "--strict"]) == 0
    assert _import(tmp_path, shop / "products.csv", shop / "images", tmp_path / "out2",
                   "--category-path-col", "aisle") == 2  # fmt: skip
    assert "no column(s) aisle" in capsys.readouterr().err
