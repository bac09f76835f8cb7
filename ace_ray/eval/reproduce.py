"""``ace-ray reproduce``: the paper's tables on a catalogue, with several seeds, as one Markdown report.

Rows are presets, or a preset with overrides (``"acebert finetune.fusion=additive"``: an ablation row, labelled
as written). Rows that come to the same config (e.g. Table 1's CE-BERT and Table 4's "none") are
trained once per seed and shared between tables. Each distinct pretraining (image input x loss weighting)
is done once, with the first seed; the seeds vary the fine-tuning (its initialisation of the new layers,
batch plan and order, dropout), so the spread is the fine-tuning's. TwinBERT is text only and starts from
``model.init`` as in its paper. The baselines are evaluated once: they do not train.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import mlflow
import pandas as pd

from ace_ray import tracking
from ace_ray.config import ConfigError, Workload, with_overrides
from ace_ray.data import feature_store as fs
from ace_ray.data.features import build_features
from ace_ray.eval import margins, report, reuse
from ace_ray.eval.evaluate import SUMMARY, run_evaluation
from ace_ray.eval.ledger import Ledger
from ace_ray.model.presets import preset_overrides
from ace_ray.runtime import ensure_ray
from ace_ray.train.finetune import run_finetune
from ace_ray.train.pretrain import run_pretrain

_SLUG = re.compile(r"[^\w.=-]+")  # a row's name as a directory name
PRETRAIN_KEYS = ("data.features.roi", "model.patches", "model.pixels", "pretrain.adaptive")
# Settings no pretraining reads: a row's own override of one of these shares its image input's pretraining.
FINETUNE_ONLY = ("finetune.", "eval.", "reproduce.")
TEXT_ONLY = "twinbert"  # what the photo, the hot queries and the game have to beat (issue 16)


def _features(w: Workload) -> fs.FeatureStore:
    try:
        return fs.for_workload(w)
    except (FileNotFoundError, fs.NoMatchingStore):  # none yet, or none of this row's kind (RoI, whole image)
        root = w.path(w.data.root)
        print(f"[reproduce] building {'RoI' if w.data.features.roi else 'whole-image'} features for {root}")
        out = w.path(w.data.features.out) if w.data.features.out else None
        build_features(root, w.data.features, out)
        return fs.for_workload(w)


CURVES_FILE = "training_curves.csv"
CURVES = ("loss", "main", "adv", "d_acc", "centroid_gap")  # what the figures and a reader of the game need


def _kept_with_report(w: Workload, run_id: str, eval_dir: Path) -> dict:
    """Copy into ``eval_dir`` what the report needs of run ``run_id`` besides its evaluation (its training
    curves), so the report directory is whole without the MLflow store; the facts the ledger keeps of it:
    its pretrained model and the precision it trained in."""
    run = mlflow.tracking.MlflowClient(tracking.tracking_uri(w)).get_run(run_id)
    curves = [_history(w, run_id, k) for k in CURVES if k in run.data.metrics]
    if curves:
        merged = curves[0]
        for c in curves[1:]:
            merged = merged.merge(c, on="step", how="outer")
        merged.sort_values("step").to_csv(eval_dir / CURVES_FILE, index=False)
    facts = {
        "autocast": run.data.tags.get("autocast"),
        "init_from": run.data.params.get("finetune.init_from"),
    }
    return {k: v for k, v in facts.items() if v not in (None, "None")}


def _history(w: Workload, run_id: str, key: str) -> pd.DataFrame:
    client = mlflow.tracking.MlflowClient(tracking.tracking_uri(w))
    hist = client.get_metric_history(run_id, key)
    return pd.DataFrame({"step": [m.step for m in hist], key: [m.value for m in hist]}).sort_values("step")


def _curve(w: Workload, run: dict, key: str) -> pd.DataFrame:
    """Training curve ``key`` of a ledger run: from its evaluation directory (empty where the run did not log
    it), else (recorded before the curves were kept there) from MLflow."""
    path = Path(run["eval_dir"]) / CURVES_FILE
    if path.is_file():
        frame = pd.read_csv(path)
        return frame[["step", key]].dropna() if key in frame else pd.DataFrame({"step": [], key: []})
    return _history(w, run["run_id"], key)


def reproduce(base: Workload, command: str | None = None) -> Path:
    """Train and evaluate every table row with every seed; write ``<reproduce.out>/<name>/report.md``
    (``command``: the command line that asked for it, quoted in the report)."""
    cfg = base.reproduce
    if cfg.report_only and not cfg.resume:
        raise ConfigError("reproduce.report_only: name the report directory to report on (reproduce.resume)")
    if cfg.resume:
        out = base.path(cfg.resume)  # the ledger refuses a directory that is not a report directory
    else:
        out = base.path(cfg.out) / f"{base.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out, base, resume=bool(cfg.resume))
    if ledger.runs:
        print(f"[reproduce] resuming in {out}: {len(ledger.runs)} fine-tuning(s) and "
              f"{len(ledger.pretrained)} pretraining(s) already done")  # fmt: skip
    ensure_ray(base.ray)
    presets = list(dict.fromkeys(p for rows in cfg.tables.values() for p in rows))
    configs = {p: row_overrides(p) for p in presets}
    pretrained, runs = ledger.pretrained, ledger.runs  # (config, seed) -> finetune result + metrics
    found = reuse.candidates(cfg.reuse, base) if cfg.reuse else []
    rows, pkeys, missing = [], {}, {}
    t0 = time.perf_counter()
    for preset in presets:
        w = with_overrides(base, [*configs[preset], f"finetune.preset={preset.split()[0]}"])
        # TwinBERT starts from model.init; every other row from the pretraining of its image input.
        pkey = pretrain_key(w, preset)
        pkeys[preset] = pkey
        for seed in cfg.seeds:
            key = (configs[preset], seed)
            if key not in runs and cfg.report_only:
                missing.setdefault(key, f"{preset} seed {seed}")  # rows of one config (cebert, none) once
                continue
            if key not in runs:
                ws = with_overrides(w, [f"finetune.train.seed={seed}", f"data.batches.seed={seed}"])
                res = ledger.trained.get(key)
                if res is None and found:
                    res = _reused(ledger, ws, pkey, key, found, out, f"{preset} seed {seed}")
                if res is None:
                    _features(w)  # built here if this is the first row of its kind on this catalogue
                    if pkey is not None:
                        if pkey not in pretrained:
                            print(f"\n[reproduce] pretraining for {_pretraining(pkey)}")
                            ledger.add_pretrain(pkey, run_pretrain(w)["model_dir"])
                        ws = with_overrides(ws, [f"finetune.init_from={pretrained[pkey]}"])
                    print(
                        f"\n[reproduce] {preset} seed {seed} ({time.perf_counter() - t0:.0f} s so far)",
                        flush=True,
                    )
                    ft = run_finetune(ws)
                    res = ledger.add_trained(key, ft["run_id"], ft["model_dir"])
                else:
                    print(
                        f"\n[reproduce] {preset} seed {seed}: fine-tuned in run {res['run_id']}; evaluating it"
                    )
                eval_dir = out / f"{_SLUG.sub('_', preset)}-seed{seed}"
                ev = run_evaluation(res["model_dir"], ws.path(ws.data.root), _features(ws), ws.data.test_days,
                                    dataclasses.replace(ws.eval, baselines=[]), eval_dir, name=preset)[preset]  # fmt: skip
                ledger.add_run(key, {"run_id": res["run_id"], "metrics": ev, "eval_dir": eval_dir,
                                     **_kept_with_report(ws, res["run_id"], eval_dir),
                                     **{k: v for k, v in res.items() if k == "reused_from"}})  # fmt: skip
            rows.append(
                {"method": preset, "seed": seed, "run_id": runs[key]["run_id"], **runs[key]["metrics"]}
            )
    baseline = run_evaluation(None, base.path(base.data.root), _features(base), base.data.test_days, base.eval,
                              out / "baselines")  # fmt: skip
    for name, m in baseline.items():
        if not name.startswith("_"):
            rows.append({"method": name, "seed": 0, **m})
    results = pd.DataFrame(rows)
    results.to_csv(out / "results.csv", index=False)
    # Cold products (no train-day clicks, so no hot queries): where only title and photo can help; ranked
    # against the whole catalogue, against the other cold products alone, and their clicks' GAUC.
    metrics = [
        m for m in [*SUMMARY, "cold_recall@100", "cold_among_cold_recall@100", "cold_gauc"] if m in results
    ]
    summary = report.summarise_seeds(results, ["method"], metrics)
    # Each fine-tuning once, though rows of one config (Table 1's cebert, Table 4's none) share it.
    done = {
        (configs[p], s): (pkeys[p], runs[(configs[p], s)])
        for p in presets
        for s in cfg.seeds
        if (configs[p], s) in runs
    }
    used = list(done.values())
    how = (_how(base, baseline["_counts"], time.perf_counter() - t0, command) + _reuse_note([r for _, r in used])
           + _provenance_note(used) + _missing_note(list(missing.values()), len(used)))  # fmt: skip
    sections = [("How this was made", how)]
    for title, table_rows in cfg.tables.items():
        names = [*table_rows, *base.eval.baselines]
        part = (
            summary.set_index("method").loc[[n for n in names if n in set(summary["method"])]].reset_index()
        )
        sections.append(
            (title, report.seed_table(part, ["method"], metrics) + "\n\n" + _regressions(part, table_rows))
        )
    sections += _against_text_only(results, presets, configs, out)
    sections += _figures(base, runs, configs, list(cfg.seeds), out)
    path = report.write_report(out / "report.md", f"ACE-BERT reproduction: {base.name}", sections)
    with tracking.start_run(base, "reproduce", tags={"stage": "reproduce"}):
        tracking.log_artifacts(out, "reproduce")
    print(f"\n[reproduce] report {path} ({time.perf_counter() - t0:.0f} s)")
    return path


def _reused(
    ledger: Ledger, ws: Workload, pkey: tuple | None, key: tuple, found: list, out: Path, label: str
) -> dict | None:
    """A recorded run of another report with ``ws``'s settings, entered in this ledger as trained (with its
    pretraining, when this report has none for that image input yet); None when there is none."""
    c, why = reuse.match(ws, ledger.pretrained.get(pkey) if pkey else None, found)
    if c is None:
        print(f"[reproduce] {label}: nothing to reuse ({why})")
        return None
    print(
        f"[reproduce] {label}: run {c.run_id} of {c.source} has these settings; evaluating it, not training"
    )
    if pkey is not None and pkey not in ledger.pretrained:
        ledger.add_pretrain(pkey, c.init_from)
    model_dir = c.model_dir or tracking.download_model(ws, c.run_id, out / "reused" / c.run_id)
    return ledger.add_trained(key, c.run_id, str(model_dir), reused_from=str(c.source))


def _reuse_note(used: list[dict]) -> str:
    """Which of the report's fine-tunings were made for another report (``reproduce.reuse`` evaluates them here;
    an entry copied from another report's ledger keeps its evaluation there)."""
    sources = pd.Series([r["reused_from"] for r in used if "reused_from" in r], dtype=object)
    if sources.empty:
        return ""
    each = ", ".join(f"`{src}` ({n})" for src, n in sources.value_counts(sort=False).items())
    return (
        f" {len(sources)} of the {len(used)} fine-tunings were trained for other reports with the same "
        f"settings and data (`reproduce.reuse`, or their ledger entries carried over): {each}."
    )


def _missing_note(missing: list[str], done: int) -> str:
    """What a report of an unfinished reproduction (``reproduce.report_only``) lacks."""
    if not missing:
        return ""
    return (f" **Unfinished**: {done} of the {done + len(missing)} fine-tunings are done; not yet trained: "
            f"{', '.join(missing)}; the cells are over the seeds done (n).")  # fmt: skip


def _provenance_note(used: list[tuple[tuple | None, dict]]) -> str:
    """What differed in how the fine-tunings were made, each ``(pretraining key, ledger run)``: the precision
    (bf16 autocast only on machines whose CPU multiplies bf16; a report resumed on another machine mixes
    them), and image inputs whose rows started from more than one pretraining (one is done again when a
    resumed run finds its model gone)."""
    precision = Counter(r.get("autocast", "a precision not recorded") for _, r in used)
    note = " Fine-tunings trained " + ", ".join(f"in {p}: {n}" for p, n in precision.items()) + "."
    inits: dict[tuple, Counter] = {}
    for pkey, r in used:
        if pkey is not None:
            inits.setdefault(pkey, Counter())[r.get("init_from", "not recorded")] += 1
    for pkey, counts in inits.items():
        if len(counts) > 1:
            each = "; ".join(f"{n} from `{init}`" for init, n in counts.items())
            note += (f" The rows with {_pretraining(pkey)} started from {len(counts)} "
                     f"different pretrainings (done again on resuming where the model was gone): {each}.")  # fmt: skip
    return note


def row_overrides(row: str) -> tuple[str, ...]:
    """A table row, ``"PRESET [key=value ...]"`` -> the overrides that make its config: the preset's, then the
    row's own (a plain preset row keeps the key it always had in a report's ledger)."""
    name, *extra = row.split()
    bad = [e for e in extra if "=" not in e]
    if bad:
        raise ConfigError(f"reproduce.tables: row {row!r}: {bad[0]!r} is not key=value")
    return (*preset_overrides(name), *extra)


def pretrain_key(w: Workload, row: str) -> tuple[str, ...] | None:
    """What a row's pretraining is shared by: its image input and loss weighting (``PRETRAIN_KEYS``), then the
    row's own overrides that a pretraining may read (``"acebert pretrain.mlm_prob=0.3"`` pretrains apart).
    None for TwinBERT, which starts from ``model.init``. A plain preset row keeps the key it always had."""
    if w.finetune.preset == "twinbert":
        return None
    own = [e for e in row.split()[1:] if not e.startswith(FINETUNE_ONLY)]
    return (*(str(_dotted(w, k)) for k in PRETRAIN_KEYS), *own)


def _pretraining(pkey: tuple) -> str:
    """A pretraining's key as the report and the log name it."""
    n = len(PRETRAIN_KEYS)
    own = " ".join(pkey[n:])
    return str(dict(zip(PRETRAIN_KEYS, pkey[:n], strict=True))) + (f" and {own}" if own else "")


def _dotted(obj, dotted: str):
    """``obj.a.b`` from ``"a.b"``."""
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _regressions(part: pd.DataFrame, table_rows: list[str]) -> str:
    """Say where a row does not beat the row above it (Recall@100 and GAUC means)."""
    means = part.set_index("method")
    present = [r for r in table_rows if r in means.index]  # an unfinished report (report_only) lacks some
    if len(present) < 2:
        return ""
    notes = []
    for above, row in zip(present, present[1:], strict=False):
        for m in ("recall@100_mean", "gauc_mean"):
            if m in means and means.loc[row, m] <= means.loc[above, m]:
                notes.append(f"- {row} does not beat {above} on {m[:-5]} ({means.loc[row, m]:.4f} vs "
                             f"{means.loc[above, m]:.4f}).")  # fmt: skip
    return "\n".join(notes) if notes else "Every row beats the row above it on Recall@100 and GAUC."


def _against_text_only(
    results: pd.DataFrame, presets: list[str], configs: dict, out: Path
) -> list[tuple[str, str]]:
    """The section comparing each trained config with TwinBERT seed for seed (``margins``), each config once
    under its first name (Table 4's "adversarial" is Table 1's acebert), with its figure ``out/margins.png``;
    none without a TwinBERT row."""
    first: dict[tuple, str] = {}
    for p in presets:
        first.setdefault(configs[p], p)
    rows = list(first.values())
    text = margins.margins_section(results, rows, TEXT_ONLY)
    if not text:
        return []
    fig = margins.plot_margins(results, rows, TEXT_ONLY, out / "margins.png")
    body = f"{text}\n\n{report.figure_link(fig, out / 'report.md', 'each row against ' + TEXT_ONLY)}"
    return [(f"Against the text-only preset ({TEXT_ONLY})", body)]


def _figures(base: Workload, runs: dict, configs: dict, seeds: list[int], out: Path) -> list[tuple[str, str]]:
    """Fig. 6 (matching loss with and without adversarial learning) and Fig. 7 (embedding maps), drawn from the
    first seed whose two runs both kept their evaluation directory here (a ledger entry carried over from another
    report keeps its figures there), and the game's reading on every such seed; or a line saying why they are not
    drawn."""
    # Table 4's rows; a report of the game alone may name the adversarial row acebert (the same config).
    rows = {"without adversarial": ("hot_query",), "with adversarial": ("adversarial", "acebert")}
    pair = {label: next((p for p in names if p in configs), None) for label, names in rows.items()}
    if None in pair.values():
        return []
    kept = {}
    for seed in seeds:
        found = {label: runs.get((configs[p], seed)) for label, p in pair.items()}
        if all(r and (r["eval_dir"] / "embedding_map.png").is_file() for r in found.values()):
            kept[seed] = found
    if not kept:
        why = (f"Not drawn: no seed has both rows (`{pair['without adversarial']}`, `{pair['with adversarial']}`) "
               "trained with their evaluation directories in this report (an entry carried over from another "
               "report keeps them there).")  # fmt: skip
        return [("Fig. 6 and 7: adversarial learning", why)]
    seed, found = next(iter(kept.items()))
    curves = {label: _curve(base, r, "main").rename(columns={"main": "loss"}) for label, r in found.items()}
    fig6 = report.plot_curves(curves, out / "fig6_matching_loss.png", y="loss", smooth=0.1,
                              title=f"Semantic matching loss (L_main), seed {seed}")  # fmt: skip
    maps = []
    for label, r in found.items():
        dst = out / f"fig7_embedding_map_{label.replace(' ', '_')}.png"
        shutil.copy(r["eval_dir"] / "embedding_map.png", dst)
        gap = r["metrics"].get("centroid_gap", float("nan"))
        maps.append(
            f"{label} (query-product centroid gap {gap:.3f}):\n\n{report.figure_link(dst, out / 'report.md', label)}"
        )
    return [("Fig. 6: matching loss with and without adversarial learning", report.figure_link(fig6, out / "report.md")),
            ("Fig. 7: query and product embeddings by category", "\n\n".join(maps)),
            _game(base, kept, out)]  # fmt: skip


def _game(base: Workload, kept: dict[int, dict], out: Path) -> tuple[str, str]:
    """Whether the game did what it is for (paper 3.3), on each seed's pair of runs (``kept``: seed -> the runs
    without and with it): D's accuracy during training (0.5 = it cannot tell a query's embedding from a
    product's), the query-product centroid gap with and without the game (during training and on the test set)
    and what it cost in Recall@100 and GAUC; the curves of the first seed drawn."""
    lines, fig = [], None
    for seed, found in kept.items():
        with_, without = found["with adversarial"], found["without adversarial"]
        curves = {
            "centroid gap, without adversarial": _curve(base, without, "centroid_gap"),
            "centroid gap, with adversarial": _curve(base, with_, "centroid_gap"),
            "D's accuracy, with adversarial (0.5 = fooled)": _curve(base, with_, "d_acc"),
        }
        curves = {label: c.set_axis(["step", "value"], axis=1) for label, c in curves.items()}
        if fig is None:
            fig = report.plot_curves(curves, out / "fig6_game.png", y="value", smooth=0.1,
                                     title=f"The game during training, seed {seed}")  # fmt: skip
        # As training ends: the mean over its last tenth.
        gap_without, gap_with, d_acc = (
            c["value"].iloc[-max(1, len(c) // 10) :].mean() for c in curves.values()
        )
        a, b = with_["metrics"], without["metrics"]
        lines.append(
            f"- Seed {seed}, over the last tenth of training: D's accuracy {d_acc:.3f} (0.5 = fooled), the centroid "
            f"gap {gap_with:.3f} with the game against {gap_without:.3f} without. On the test set: centroid gap "
            f"{a.get('centroid_gap', float('nan')):.3f} against {b.get('centroid_gap', float('nan')):.3f}, "
            f"Recall@100 {a['recall@100']:.4f} against {b['recall@100']:.4f}, GAUC {a['gauc']:.4f} against "
            f"{b['gauc']:.4f}."
        )
    return ("The game: D fooled, the gap closed, and its cost",
            "\n".join(lines) + f"\n\n{report.figure_link(fig, out / 'report.md')}")  # fmt: skip


def _how(w: Workload, counts: dict, seconds: float, command: str | None) -> str:
    span = "in the last, resumed invocation" if w.reproduce.resume else "in all"
    return (f"Catalogue `{w.path(w.data.root)}`: {counts['catalogue']:,} products with features, "
            f"{counts['test_queries']:,} test queries, {counts['test_sessions']:,} test sessions "
            f"(last {w.data.test_days} days). Model init `{w.model.init}` ({w.model.layers} layers); seeds "
            f"{list(w.reproduce.seeds)}; {seconds / 60:.1f} min {span}. Cells are mean ± std over the seeds "
            f"(baselines: one run). {f'Command: `{command}`; the' if command else 'The'} whole configuration is in "
            f"`workload.yaml` beside this report.")  # fmt: skip
