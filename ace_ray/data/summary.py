"""What a catalogue holds for training: the train/test day split, positives, query skew, position bias."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ace_ray.config import ConfigError
from ace_ray.data.validate import load_clean

SUMMARY_FILE = "summary.md"


def split_days(impressions: pd.DataFrame, test_days: int) -> tuple[list, list]:
    """The last ``test_days`` distinct days are test days; the rest are train days."""
    days = sorted(pd.to_datetime(impressions["day"]).dt.date.unique())
    if test_days < 0 or test_days >= len(days):
        # A ConfigError, so the command prints one line naming the key (a one-day click log is common).
        raise ConfigError(
            f"data.test_days={test_days} leaves no train days (the click log has {len(days)} usable day(s)); "
            "set data.test_days below that"
        )
    return days[: len(days) - test_days], days[len(days) - test_days :]


def summarize(root: str | Path, test_days: int) -> dict:
    """Figures about a validated catalogue, also written as Markdown to ``summary.md``."""
    root = Path(root)
    products, imp = load_clean(root)
    train, test = split_days(imp, test_days)
    day = pd.to_datetime(imp["day"]).dt.date
    is_train = day.isin(train)
    clicks = imp[imp["clicked"].astype(bool)]
    sessions = imp.drop_duplicates("session_id")
    q_counts = sessions["query"].value_counts()
    top = max(1, len(q_counts) // 100)
    ctr = imp.groupby("position")["clicked"].mean()
    clicked_train = set(clicks.loc[is_train[clicks.index], "product_id"])
    fig = {
        "products": len(products),
        "categories": int(products["category"].nunique()),
        "train_days": f"{train[0]} .. {train[-1]} ({len(train)})",
        "test_days": f"{test[0]} .. {test[-1]} ({len(test)})",
        "train_positives": int(is_train[clicks.index].sum()),
        "test_positives": int((~is_train[clicks.index]).sum()),
        "distinct_queries": len(q_counts),
        "top_1pct_query_share": round(float(q_counts.iloc[:top].sum() / q_counts.sum()), 3),
        "cold_products": int((~products["product_id"].isin(clicked_train)).sum()),
        "ctr_first_position": round(float(ctr.iloc[0]), 3),
        "ctr_last_position": round(float(ctr.iloc[-1]), 3),
    }
    lines = ["# Catalogue summary", "", f"`{root}`", "", "| figure | value |", "|---|---|"]
    lines += [f"| {k.replace('_', ' ')} | {v} |" for k, v in fig.items()]
    lines += ["", "## Most frequent queries", "", "| query | sessions |", "|---|---|"]
    lines += [f"| {q} | {n} |" for q, n in q_counts.head(10).items()]
    lines += ["", "## Click-through rate by position", "", "| position | ctr |", "|---|---|"]
    lines += [f"| {p} | {c:.3f} |" for p, c in ctr.items()]
    (root / SUMMARY_FILE).write_text("\n".join(lines) + "\n")
    return fig


def format_summary(fig: dict) -> str:
    width = max(len(k) for k in fig)
    return "\n".join(f"  {k.replace('_', ' '):<{width}}  {v}" for k, v in fig.items())
