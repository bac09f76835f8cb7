"""Rows against the text-only preset, seed for seed, checked against sums done by hand."""

from __future__ import annotations

import math

import matplotlib.colors
import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from ace_ray.eval.margins import COLOURS, compare, margins_section, plot_margins, reading


def _results() -> pd.DataFrame:
    rows = []
    for seed, (ace, twin, cold_ace, cold_twin) in enumerate([(0.66, 0.61, 0.54, 0.48), (0.65, 0.61, 0.50, 0.49),
                                                             (0.65, 0.61, 0.49, 0.49)]):  # fmt: skip
        rows.append({"method": "acebert", "seed": seed, "recall@100": ace, "cold_recall@100": cold_ace})
        rows.append({"method": "twinbert", "seed": seed, "recall@100": twin, "cold_recall@100": cold_twin})
    # A row with one seed done; a baseline run once.
    rows.append({"method": "cebert", "seed": 1, "recall@100": 0.60, "cold_recall@100": 0.47})
    rows.append({"method": "bm25", "seed": 0, "recall@100": 0.42, "cold_recall@100": 0.25})
    return pd.DataFrame(rows)


def test_compare_is_the_hand_sum_over_the_common_seeds():
    c = compare(_results(), "acebert", "twinbert", "recall@100")
    ace, twin = [0.66, 0.65, 0.65], [0.61, 0.61, 0.61]
    mean = sum(ace) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in ace) / 2)  # ddof=1; TwinBERT's is 0
    assert c["seeds"] == [0, 1, 2] and c["seeds_ahead"] == 3
    assert c["difference"] == pytest.approx(mean - 0.61) and c["ratio"] == pytest.approx(mean / 0.61)
    assert c["spread"] == pytest.approx(sd) and c["reference"] == pytest.approx(sum(twin) / 3)
    # Only seed 1 is common: compared there alone, and no spread.
    one = compare(_results(), "cebert", "twinbert", "recall@100")
    assert one["seeds"] == [1] and one["difference"] == pytest.approx(-0.01) and math.isnan(one["spread"])


def test_reading_says_whether_the_lead_is_larger_than_the_spread():
    r = _results()
    assert "**ahead by more than the spread**" in reading(compare(r, "acebert", "twinbert", "recall@100"))
    # 0.51 against 0.4867: +0.0233, within ACE-BERT's spread of 0.0265 (deviations 0.03, -0.01, -0.02).
    cold = reading(compare(r, "acebert", "twinbert", "cold_recall@100"))
    assert cold == "+0.0233 (1.05x), ahead on 2 of 3 seeds; ahead within the spread (0.0265)"
    assert reading(compare(r, "cebert", "twinbert", "recall@100")).endswith("one seed, no spread")
    assert reading(compare(r, "nothing", "twinbert", "recall@100")) == "–"
    same = pd.concat([r, r[r["method"] == "twinbert"].assign(method="copy")])
    assert reading(compare(same, "copy", "twinbert", "recall@100")).endswith(
        "level within the spread (0.0000)"
    )


def test_the_section_has_a_line_per_trained_row_and_none_without_the_reference():
    r = _results()
    text = margins_section(r, ["twinbert", "cebert", "acebert", "acebert"], "twinbert")
    lines = [x for x in text.splitlines() if x.startswith("| ")]
    assert lines[0] == "| method | seeds | recall@100 | cold_recall@100 |"  # only the metrics measured
    assert [x.split(" | ")[0] for x in lines[2:]] == ["| cebert", "| acebert"]  # once each, no twinbert
    assert "| 0, 1, 2 |" in lines[3] and "| 1 |" in lines[2]
    assert margins_section(r[r["method"] != "twinbert"], ["acebert"], "twinbert") == ""


def _pixels(png, colour: str) -> int:
    """How many pixels of ``png`` are ``colour`` (the markers and bars drawn in it, not blended)."""
    rgb = matplotlib.image.imread(png)[..., :3]
    return int((np.abs(rgb - np.array(matplotlib.colors.to_rgb(colour))).max(-1) < 0.02).sum())


def test_the_figure_colours_each_row_by_its_reading(tmp_path):
    r = _results()
    behind = [{"method": "text", "seed": s, "recall@100": 0.50 + 0.01 * s, "cold_recall@100": 0.40}
              for s in range(3)]  # fmt: skip
    both = pd.concat([r, pd.DataFrame(behind)], ignore_index=True)
    png = plot_margins(both, ["twinbert", "cebert", "acebert", "text"], "twinbert", tmp_path / "m.png")
    # acebert: ahead beyond the spread on Recall@100, within it on cold; cebert: one seed; text: behind.
    assert all(_pixels(png, COLOURS[v]) > 20 for v in ("ahead", "within", "one seed", "behind"))
    # Without the row that is behind, nothing is red; without the reference or other rows, nothing is drawn.
    png = plot_margins(r, ["twinbert", "acebert"], "twinbert", tmp_path / "m2.png")
    assert _pixels(png, COLOURS["ahead"]) > 20 and _pixels(png, COLOURS["behind"]) == 0
    assert plot_margins(r[r["method"] != "twinbert"], ["acebert"], "twinbert", tmp_path / "m3.png") is None
    assert plot_margins(r, ["twinbert"], "twinbert", tmp_path / "m4.png") is None
    assert not (tmp_path / "m3.png").exists() and not (tmp_path / "m4.png").exists()
