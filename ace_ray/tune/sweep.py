"""``ace-ray tune``: a Ray Tune sweep whose trials are fine-tunings on Ray Train.

Each trial is a driver function that fine-tunes one configuration (``run_finetune`` with the trial's id:
its own Ray Train run, nested MLflow run, and a report to Tune at every checkpoint, which is where ASHA
can stop it). The metric is Recall@K on the validation days (``data.val_days``), carved from the training
days: no trial reads a test-day click. The test days are read once, at the end, by the best configuration
trained on train + validation days (``space.final_test``). Everything lives in ``<ray.storage_path>/tune/
<name>/``: Tune's experiment state (so ``--resume`` keeps finished trials and resumes the others from their
checkpoints), ``space.yaml`` and ``workload.yaml`` as started, ``trials.csv``, ``best.yaml``, ``report.md``.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import time
from pathlib import Path

import yaml

from ace_ray import tracking
from ace_ray.config import ConfigError, Workload, dump_config, from_dict, load_yaml, to_dict, with_overrides
from ace_ray.runtime import cluster_cpus, ensure_ray
from ace_ray.tune.space import Space, _fmt, _one, load_space

TRIAL_CPUS = 0.25  # the trial's own driver function: it only waits on its TorchTrainer
DATA_CPUS = 1.0  # left free for the Ray Data jobs that build each trial's batches
SCHEDULER_STATE = "scheduler_state.pkl"


def concurrency(space: Space, w: Workload, cpus: float) -> int:
    """Trials at once: as many as the cluster's CPUs hold, each its Train workers plus its driver, with a
    CPU left for building batches; at least 1, at most ``space.max_concurrent`` and the trial count."""
    tc = w.finetune.train
    per_trial = tc.workers * tc.cpus_per_worker + TRIAL_CPUS
    n = max(1, math.floor((cpus - DATA_CPUS) / per_trial))
    if space.max_concurrent:
        n = min(n, space.max_concurrent)
    return min(n, space.trials())


def param_space(space: Space) -> dict:
    """The space's distributions as Ray Tune's."""
    from ray import tune

    make = {"grid": tune.grid_search, "choice": tune.choice, "uniform": lambda v: tune.uniform(*v),
            "loguniform": lambda v: tune.loguniform(*v), "randint": lambda v: tune.randint(*v)}  # fmt: skip
    return {
        key: make[kind](values) for key, (kind, values) in ((k, _one(s)) for k, s in space.params.items())
    }


def trial_workload(base: Workload, config: dict) -> Workload:
    """The workload of one trial: the sweep's, with the trial's values."""
    return with_overrides(base, [f"{k}={_fmt(v)}" for k, v in config.items()])


def _trial(config: dict, base: dict, parent_run_id: str, storage: str) -> None:
    """One trial (runs in a Tune actor): fine-tune its configuration, reporting to Tune at checkpoints."""
    import ray.data
    from ray import tune

    from ace_ray.train.finetune import run_finetune

    # A trial is a Ray worker: Ray Data would draw a tqdm bar per operator into the driver's log.
    ray.data.DataContext.get_current().enable_progress_bars = False
    w = trial_workload(from_dict(Workload, base), config)
    w.ray.storage_path = storage  # the trials' Train runs live in the sweep's directory
    run_finetune(w, trial={"id": tune.get_context().get_trial_id(), "parent_run_id": parent_run_id})


def _progress_lines(total: int, metric: str):
    """A Tune callback printing a line per finished trial:
    ``[tune] 3/8 trials done (1 stopped early) | <id> val 0.41 | a=1 b=2`` (Tune is imported lazily)."""
    from ray.tune import Callback

    def early(trial) -> bool:
        last = trial.last_result or {}
        return last.get("step", 0) < last.get("total_steps", 0)

    class Line(Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            self._line(trials, trial, "done")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trials, trial, "failed")

        def _line(self, trials, trial, what):
            # Counted from all the trials, so a resumed sweep counts the ones finished before it stopped.
            ended = [t for t in trials if t is not trial and t.status in ("TERMINATED", "ERROR")] + [trial]
            last = trial.last_result or {}
            params = " ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in (trial.config or {}).items())
            value = last.get(metric)
            print(f"[tune] {len(ended)}/{total} trials {what} ({sum(map(early, ended))} stopped early) | "
                  f"{trial.trial_id} {metric} {value if value is None else f'{value:.4f}'} at step "
                  f"{last.get('step')}{' (stopped early)' if early(trial) else ''} | {params}", flush=True)  # fmt: skip

    return Line()


def _restore_scheduler(tuner, path: Path) -> None:
    """Give a restored sweep's scheduler the state it had. Tune restores the scheduler as it was created: an
    ASHA without its rung records would let the trials run after a resume be compared only with each other."""
    state = path / SCHEDULER_STATE
    scheduler = tuner._local_tuner._tune_config.scheduler  # private: Tune offers no public way to reach it
    if state.is_file():
        with state.open("rb") as f:
            saved = pickle.load(f)
        # Not metric and mode: Tune sets them on the restored scheduler itself and refuses one that has them.
        scheduler.__dict__.update(
            {k: v for k, v in saved.items() if k not in ("_metric", "_mode", "_metric_op")}
        )
    for cb in tuner._local_tuner._run_config.callbacks or []:
        if getattr(cb, "keeps_scheduler", False):
            cb.scheduler = scheduler  # the one fit() uses, whatever the unpickling shared


def _scheduler_state(path: Path, scheduler):
    """A Tune callback saving ``scheduler``'s state (ASHA's rung records) beside the sweep after every trial
    result, for ``_restore_scheduler``."""
    from ray.tune import Callback

    class Keep(Callback):
        keeps_scheduler = True

        def __init__(self):
            self.scheduler = scheduler

        def on_trial_result(self, *args, **info):
            self._save()

        def on_trial_complete(self, *args, **info):
            self._save()

        def _save(self):
            tmp = path / f".{SCHEDULER_STATE}.tmp"
            self.scheduler.save(str(tmp))
            tmp.replace(path / SCHEDULER_STATE)  # whole or not at all

    return Keep()


def _tuner(space: Space, base: Workload, path: Path, parent_run_id: str, restore: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    trainable = tune.with_parameters(_trial, base=to_dict(base), parent_run_id=parent_run_id,
                                     storage=str(path / "train"))  # fmt: skip
    trainable = tune.with_resources(trainable, {"cpu": TRIAL_CPUS})
    if restore:
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
        _restore_scheduler(tuner, path)
        return tuner
    if space.scheduler == "asha":
        # A trial's "iteration" is a checkpoint report; max_t only caps the rungs.
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=10_000, grace_period=space.asha.grace_period,
                                  reduction_factor=space.asha.reduction_factor)  # fmt: skip
    else:
        scheduler = FIFOScheduler()
    search = None
    if space.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search = OptunaSearch(seed=space.seed)
    elif space.search == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        search = BasicVariantGenerator(random_state=space.seed)
    n = concurrency(space, base, cluster_cpus())
    print(f"[tune] {space.name}: {space.trials()} trials, {n} at once, {space.search} search, "
          f"{space.scheduler} scheduler, metric {space.metric} ({space.mode}) on {base.data.val_days} validation "
          f"day(s); {path}", flush=True)  # fmt: skip
    return tune.Tuner(
        trainable,
        param_space=param_space(space),
        tune_config=tune.TuneConfig(
            metric=space.metric,
            mode=space.mode,
            num_samples=space.num_samples,
            search_alg=search,
            scheduler=scheduler,
            max_concurrent_trials=n,
        ),  # fmt: skip
        run_config=tune.RunConfig(
            name=path.name,
            storage_path=str(path.parent),
            verbose=0,
            callbacks=[_progress_lines(space.trials(), space.metric)]
            + ([_scheduler_state(path, scheduler)] if space.scheduler == "asha" else []),
            failure_config=tune.FailureConfig(max_failures=1),
        ),  # fmt: skip
    )


def _start(space_path: str | Path, w: Workload) -> tuple[Space, Workload, Path]:
    space = load_space(space_path, w)
    base = with_overrides(w, list(space.fixed))
    if base.data.val_days < 1:
        raise ConfigError(f"{space_path}: a sweep selects on validation days: set data.val_days (in fixed, or "
                          "key=value) to 1 or more; the test days stay for the final evaluation")  # fmt: skip
    base = dataclasses.replace(base, workspace=str(base.path(".")))
    # Trials run in Ray workers, whose environment is the cluster's, not this command's: they get the
    # tracking URI itself (saved with the sweep, so a resumed sweep records into the same store).
    base.tracking.uri = tracking.tracking_uri(base)
    path = base.path(base.ray.storage_path) / "tune" / f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path.mkdir(parents=True)
    (path / "space.yaml").write_text(yaml.safe_dump(to_dict(space), sort_keys=False))
    (path / "workload.yaml").write_text(dump_config(base))
    return space, base, path


def _resume(path: str | Path) -> tuple[Space, Workload, Path]:
    path = Path(path).resolve()
    if not (path / "space.yaml").is_file() or not (path / "workload.yaml").is_file():
        raise ConfigError(f"--resume {path}: not a sweep directory (no space.yaml and workload.yaml)")
    return (
        from_dict(Space, load_yaml(path / "space.yaml")),
        from_dict(Workload, load_yaml(path / "workload.yaml")),
        path,
    )


def _finished_trials(path: Path) -> int:
    """Trials that the sweep's saved state holds as finished or failed: what a resume keeps. Not the
    returned grid's count: on Ctrl-C Tune saves its state, then stops the running trials and reports them
    as terminated too, and trials not yet created are missing from it."""
    from ray.tune import ExperimentAnalysis

    return sum(t.status in ("TERMINATED", "ERROR") for t in ExperimentAnalysis(str(path)).trials)


def run_sweep(w: Workload, space_path: str | Path | None = None, resume: str | Path | None = None) -> dict:
    """Run (or with ``resume``, continue) a sweep; write its results; the summary with the best config."""
    from ace_ray.tune import results

    ensure_ray(w.ray)
    space, base, path = _resume(resume) if resume else _start(space_path, w)
    parent = tracking.find_run(base, "tune_dir", str(path))
    with tracking.start_run(base, f"tune-{space.name}", tags={"stage": "tune", "tune_dir": str(path)},
                            run_id=parent) as run:  # fmt: skip
        if parent is None:
            tracking.log_artifact(path / "space.yaml")
        grid = _tuner(space, base, path, run.info.run_id, restore=resume is not None).fit()
        # Tune returns from fit() on Ctrl-C: a partial sweep must not pick, nor read the test days.
        unfinished = space.trials() - _finished_trials(path)
        if unfinished:
            print(f"[tune] interrupted with {unfinished} of {space.trials()} trials unfinished; nothing was chosen or "
                  f"tested. Continue with: ace-ray tune --resume {path}", flush=True)  # fmt: skip
            raise SystemExit(130)
        summary, table, curves = results.write(grid, space, base, path, run.info.run_id)
        if space.final_test and "final" not in summary:
            summary["final"] = results.final_test(base, path, summary, space.compare)
        results.write_report(space, base, path, summary, table, curves)
        tracking.log_metrics({f"best_{space.metric}": summary["best_value"], "trials": summary["trials"],
                              "stopped_early": summary["stopped_early"],
                              **{f"test/{k}": v for k, v in summary.get("final", {}).get("metrics", {}).items()}})  # fmt: skip
        for f in ("trials.csv", "best.yaml", "report.md", *(p.name for p in path.glob("*.png"))):
            tracking.log_artifact(path / f, "sweep")
    print(f"[tune] best {space.metric} {summary['best_value']:.4f} with "
          f"{' '.join(f'{k}={_fmt(v)}' for k, v in summary['best_config'].items())}\n"
          f"best workload {path / 'best.yaml'}\nreport {path / 'report.md'}")  # fmt: skip
    return summary
