"""The driver side shared by every training job: naming a run, building the ``TorchTrainer``, fitting it
and logging the final model directory to the MLflow run."""

from __future__ import annotations

import difflib
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import ray.train
import ray.train.torch

from ace_ray import tracking
from ace_ray.config import ConfigError, TrainConfig, Workload, flatten, to_dict
from ace_ray.train import checkpoints


def run_name(prefix: str, name: str | None) -> str:
    """``name`` when resuming, else a fresh ``prefix-YYYYmmdd-HHMMSS-xxxx``."""
    return (
        name or f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{np.random.default_rng().integers(1 << 16):04x}"
    )


def wants_gpu(tc: TrainConfig) -> bool:
    """``use_gpu`` from the config, or whether the cluster has GPUs."""
    return bool(tc.use_gpu if tc.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0)


def storage_path(w: Workload) -> str:
    """``ray.storage_path`` as Ray Train sees it: a URI as it is, a local path made absolute."""
    return w.ray.storage_path if "://" in w.ray.storage_path else str(w.path(w.ray.storage_path))


def _checkpoints(storage: str, name: str) -> tuple[bool, list[str], list[str]]:
    """(whether run ``name`` exists under ``storage``, its checkpoints, the runs there)."""
    import pyarrow.fs as pafs

    fs, base = pafs.FileSystem.from_uri(storage) if "://" in storage else (pafs.LocalFileSystem(), storage)
    runs = [i.base_name for i in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
            if i.type == pafs.FileType.Directory]  # fmt: skip
    if name not in runs:
        return False, [], sorted(runs)
    inside = fs.get_file_info(pafs.FileSelector(f"{base}/{name}"))
    return True, [i.base_name for i in inside if i.base_name.startswith("checkpoint_")], sorted(runs)


# Settings a resumed run may change: where it runs and records, not what it trains.
_FREE_ON_RESUME = ("ray.", "tracking.", "reproduce.", "workspace", "name")
_PATHS = ("data.root", "data.features.out", "finetune.init_from")


def check_resume(w: Workload, name: str | None) -> str | None:
    """Before resuming Ray Train run ``name``: it must exist under ``ray.storage_path`` with a checkpoint,
    its MLflow run must be found, and the workload must be the one it was started with (a clear error
    otherwise, naming what differs). The MLflow run id to continue, or None for a new run."""
    if not name:
        return None
    storage = storage_path(w)
    exists, ckpts, runs = _checkpoints(storage, name)
    if not exists:
        near = difflib.get_close_matches(name, runs, n=3, cutoff=0.3)
        hint = (
            f"; did you mean {', '.join(near)}?"
            if near
            else (f"; runs there: {', '.join(runs[-5:])}" if runs else "")
        )
        raise ConfigError(f"--resume {name}: no such run in {storage}{hint}")  # fmt: skip
    if not ckpts:
        raise ConfigError(f"--resume {name}: the run stopped before its first checkpoint; start it again")
    run_id = tracking.find_run(w, "ray_run_name", name)
    if run_id is None:
        raise ConfigError(f"--resume {name}: its MLflow run is not in {tracking.tracking_uri(w)} (tag "
                          f"ray_run_name={name}); resume with the tracking URI it was started with")  # fmt: skip
    saved = flatten(to_dict(tracking.run_workload(w, run_id)))
    now = flatten(to_dict(w))
    diff = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if key.startswith(_FREE_ON_RESUME):
            continue
        if key in _PATHS and a is not None and b is not None:
            a, b = str(w.path(a)), str(w.path(b))
        if a != b:
            diff.append(f"{key}: run has {a!r}, this command {b!r}")
    if diff:
        raise ConfigError(f"--resume {name}: the workload differs from the run's (pass the same --workload and "
                          "overrides): " + "; ".join(diff))  # fmt: skip
    return run_id


def check_model_dir(path: Path, key: str) -> None:
    """A model directory a run starts from must be one, checked on the driver (a worker would fail and be
    retried ``max_failures`` times)."""
    from ace_ray.model.encoder import read_info

    try:
        read_info(path)
    except FileNotFoundError:
        raise ConfigError(f"{key}={path}: not an ace-ray model directory (no ace_ray.json); expected the "
                          "`model` directory of a pretraining run") from None  # fmt: skip


def trainer_for(w: Workload, tc: TrainConfig, name: str, loop, loop_config: dict,
                callbacks: list | None = None) -> ray.train.torch.TorchTrainer:  # fmt: skip
    """A TorchTrainer from a train section: workers, resources, checkpoints, failures, ``callbacks`` (e.g.
    Tune's report callback). The workers read their data themselves (``ace_ray.data.plan``), so it gets
    no datasets."""
    storage = storage_path(w)
    return ray.train.torch.TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=tc.workers,
            use_gpu=loop_config["use_gpu"],
            resources_per_worker={"CPU": tc.cpus_per_worker},
            placement_strategy=tc.placement,
        ),  # fmt: skip
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=tc.max_failures),
            callbacks=callbacks or [],
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=tc.keep_checkpoints,
                checkpoint_score_attribute="loss",
                checkpoint_score_order="min",
            ),  # fmt: skip
        ),
    )


def fit(trainer: ray.train.torch.TorchTrainer, run, name: str) -> dict:
    """Fit; log the final checkpoint's model directory as the MLflow run's ``model`` artefact; the loop's
    return value plus run id, Ray run name, checkpoint and model directory."""
    result = trainer.fit()
    if result.error:
        raise result.error
    out = dict(result.return_value or {})
    with result.checkpoint.as_directory() as d, tempfile.TemporaryDirectory() as tmp:
        # Copy out of the checkpoint (which may be remote) before logging it as the run's model.
        model_dir = Path(tmp) / "model"
        shutil.copytree(Path(d) / checkpoints.MODEL_DIR, model_dir)
        tracking.log_artifacts(model_dir, "model")
    out.update(run_id=run.info.run_id, ray_run_name=name, checkpoint=result.checkpoint.path,
               model_dir=str(Path(result.checkpoint.path) / checkpoints.MODEL_DIR))  # fmt: skip
    tracking.log_metrics({"steps_repeated": out.get("steps_repeated", 0)})
    return out
