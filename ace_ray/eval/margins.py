"""Each trained row against a reference row (the text-only preset), seed for seed: is its lead larger than
the seeds' spread? Issue 16's targets ask exactly that, and a reader of two "mean ± std" columns has to work
it out by hand.

Only the seeds both rows have are compared, so an unfinished report compares like with like. The spread is
the larger of the two rows' standard deviations over those seeds (ddof=1); with one seed there is none.
The same readings are drawn (``plot_margins``): each row's seeds beside the reference's mean and spread.
Pure pandas and matplotlib: no Ray, no MLflow.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ace_ray.eval import report

METRICS = ("recall@100", "gauc", "cold_recall@100", "cold_gauc")
# A row's colour in the figure is its verdict: green ahead of the reference by more than the spread, red
# behind by more, blue within the spread, grey with one seed (no spread to compare with).
COLOURS = {"ahead": "#2ca02c", "behind": "#d62728", "within": "#1f77b4", "one seed": "#7f7f7f"}


def compare(results: pd.DataFrame, row: str, reference: str, metric: str) -> dict:
    """``row`` against ``reference`` on ``metric`` over the seeds both have in ``results`` (one line per
    method and seed): the seeds, both means, their difference and ratio, the spread, and on how many seeds
    ``row`` is ahead. NaN where there is no common seed or a value is missing."""
    a, b = (results.loc[results["method"] == m].set_index("seed")[metric].dropna() for m in (row, reference))
    seeds = sorted(set(a.index) & set(b.index))
    a, b = a.loc[seeds].astype(float), b.loc[seeds].astype(float)
    spread = max(a.std(ddof=1), b.std(ddof=1)) if len(seeds) > 1 else math.nan
    mean_a, mean_b = a.mean(), b.mean()  # NaN with no common seed
    return {
        "seeds": seeds,
        "mean": mean_a,
        "reference": mean_b,
        "difference": mean_a - mean_b,
        "ratio": mean_a / mean_b if mean_b else math.nan,
        "spread": spread,
        "seeds_ahead": int((a > b).sum()),
    }


def verdict(c: dict) -> str | None:
    """``compare``'s result in one word: "ahead" or "behind" by more than the spread, "within" it, "one seed"
    (no spread); None with no common seed."""
    if not c["seeds"]:
        return None
    if math.isnan(c["spread"]):
        return "one seed"
    if abs(c["difference"]) > c["spread"]:
        return "ahead" if c["difference"] > 0 else "behind"
    return "within"


def reading(c: dict) -> str:
    """One comparison in words: the difference, the ratio, seeds ahead, and where it lies against the spread."""
    v = verdict(c)
    if v is None:
        return report.MISSING
    head = (
        f"{c['difference']:+.4f} ({c['ratio']:.2f}x), ahead on {c['seeds_ahead']} of {len(c['seeds'])} seeds"
    )
    if v == "one seed":
        return f"{head}; one seed, no spread"
    if v != "within":
        return f"{head}; **{v} by more than the spread** ({c['spread']:.4f})"
    side = "ahead" if c["difference"] > 0 else "behind" if c["difference"] < 0 else "level"
    return f"{head}; {side} within the spread ({c['spread']:.4f})"


def margins_section(results: pd.DataFrame, rows: list[str], reference: str) -> str:
    """A Markdown table, one line per row of ``rows`` (other than ``reference``) that ``results`` has, one
    column per metric of ``METRICS`` that it has; "" when ``results`` lacks the reference."""
    methods = set(results["method"])
    if reference not in methods:
        return ""
    metrics = [m for m in METRICS if m in results.columns]
    lines = []
    for row in dict.fromkeys(r for r in rows if r in methods and r != reference):
        each = {m: compare(results, row, reference, m) for m in metrics}
        seeds = ", ".join(map(str, each[metrics[0]]["seeds"])) or report.MISSING
        lines.append({"method": row, "seeds": seeds, **{m: reading(c) for m, c in each.items()}})
    if not lines:
        return ""
    return (
        f"Each row's mean minus `{reference}`'s over the seeds both have, their ratio, on how many of those seeds "
        "the row is ahead, and whether the difference is larger than the spread (the larger of the two rows' "
        "standard deviations over those seeds).\n\n" + report.metrics_table(lines, ["seeds", *metrics])
    )


def plot_margins(
    results: pd.DataFrame, rows: list[str], reference: str, path: str | os.PathLike[str]
) -> Path | None:
    """The section as a figure, saved as PNG: a panel per metric of ``METRICS`` that ``results`` has; in each,
    the reference's mean (dashed) and spread (grey band, its std over its seeds) and, for every other row of
    ``rows``, its seeds (dots) and their mean (diamond) ± std, coloured by its ``verdict`` (``COLOURS``).
    None (nothing drawn) when ``results`` lacks the reference or every other row."""
    methods = set(results["method"])
    names = [r for r in dict.fromkeys(rows) if r in methods and r != reference]
    if reference not in methods or not names:
        return None
    metrics = [m for m in METRICS if m in results.columns]
    fig = report.new_figure((3.2 * len(metrics), 1.4 + 0.42 * (len(names) + 1)))
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        ref = results.loc[results["method"] == reference, metric].dropna().astype(float)
        mean, std = ref.mean(), ref.std(ddof=1) if len(ref) > 1 else 0.0
        ax.axvspan(mean - std, mean + std, color="#000000", alpha=0.08, linewidth=0)
        ax.axvline(mean, color="#000000", linestyle="--", linewidth=1.0)
        ax.scatter(ref, np.zeros(len(ref)), s=14, color="#000000", alpha=0.6, linewidths=0)
        for y, name in enumerate(names, start=1):
            seeds = results.loc[results["method"] == name, metric].dropna().astype(float)
            colour = COLOURS.get(verdict(compare(results, name, reference, metric)), "#7f7f7f")
            ax.scatter(seeds, np.full(len(seeds), y), s=14, color=colour, alpha=0.6, linewidths=0)
            if len(seeds):
                spread = seeds.std(ddof=1) if len(seeds) > 1 else 0.0
                ax.errorbar(seeds.mean(), y, xerr=spread, fmt="D", color=colour, markersize=5, capsize=3)
        ax.set_title(metric, fontsize="medium")
        ax.grid(True, axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(names) + 1), [reference, *names])
    axes[0].invert_yaxis()  # the reference on top, the rows in the report's order below it
    fig.suptitle(f"Each row's seeds against {reference}'s mean (dashed) and spread (band)", fontsize="medium")
    return report.save_figure(fig, path)
