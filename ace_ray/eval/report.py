"""Evaluation results people would rather look at: Markdown tables, seed summaries, loss curves,
embedding maps and the report file that ties them together.

Everything here is pure (no Ray, no MLflow). Figures are drawn on a ``matplotlib.figure.Figure`` with an
Agg canvas, so the global pyplot backend and its figure registry are never touched.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

MISSING = "–"  # en dash: what a table shows for a missing or NaN value
DPI = 120
_GREY = "#b0b0b0"


# ----------------------------------------------------------------------------------------------- tables


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # arrays, lists: not a scalar, so not "missing"
        return False


def _fmt(value: Any, digits: int) -> str:
    if _is_missing(value):
        return MISSING
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return f"{float(value):.{digits}f}"
    return _cell(str(value))


def _cell(text: str) -> str:
    # A bare "|" would split the cell; newlines would end the row.
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric_from: int = 1) -> str:
    """Markdown table; columns from ``numeric_from`` on are right-aligned (numbers line up)."""
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def metrics_table(
    rows: list[dict[str, Any]], columns: list[str], name_key: str = "method", digits: int = 4
) -> str:
    """A Markdown table: one row per dict, ``name_key`` first, then ``columns`` in order.

    Floats get ``digits`` decimals, ints stay ints, missing or NaN values show as "–".
    """
    body = [[_fmt(r.get(name_key), digits)] + [_fmt(r.get(c), digits) for c in columns] for r in rows]
    return _md_table([name_key, *columns], body)


def summarise_seeds(results: pd.DataFrame, group: list[str], metrics: list[str]) -> pd.DataFrame:
    """Per group: ``<metric>_mean``, ``<metric>_std`` (ddof=1; 0 for a single seed) and ``n`` (rows).

    ``results`` has one row per (group..., seed). Groups keep their order of first appearance.
    """
    missing = [c for c in [*group, *metrics] if c not in results.columns]
    if missing:
        raise KeyError(f"columns not in results: {missing}")
    frame = results.assign(_all=0) if not group else results
    keys = group or ["_all"]
    grouped = frame.groupby(keys, sort=False, dropna=False)
    means = grouped[metrics].mean()
    stds = grouped[metrics].std(ddof=1)
    counts = grouped[metrics].count()
    # With one value there is no spread to estimate; report 0 rather than NaN.
    stds = stds.mask(counts == 1, 0.0)
    # A metric some of a group's rows lack (runs recorded before it was measured, read back by --resume)
    # has no mean over the group: NaN, not a mean over fewer seeds than ``n`` says.
    size = grouped.size()
    means, stds = (f.mask(counts.lt(size, axis=0)) for f in (means, stds))
    out = pd.DataFrame(index=means.index)
    for m in metrics:
        out[f"{m}_mean"] = means[m]
        out[f"{m}_std"] = stds[m]
    out["n"] = size.astype(int)
    out = out.reset_index()
    return out.drop(columns="_all") if not group else out


def seed_table(
    summary: pd.DataFrame,
    group: list[str],
    metrics: list[str],
    digits: int = 4,
    lower_is_better: Iterable[str] = (),
) -> str:
    """A Markdown table of "mean ± std" per metric (and n) from ``summarise_seeds``' output.

    The best mean of each metric column is bold (highest, or lowest for metrics in ``lower_is_better``;
    ties are all bold). Nothing is bold when there is only one row to compare.
    """
    lower = set(lower_is_better)
    best: dict[str, float] = {}
    for m in metrics:
        means = pd.to_numeric(summary[f"{m}_mean"], errors="coerce").dropna()
        if len(summary) > 1 and len(means):
            best[m] = float(means.min() if m in lower else means.max())
    rows = []
    for _, r in summary.iterrows():
        row = [_fmt(r[g], digits) for g in group]
        for m in metrics:
            mean, std = r[f"{m}_mean"], r[f"{m}_std"]
            if _is_missing(mean):
                row.append(MISSING)
                continue
            text = f"{_fmt(float(mean), digits)} ± {_fmt(std if _is_missing(std) else float(std), digits)}"
            if m in best and math.isclose(float(mean), best[m], rel_tol=1e-12, abs_tol=1e-15):
                text = f"**{text}**"
            row.append(text)
        row.append(_fmt(r["n"], digits) if "n" in summary.columns else MISSING)
        rows.append(row)
    return _md_table([*group, *metrics, "n"], rows, numeric_from=len(group))


# ---------------------------------------------------------------------------------------------- figures


def new_figure(size: tuple[float, float]) -> Figure:
    """A figure of ``size`` inches on its own Agg canvas (pyplot's global state untouched)."""
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """``fig`` as a PNG at ``path`` (its folder made); the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, format="png")
    return out


def ema(values: Sequence[float] | np.ndarray, alpha: float) -> np.ndarray:
    """Exponential moving average ``s_t = alpha * y_t + (1 - alpha) * s_{t-1}``, ``s_0 = y_0``.

    ``alpha`` in (0, 1]: the weight of the newest point; 1 returns the input, smaller is smoother.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    return pd.Series(np.asarray(values, dtype=float)).ewm(alpha=alpha, adjust=False).mean().to_numpy()


def plot_curves(
    curves: Mapping[str, pd.DataFrame],
    path: str | os.PathLike[str],
    x: str = "step",
    y: str = "loss",
    title: str = "",
    smooth: float | None = None,
    logy: bool = False,
) -> Path:
    """Several named curves (each a frame with ``x`` and ``y`` columns) on one axes, saved as PNG.

    ``smooth`` is the EMA ``alpha`` (see ``ema``; e.g. 0.1): the smoothed curve is drawn solid with the
    raw one faintly behind it in the same colour; None draws the raw curve only. Curves with no usable
    points (empty, missing columns or all NaN) are skipped and named "(no data)" in the legend.
    """
    fig = new_figure((7.0, 4.5))
    ax = fig.add_subplot()
    # One explicit colour per curve so the faint raw line and its smoothed line match.
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key().get("color") or ["C0"]
    for i, (name, frame) in enumerate(curves.items()):
        points = _curve_points(frame, x, y)
        if points is None:
            ax.plot([], [], linestyle="none", marker="", label=f"{name} (no data)")
            continue
        xs, ys = points
        colour = cycle[i % len(cycle)]
        if smooth is None:
            ax.plot(xs, ys, color=colour, linewidth=1.4, label=name)
        else:
            ax.plot(xs, ys, color=colour, linewidth=0.8, alpha=0.25)
            ax.plot(xs, ema(ys, smooth), color=colour, linewidth=1.6, label=name)
    ax.set_xlabel(x)
    ax.set_ylabel(y if smooth is None else f"{y} (EMA α={smooth:g})")
    if logy and ax.has_data():
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(loc="best", fontsize="small")
    return save_figure(fig, path)


def _curve_points(frame: pd.DataFrame | None, x: str, y: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Sorted finite (x, y) points of a curve, or None when there are none."""
    if frame is None or len(frame) == 0 or x not in frame.columns or y not in frame.columns:
        return None
    pts = pd.DataFrame(
        {"x": pd.to_numeric(frame[x], errors="coerce"), "y": pd.to_numeric(frame[y], errors="coerce")}
    )
    pts = pts.replace([np.inf, -np.inf], np.nan).dropna().sort_values("x", kind="stable")
    if pts.empty:
        return None
    return pts["x"].to_numpy(float), pts["y"].to_numpy(float)


def centroid_gap(query_emb: np.ndarray, product_emb: np.ndarray) -> float:
    """Euclidean distance between the mean query and the mean product embedding.

    The "representation gap" between the two modalities that adversarial learning should shrink.
    """
    q = np.asarray(query_emb, dtype=np.float64)
    p = np.asarray(product_emb, dtype=np.float64)
    if q.ndim != 2 or p.ndim != 2 or q.shape[1] != p.shape[1]:
        raise ValueError(f"need two [n, d] arrays of the same d, got {q.shape} and {p.shape}")
    if len(q) == 0 or len(p) == 0:
        raise ValueError("centroid_gap needs at least one query and one product embedding")
    return float(np.linalg.norm(q.mean(axis=0) - p.mean(axis=0)))


def _subsample(n: int, max_points: int, rng: np.random.Generator) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    return np.sort(rng.choice(n, size=max_points, replace=False))


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``x`` projected on their top two principal axes (numpy SVD), and the explained-variance
    ratio of each. Signs are fixed (largest loading positive) so reruns draw the same picture."""
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(2, vt.shape[0])
    axes = vt[:k]
    signs = np.sign(axes[np.arange(k), np.abs(axes).argmax(axis=1)])
    axes = axes * np.where(signs == 0, 1.0, signs)[:, None]
    coords = centred @ axes.T
    var = s**2
    ratio = var[:k] / var.sum() if var.sum() > 0 else np.zeros(k)
    if k < 2:  # one sample or one dimension: pad so callers always get two columns
        coords = np.pad(coords, ((0, 0), (0, 2 - k)))
        ratio = np.pad(ratio, (0, 2 - k))
    return coords, ratio


def _tsne_2d(x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    n = len(x)
    if n < 3:  # t-SNE needs perplexity < n; too few points for it to mean anything anyway
        return pca_2d(x)[0]
    perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        np.asarray(x, dtype=np.float32)
    )


def _labels(values: Sequence[Any] | np.ndarray, n: int) -> np.ndarray:
    labels = np.array([None if _is_missing(v) else str(v) for v in np.asarray(values, dtype=object)])
    if len(labels) != n:
        raise ValueError(f"{len(labels)} categories for {n} embeddings")
    return labels


def plot_embedding_map(
    query_emb: np.ndarray,
    product_emb: np.ndarray,
    query_cat: Sequence[Any] | np.ndarray,
    product_cat: Sequence[Any] | np.ndarray,
    path: str | os.PathLike[str],
    title: str = "",
    max_points: int = 2000,
    seed: int = 0,
    method: str = "pca",
    top_k: int = 10,
) -> Path:
    """A 2-D map of query ("x") and product ("o") embeddings coloured by category, saved as PNG.

    Both sets share one projection (``method`` "pca", numpy SVD, or "tsne", sklearn) fitted on the
    deterministic subsample (at most ``max_points`` per side, drawn with ``seed``). The ``top_k`` most
    frequent categories over both sets get colours, the rest are grey "other". The title carries the
    ``centroid_gap`` of the full sets.
    """
    q = np.asarray(query_emb, dtype=np.float64)
    p = np.asarray(product_emb, dtype=np.float64)
    gap = centroid_gap(q, p)
    q_lab, p_lab = _labels(query_cat, len(q)), _labels(product_cat, len(p))
    if method not in ("pca", "tsne"):
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")

    n_q, n_p = len(q), len(p)
    rng = np.random.default_rng(seed)
    qi, pi = _subsample(len(q), max_points, rng), _subsample(len(p), max_points, rng)
    q, p, q_lab, p_lab = q[qi], p[pi], q_lab[qi], p_lab[pi]
    both = np.concatenate([q, p])
    if method == "pca":
        coords, ratio = pca_2d(both)
        xlabel, ylabel = f"PC1 ({ratio[0]:.0%})", f"PC2 ({ratio[1]:.0%})"
    else:
        coords = _tsne_2d(both, seed)
        xlabel, ylabel = "t-SNE 1", "t-SNE 2"
    q_xy, p_xy = coords[: len(q)], coords[len(q) :]

    # Ties broken by name so the colour of a category does not depend on input order.
    counts = Counter(lab for lab in np.concatenate([q_lab, p_lab]) if lab is not None)
    top = [lab for lab, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]]
    palette = _palette(len(top))
    colour_of = {lab: palette[i % len(palette)] for i, lab in enumerate(top)}

    fig = new_figure((9.0, 6.0))
    ax = fig.add_subplot()
    # "other" first so the coloured categories stay visible on top of it.
    for lab in [None, *top]:
        colour = _GREY if lab is None else colour_of[lab]
        p_sel = ~np.isin(p_lab, top) if lab is None else p_lab == lab
        q_sel = ~np.isin(q_lab, top) if lab is None else q_lab == lab
        ax.scatter(*p_xy[p_sel].T, s=14, marker="o", color=colour, alpha=0.45, linewidths=0)
        ax.scatter(*q_xy[q_sel].T, s=22, marker="x", color=colour, alpha=0.9, linewidths=1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title} — centroid gap {gap:.3f}" if title else f"centroid gap {gap:.3f}")
    ax.grid(True, alpha=0.2)

    cat_handles = [_swatch(colour_of[lab], lab) for lab in top]
    if (~np.isin(q_lab, top)).any() or (~np.isin(p_lab, top)).any():
        cat_handles.append(_swatch(_GREY, "other"))
    kind_handles = [
        Line2D([], [], linestyle="none", marker="x", color="k", label=f"query ({_shown(len(q), n_q)})"),
        Line2D(
            [],
            [],
            linestyle="none",
            marker="o",
            color="k",
            alpha=0.6,
            label=f"product ({_shown(len(p), n_p)})",
        ),
    ]
    fig.legend(handles=kind_handles, loc="outside right upper", fontsize="small")
    fig.legend(handles=cat_handles, loc="outside right lower", fontsize="small", title="category")
    return save_figure(fig, path)


def _palette(k: int) -> list[Any]:
    """``k`` distinct colours, none of them grey (grey means "other")."""
    if k <= 10:
        tab10 = matplotlib.colormaps["tab10"].colors
        return [c for i, c in enumerate(tab10) if i != 7] + ["#000000"]
    tab20 = matplotlib.colormaps["tab20"].colors
    return [c for i, c in enumerate(tab20) if i not in (14, 15)]


def _shown(shown: int, total: int) -> str:
    return str(total) if shown == total else f"{shown} of {total}"


def _swatch(colour: Any, label: str) -> Line2D:
    return Line2D([], [], linestyle="none", marker="s", markersize=8, color=colour, label=label)


# ----------------------------------------------------------------------------------------------- report


def figure_link(image: str | os.PathLike[str], report: str | os.PathLike[str], alt: str = "") -> str:
    """``![alt](relative/path.png)`` with the image path relative to the report's folder."""
    rel = os.path.relpath(Path(image).resolve(), Path(report).resolve().parent)
    return f"![{alt}]({Path(rel).as_posix()})"


def write_report(path: str | os.PathLike[str], title: str, sections: list[tuple[str, str]]) -> Path:
    """A Markdown file: ``# title``, then ``## heading`` and its body for each section."""
    parts = [f"# {title}\n"]
    parts += [f"\n## {heading}\n\n{body.strip(chr(10))}\n" for heading, body in sections]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(parts), encoding="utf-8")
    return out
