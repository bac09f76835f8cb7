"""Each trained row against a reference row (the text-only preset), seed for seed: is its lead larger than
the seeds' spread? Issue 16's targets ask exactly that, and a reader of two "mean ± std" columns has to work
it out by hand.

Only the seeds both rows have are compared, so an unfinished report compares like with like. The spread is
the larger of the two rows' standard deviations over those seeds (ddof=1); with one seed there is none.
Pure pandas: no Ray, no MLflow.
"""

from __future__ import annotations

import math

import pandas as pd

from ace_ray.eval import report

METRICS = ("recall@100", "gauc", "cold_recall@100", "cold_gauc")


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


def reading(c: dict) -> str:
    """One comparison in words: the difference, the ratio, seeds ahead, and where it lies against the spread."""
    if not c["seeds"]:
        return report.MISSING
    head = (
        f"{c['difference']:+.4f} ({c['ratio']:.2f}x), ahead on {c['seeds_ahead']} of {len(c['seeds'])} seeds"
    )
    if math.isnan(c["spread"]):
        return f"{head}; one seed, no spread"
    side = "ahead" if c["difference"] > 0 else "behind" if c["difference"] < 0 else "level"
    if abs(c["difference"]) > c["spread"]:
        return f"{head}; **{side} by more than the spread** ({c['spread']:.4f})"
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
