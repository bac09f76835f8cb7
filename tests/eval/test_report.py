"""Reports: Markdown tables, seed summaries, PNG figures and the report file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib import image as mpimg

from ace_ray.eval.report import (
    DPI,
    centroid_gap,
    ema,
    figure_link,
    metrics_table,
    pca_2d,
    plot_curves,
    plot_embedding_map,
    seed_table,
    summarise_seeds,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, size_in: tuple[float, float]) -> None:
    """A real PNG, readable by matplotlib, of the figure size at the module's dpi (give or take)."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    img = mpimg.imread(path)
    h, w = img.shape[:2]
    assert abs(w - size_in[0] * DPI) <= 4 and abs(h - size_in[1] * DPI) <= 4
    assert img.std() > 0  # something was drawn


# ------------------------------------------------------------------------------------------------ tables


def test_metrics_table_header_rows_and_formats():
    rows = [
        {"method": "bm25", "recall@100": 0.51234567, "ndcg@10": 0.2, "queries": 500},
        {"method": "ace|bert", "recall@100": 0.7, "ndcg@10": float("nan")},
    ]
    lines = metrics_table(rows, ["recall@100", "ndcg@10", "queries"], digits=3).splitlines()
    assert lines[0] == "| method | recall@100 | ndcg@10 | queries |"
    assert lines[1] == "| --- | ---: | ---: | ---: |"
    assert lines[2] == "| bm25 | 0.512 | 0.200 | 500 |"
    assert lines[3] == "| ace\\|bert | 0.700 | – | – |"
    assert len(lines) == 4


def test_metrics_table_name_key_and_default_digits():
    table = metrics_table([{"model": "x", "mrr": 1 / 3}], ["mrr"], name_key="model")
    assert table.splitlines()[0] == "| model | mrr |"
    assert table.splitlines()[2] == "| x | 0.3333 |"


@pytest.fixture
def seeds() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "method": ["ace", "ace", "ace", "no-adv", "no-adv", "bm25"],
            "seed": [0, 1, 2, 0, 1, 0],
            "recall": [0.50, 0.60, 0.70, 0.40, 0.44, 0.30],
            "loss": [1.0, 2.0, 4.0, 0.5, 0.7, 3.0],
        }
    )


def test_summarise_seeds_matches_numpy(seeds):
    out = summarise_seeds(seeds, ["method"], ["recall", "loss"])
    assert list(out.columns) == ["method", "recall_mean", "recall_std", "loss_mean", "loss_std", "n"]
    assert list(out["method"]) == ["ace", "no-adv", "bm25"]
    ace = out.set_index("method").loc["ace"]
    assert ace["recall_mean"] == pytest.approx(np.mean([0.5, 0.6, 0.7]))
    assert ace["recall_std"] == pytest.approx(np.std([0.5, 0.6, 0.7], ddof=1))
    assert ace["loss_std"] == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1))
    assert ace["n"] == 3
    single = out.set_index("method").loc["bm25"]
    assert single["recall_std"] == 0.0 and single["loss_std"] == 0.0 and single["n"] == 1
    assert single["recall_mean"] == pytest.approx(0.3)


def test_a_metric_missing_from_some_seeds_has_no_mean(seeds):
    # Runs recorded before a metric existed, resumed beside new ones: no mean over fewer seeds than n.
    frame = seeds.assign(new=[np.nan, 0.2, 0.4, 0.1, 0.3, np.nan])
    out = summarise_seeds(frame, ["method"], ["new"]).set_index("method")
    assert np.isnan(out.loc["ace", "new_mean"]) and np.isnan(out.loc["bm25", "new_mean"])
    assert out.loc["no-adv", "new_mean"] == pytest.approx(0.2) and out.loc["ace", "n"] == 3
    assert seed_table(out.reset_index(), ["method"], ["new"]).splitlines()[2] == "| ace | – | 3 |"


def test_summarise_seeds_several_group_keys_and_no_group(seeds):
    frame = seeds.assign(split="test")
    out = summarise_seeds(frame, ["method", "split"], ["recall"])
    assert list(out.columns[:2]) == ["method", "split"] and len(out) == 3
    everything = summarise_seeds(seeds, [], ["recall"])
    assert len(everything) == 1 and everything["n"].iloc[0] == 6
    assert everything["recall_mean"].iloc[0] == pytest.approx(seeds["recall"].mean())


def test_seed_table_mean_std_and_bold_best(seeds):
    summary = summarise_seeds(seeds, ["method"], ["recall", "loss"])
    lines = seed_table(
        summary, ["method"], ["recall", "loss"], digits=2, lower_is_better=["loss"]
    ).splitlines()
    assert lines[0] == "| method | recall | loss | n |"
    assert lines[1] == "| --- | ---: | ---: | ---: |"
    ace, no_adv, bm25 = lines[2:]
    assert ace == "| ace | **0.60 ± 0.10** | 2.33 ± 1.53 | 3 |"
    assert no_adv.startswith("| no-adv | 0.42 ± 0.03 | **0.60 ± 0.14** |")
    assert bm25 == "| bm25 | 0.30 ± 0.00 | 3.00 ± 0.00 | 1 |"


def test_seed_table_higher_is_better_by_default_and_ties(seeds):
    summary = summarise_seeds(seeds, ["method"], ["loss"])
    assert "**3.0000 ± 0.0000**" in seed_table(summary, ["method"], ["loss"])
    tied = pd.DataFrame({"m": ["a", "b"], "r_mean": [0.5, 0.5], "r_std": [0.0, 0.1], "n": [1, 2]})
    assert seed_table(tied, ["m"], ["r"]).count("**") == 4
    alone = tied.iloc[:1]
    assert "**" not in seed_table(alone, ["m"], ["r"])


# ----------------------------------------------------------------------------------------------- figures


def test_ema():
    y = np.array([1.0, 3.0, 3.0])
    assert np.allclose(ema(y, 0.5), [1.0, 2.0, 2.5])
    assert np.allclose(ema(y, 1.0), y)
    with pytest.raises(ValueError):
        ema(y, 0.0)


def test_plot_curves_png_with_an_empty_curve(tmp_path):
    steps = np.arange(50)
    curves = {
        "with adversarial": pd.DataFrame({"step": steps, "loss": np.exp(-steps / 20) + 0.05 * np.sin(steps)}),
        "without": pd.DataFrame({"step": steps[::-1], "loss": np.exp(-steps / 30)}),  # unsorted on purpose
        "crashed run": pd.DataFrame({"step": [], "loss": []}),
        "wrong columns": pd.DataFrame({"epoch": [1, 2], "acc": [0.1, 0.2]}),
    }
    out = plot_curves(curves, tmp_path / "figs" / "loss.png", title="pretraining", smooth=0.2)
    assert out == tmp_path / "figs" / "loss.png"
    assert_png(out, (7.0, 4.5))
    raw = plot_curves(curves, tmp_path / "raw.png", logy=True)
    assert_png(raw, (7.0, 4.5))


def test_plot_curves_all_empty(tmp_path):
    assert_png(plot_curves({"nothing": pd.DataFrame()}, tmp_path / "e.png"), (7.0, 4.5))
    assert_png(plot_curves({}, tmp_path / "none.png"), (7.0, 4.5))


def test_centroid_gap_by_hand():
    q = np.array([[0.0, 0.0], [2.0, 0.0]])  # mean (1, 0)
    p = np.array([[4.0, 4.0], [4.0, 4.0], [4.0, 4.0]])  # mean (4, 4)
    assert centroid_gap(q, p) == pytest.approx(5.0)
    x = np.random.default_rng(0).normal(size=(20, 8))
    assert centroid_gap(x, x) == 0.0
    assert centroid_gap(x, x[::-1]) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        centroid_gap(x, x[:, :4])


def test_pca_2d_is_the_top_principal_axes():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 5)) * np.array([5.0, 2.0, 0.1, 0.1, 0.1])
    coords, ratio = pca_2d(x)
    assert coords.shape == (200, 2) and ratio[0] > ratio[1] > 0.05 and ratio.sum() <= 1.0
    # Variance of the projections equals the top two eigenvalues of the covariance.
    eig = np.sort(np.linalg.eigvalsh(np.cov(x.T)))[::-1][:2]
    assert np.allclose(coords.var(axis=0, ddof=1), eig)


def _clusters(rng, n, d, cats):
    centres = rng.normal(scale=3.0, size=(len(cats), d))
    labels = rng.choice(len(cats), size=n)
    return centres[labels] + rng.normal(size=(n, d)), np.array(cats, dtype=object)[labels]


def test_embedding_map_many_categories(tmp_path):
    rng = np.random.default_rng(0)
    cats = [f"cat{i:02d}" for i in range(14)]  # more than 10: the rest go grey
    q, q_cat = _clusters(rng, 300, 16, cats)
    p, p_cat = _clusters(rng, 900, 16, cats)
    p_cat[:5] = None  # products without a category are "other"
    out = plot_embedding_map(
        q + 1.0, p, q_cat, p_cat, tmp_path / "map.png", title="fine-tuned", max_points=250, seed=3
    )
    assert_png(out, (9.0, 6.0))
    again = plot_embedding_map(
        q + 1.0, p, q_cat, p_cat, tmp_path / "map2.png", title="fine-tuned", max_points=250, seed=3
    )
    assert again.read_bytes() == out.read_bytes()  # deterministic subsample and projection


def test_embedding_map_tsne_on_tiny_inputs(tmp_path):
    rng = np.random.default_rng(1)
    q, q_cat = _clusters(rng, 12, 6, ["a", "b", "c"])
    p, p_cat = _clusters(rng, 18, 6, ["a", "b", "c"])
    assert_png(plot_embedding_map(q, p, q_cat, p_cat, tmp_path / "tsne.png", method="tsne"), (9.0, 6.0))
    with pytest.raises(ValueError):
        plot_embedding_map(q, p, q_cat, p_cat, tmp_path / "x.png", method="umap")
    with pytest.raises(ValueError):
        plot_embedding_map(q, p, q_cat[:3], p_cat, tmp_path / "x.png")


# ------------------------------------------------------------------------------------------------ report


def test_write_report_sections_and_relative_image_links(tmp_path):
    report = tmp_path / "reports" / "run1" / "report.md"
    png = plot_curves(
        {"a": pd.DataFrame({"step": [0, 1], "loss": [1.0, 0.5]})},
        tmp_path / "reports" / "run1" / "img" / "l.png",
    )
    link = figure_link(png, report, alt="loss")
    assert link == "![loss](img/l.png)"
    table = metrics_table([{"method": "ace", "r": 0.5}], ["r"])
    out = write_report(report, "Run 1", [("Metrics", table + "\n"), ("Loss", link)])
    assert out == report
    text = report.read_text(encoding="utf-8")
    assert text == f"# Run 1\n\n## Metrics\n\n{table}\n\n## Loss\n\n{link}\n"
    assert (report.parent / "img" / "l.png").exists()
    assert figure_link(tmp_path / "elsewhere.png", report) == "![](../../elsewhere.png)"
