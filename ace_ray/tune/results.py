"""A sweep's results: ``trials.csv``, ``best.yaml``, ``report.md`` with the plots a person wants (the metric
against the partition number, as the paper's Fig. 5; a gamma x partitions heat map; every trial's curve
with the early stops marked), the MLflow child runs closed with whether they were stopped early, and the
best configuration's one evaluation on the test days."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ace_ray import tracking
from ace_ray.config import Workload, dump_config, with_overrides
from ace_ray.eval import report
from ace_ray.tune.space import Space, _fmt

PARTITIONS, GAMMA = "data.batches.partitions", "finetune.gamma"
_UNWIND_S = 10.0  # how long a stopped trial's process may take to close its own MLflow run


def trials_table(grid, space: Space) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """One row per trial (its values, last and best metric, steps, whether stopped early) and each trial's
    curve (step, metric)."""
    rows, curves = [], {}
    for result in grid:
        trial_id = Path(result.path).name.split("_")[-2] if result.path else ""
        hist = result.metrics_dataframe
        last = result.metrics or {}
        trial_id = last.get("trial_id", trial_id)
        curve = (hist[["step", space.metric]].dropna() if hist is not None and space.metric in hist
                 else pd.DataFrame(columns=["step", space.metric]))  # fmt: skip
        curves[trial_id] = curve
        steps, total = last.get("step", 0), last.get("total_steps", 0)
        rows.append({"trial_id": trial_id, **{k: result.config.get(k) for k in space.params},
                     space.metric: last.get(space.metric), f"best_{space.metric}": (curve[space.metric].max()
                     if space.mode == "max" else curve[space.metric].min()) if len(curve) else None,
                     "steps": steps, "total_steps": total, "stopped_early": bool(total and steps < total),
                     "error": str(result.error).splitlines()[0][:200] if result.error else ""})  # fmt: skip
    return pd.DataFrame(rows), curves


def _close_child_runs(base: Workload, table: pd.DataFrame, parent_run_id: str) -> None:
    """Mark each trial's MLflow run: stopped early or not (and at which step); end the runs ASHA cut off."""
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking.tracking_uri(base))
    stopped = []
    for row in table.itertuples():
        run_id = tracking.find_run(base, "tune_trial_id", row.trial_id)
        if run_id is None:
            continue
        client.set_tag(run_id, "mlflow.parentRunId", parent_run_id)
        client.set_tag(run_id, "stopped_early", str(row.stopped_early).lower())
        client.set_tag(run_id, "stopped_at_step", str(row.steps))
        if row.stopped_early:
            stopped.append(run_id)
        elif client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "FAILED")
    # A trial the scheduler stopped closes its own run as its process unwinds (FAILED: it ended on an
    # exception), at times after fit() has returned, and that would overwrite a KILLED written before it. So
    # wait for those writes (bounded: a process killed outright never makes one), then mark the runs KILLED.
    deadline = time.monotonic() + _UNWIND_S
    while stopped and time.monotonic() < deadline:
        if all(client.get_run(r).info.status != "RUNNING" for r in stopped):
            break
        time.sleep(0.2)
    for run_id in stopped:
        client.set_terminated(run_id, "KILLED")


def best_workload(base: Workload, config: dict) -> Workload:
    """The best trial's configuration as a complete workload to fine-tune with: trained on the train and
    validation days (``data.val_days=0``), the test days still held out."""
    return with_overrides(base, [*(f"{k}={_fmt(v)}" for k, v in config.items()), "data.val_days=0"])


def plots(
    space: Space, table: pd.DataFrame, curves: dict[str, pd.DataFrame], out: Path
) -> list[tuple[str, Path]]:
    """The figures of the report: (title, png)."""
    m = space.metric
    figs = []
    done = table.dropna(subset=[m])
    if PARTITIONS in space.params and len(done):
        fig = report.new_figure((6, 4))
        ax = fig.add_subplot(111)
        ax.scatter(done[PARTITIONS], done[m], alpha=0.6, label="trial (last report)")
        best = done.groupby(PARTITIONS)[m].agg("max" if space.mode == "max" else "min")
        ax.plot(best.index, best.to_numpy(), "o-", label="best per partition number")
        ax.set_xscale("log")
        ax.set(
            xlabel="partition number P",
            ylabel=m,
            title="Validation metric against the partition number (Fig. 5)",
        )
        ax.legend()
        figs.append(
            (
                "Metric against the partition number (the paper's Fig. 5)",
                report.save_figure(fig, out / "fig5_partitions.png"),
            )
        )
    if {PARTITIONS, GAMMA} <= set(space.params) and len(done):
        pivot = done.pivot_table(index=GAMMA, columns=PARTITIONS, values=m, aggfunc="mean")
        fig = report.new_figure((6, 4))
        ax = fig.add_subplot(111)
        im = ax.imshow(pivot.to_numpy(dtype=float), cmap="viridis", aspect="auto", origin="lower")
        ax.set_xticks(range(pivot.shape[1]), [_fmt(v) for v in pivot.columns])
        ax.set_yticks(range(pivot.shape[0]), [f"{v:g}" for v in pivot.index])
        for (i, j), v in np.ndenumerate(pivot.to_numpy(dtype=float)):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="w", fontsize=8)
        ax.set(xlabel="partition number P", ylabel="gamma", title=f"{m} (mean over trials)")
        fig.colorbar(im, ax=ax)
        figs.append(
            ("gamma x partition number", report.save_figure(fig, out / "heatmap_gamma_partitions.png"))
        )
    fig = report.new_figure((7, 4))
    ax = fig.add_subplot(111)
    for row in table.itertuples():
        c = curves.get(row.trial_id)
        if c is None or not len(c):
            continue
        line = ax.plot(c["step"], c[m], "-", alpha=0.8, label=row.trial_id)[0]
        if row.stopped_early:
            ax.plot(c["step"].iloc[-1], c[m].iloc[-1], "x", color=line.get_color(), markersize=9)
    ax.set(xlabel="optimiser step", ylabel=m, title="Every trial's validation curve (x: stopped early)")
    if len(table) <= 12:
        ax.legend(fontsize=7)
    figs.append(("Every trial's curve", report.save_figure(fig, out / "curves.png")))
    return figs


def write(
    grid, space: Space, base: Workload, path: Path, parent_run_id: str
) -> tuple[dict, pd.DataFrame, dict]:
    """trials.csv and best.yaml in ``path``; child runs closed; (the summary, the trials table, each trial's
    curve) for ``write_report``, which comes after the final test."""
    table, curves = trials_table(grid, space)
    table.to_csv(path / "trials.csv", index=False)
    _close_child_runs(base, table, parent_run_id)
    best = grid.get_best_result(metric=space.metric, mode=space.mode, scope="last")
    config = {k: best.config[k] for k in space.params}
    (path / "best.yaml").write_text(
        f"# Best of sweep {path.name}: {space.metric} {best.metrics[space.metric]:.4f} on the validation days.\n"
        "# Trains on the train and validation days: `ace-ray finetune --workload best.yaml`.\n"
        + dump_config(best_workload(base, config))
    )
    summary = {"trials": len(table), "stopped_early": int(table["stopped_early"].sum()),
               "best_value": float(best.metrics[space.metric]), "best_config": config,
               "best_trial": best.metrics.get("trial_id", "")}  # fmt: skip
    final = path / "final.json"
    if final.is_file():
        summary["final"] = json.loads(final.read_text())
    return summary, table, curves


def write_report(space: Space, base: Workload, path: Path, summary: dict, table: pd.DataFrame,
                 curves: dict[str, pd.DataFrame]) -> Path:  # fmt: skip
    """report.md: the best configuration, the test-day evaluation when done, the trials and the plots."""
    figs = plots(space, table, curves, path)
    m = space.metric
    shown = table.sort_values(m, ascending=space.mode == "min", na_position="last")
    cols = [c for c in shown.columns if c not in ("trial_id", "error")]
    sections = [("Sweep", f"Metric `{m}` ({space.mode}) on the last {base.data.val_days} training day(s) held out "
                 f"for validation; the test days ({base.data.test_days}) were read by no trial. "
                 f"{summary['trials']} trials, {summary['stopped_early']} stopped early ({space.scheduler}); "
                 f"{space.search} search.\n\nBest: " + ", ".join(f"`{k}={_fmt(v)}`" for k, v in summary["best_config"].items())
                 + f" ({m} {summary['best_value']:.4f}); `best.yaml` trains it on train + validation days.")]  # fmt: skip
    if "final" in summary:
        f = summary["final"]
        rows = [{"method": k, **v} for k, v in f["results"].items()]
        sections.append(("The best configuration on the test days (read once)",
                         f"Fine-tuned on the train + validation days (MLflow run {f['run_id']}), evaluated on the "
                         f"{base.data.test_days} test day(s):\n\n"
                         + report.metrics_table(rows, [c for c in ("gauc", "recall@10", "recall@50", "recall@100", "cold_recall@100", "mrr")
                                                       if any(c in r for r in rows)])))  # fmt: skip
    sections.append(("Trials", report.metrics_table(shown.to_dict("records"), cols, name_key="trial_id")))
    for title, png in figs:
        sections.append((title, report.figure_link(png, path / "report.md", title)))
    return report.write_report(path / "report.md", f"Sweep {path.name}", sections)


def final_test(base: Workload, path: Path, summary: dict, compare: list[str] = ()) -> dict:
    """Fine-tune the best configuration on train + validation days and evaluate it once on the test days
    against the baselines, and against each ``compare`` preset trained with the same settings (a text-only
    one from ``model.init``, as in its paper); saved in ``final.json`` (a resumed sweep does not read the test
    days again)."""
    from ace_ray.data import feature_store as fs
    from ace_ray.eval.evaluate import run_evaluation
    from ace_ray.model.presets import preset_overrides
    from ace_ray.train.finetune import run_finetune

    w = best_workload(base, summary["best_config"])
    res = run_finetune(w)
    out = path / "test_evaluation"
    ev = run_evaluation(res["model_dir"], w.path(w.data.root), fs.for_workload(w), w.data.test_days, w.eval, out,
                        name=w.finetune.preset)  # fmt: skip
    results = {k: v for k, v in ev.items() if not k.startswith("_")}
    for name in compare:
        wp = with_overrides(w, [*preset_overrides(name), f"finetune.preset={name}"])
        if not (wp.model.patches or wp.model.pixels):
            wp = with_overrides(wp, ["finetune.init_from=null"])
        other = run_finetune(wp)["model_dir"]
        results[name] = run_evaluation(other, wp.path(wp.data.root), fs.for_workload(wp), wp.data.test_days,
                                       dataclasses.replace(wp.eval, baselines=[]), out / name, name=name)[name]  # fmt: skip
    final = {"run_id": res["run_id"], "model_dir": res["model_dir"], "results": results,
             "metrics": {f"{name}/{k.replace('@', '_at_')}": v for name in (w.finetune.preset, *compare)
                         for k, v in results[name].items() if isinstance(v, float)}}  # fmt: skip
    (path / "final.json").write_text(json.dumps(final, indent=2, default=float))
    return final
