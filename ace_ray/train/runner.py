"""The driver side shared by every training job: naming a run, building the ``TorchTrainer``, fitting it
and logging the final model directory to the MLflow run."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import ray.train
import ray.train.torch

from ace_ray import tracking
from ace_ray.config import TrainConfig, Workload
from ace_ray.train import checkpoints


def run_name(prefix: str, name: str | None) -> str:
    """``name`` when resuming, else a fresh ``prefix-YYYYmmdd-HHMMSS-xxxx``."""
    return (
        name or f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{np.random.default_rng().integers(1 << 16):04x}"
    )


def wants_gpu(tc: TrainConfig) -> bool:
    """``use_gpu`` from the config, or whether the cluster has GPUs."""
    return bool(tc.use_gpu if tc.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0)


def trainer_for(w: Workload, tc: TrainConfig, name: str, loop, loop_config: dict,
                datasets: dict) -> ray.train.torch.TorchTrainer:  # fmt: skip
    """A TorchTrainer from a train section: workers, resources, checkpoints, failures."""
    storage = w.ray.storage_path if "://" in w.ray.storage_path else str(w.path(w.ray.storage_path))
    return ray.train.torch.TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=tc.workers,
            use_gpu=loop_config["use_gpu"],
            resources_per_worker={"CPU": tc.cpus_per_worker},
        ),  # fmt: skip
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=tc.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=tc.keep_checkpoints,
                checkpoint_score_attribute="loss",
                checkpoint_score_order="min",
            ),  # fmt: skip
        ),
        datasets=datasets,
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
