"""MLflow: an embedded SQLite store inside the workspace by default, ``MLFLOW_TRACKING_URI`` honoured."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ace_ray.config import Workload, dump_config, flatten, to_dict

# MLflow params are strings of at most this many characters, under names of at most 250 of these.
_PARAM_MAX, _KEY_MAX = 6000, 250
_NOT_IN_KEY = re.compile(r"[^\w\-. :/]")


def tracking_uri(workload: Workload) -> str:
    """``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<workspace>/mlruns/mlflow.db``.

    Always absolute: Ray workers change directory, and a relative SQLite URI would open another store.
    """
    uri = workload.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    db = workload.path("mlruns") / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def _experiment_id(mlflow: Any, workload: Workload) -> str:
    name = workload.tracking.experiment
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifacts = None
    if tracking_uri(workload).startswith("sqlite:"):
        # Keep artefacts next to the store instead of in ./mlartifacts of whatever the cwd is.
        artifacts = (workload.path("mlruns") / "artifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=artifacts)


@contextlib.contextmanager
def start_run(workload: Workload, run_name: str, tags: dict[str, str] | None = None,
              run_id: str | None = None) -> Iterator[Any]:  # fmt: skip
    """An MLflow run with the whole effective config as params and as an artefact; prints its id.

    With ``run_id``, that run is continued (a resumed training run) instead of a new one started.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(workload))
    exp_id = _experiment_id(mlflow, workload)
    # Inside another command's run (a sweep's final fine-tuning), this one nests under it.
    nested = mlflow.active_run() is not None
    with mlflow.start_run(run_id=run_id, experiment_id=exp_id, run_name=None if run_id else run_name,
                          tags=tags, nested=nested) as run:  # fmt: skip
        if run_id is None:
            # Keys the user names (reproduce.tables titles) may hold characters MLflow refuses in a name.
            params = {_NOT_IN_KEY.sub("_", k)[:_KEY_MAX]: str(v)[:_PARAM_MAX]
                      for k, v in flatten(to_dict(workload)).items()}  # fmt: skip
            mlflow.log_params(params)
            mlflow.log_text(dump_config(workload), "workload.yaml")
        yield run
        print(f"MLflow run {run.info.run_id} ({run_name}) in {mlflow.get_tracking_uri()}")


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log numeric metrics to the active run (non-numbers are skipped by design: they are params)."""
    import mlflow

    clean = {
        k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    mlflow.log_metrics(clean, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Attach a file to the active run."""
    import mlflow

    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_artifacts(path: str | Path, artifact_path: str | None = None) -> None:
    """Attach a directory to the active run."""
    import mlflow

    mlflow.log_artifacts(str(path), artifact_path=artifact_path)


def find_run(workload: Workload, tag: str, value: str) -> str | None:
    """The id of the latest run in the workload's experiment with ``tags.<tag> = value``, if any."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(workload))
    exp = mlflow.get_experiment_by_name(workload.tracking.experiment)
    if exp is None:
        return None
    runs = mlflow.search_runs([exp.experiment_id], filter_string=f"tags.{tag} = '{value}'",
                              order_by=["attributes.start_time DESC"], max_results=1, output_format="list")  # fmt: skip
    return runs[0].info.run_id if runs else None


def run_workload(workload: Workload, run_id: str) -> Workload:
    """The workload run ``run_id`` was started with (its ``workload.yaml`` artefact)."""
    import mlflow
    import yaml

    from ace_ray.config import from_dict

    mlflow.set_tracking_uri(tracking_uri(workload))
    text = mlflow.artifacts.load_text(f"runs:/{run_id}/workload.yaml")
    return from_dict(Workload, yaml.safe_load(text))


def download_model(workload: Workload, run_id: str, dst: str | Path) -> Path:
    """The ``model`` artefact of run ``run_id`` (a model directory), copied under ``dst``."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(workload))
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model", dst_path=str(dst))
    except Exception as exc:  # MLflow raises several types for an unknown run or a missing artefact
        raise FileNotFoundError(
            f"MLflow run {run_id}: no model artefact in {tracking_uri(workload)} ({exc})"
        ) from exc
    return Path(path)


def register_model(workload: Workload, run_id: str, name: str, alias: str = "candidate") -> int:
    """Register run ``run_id``'s ``model`` artefact as a new version of registered model ``name`` and point
    ``alias`` at it (``models:/NAME@alias`` is how a served model is promoted); returns the version."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri(workload))
    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name)
    source = f"{mlflow.get_run(run_id).info.artifact_uri}/model"
    version = client.create_model_version(name, source, run_id=run_id)
    client.set_registered_model_alias(name, alias, version.version)
    print(f"registered model {name} version {version.version} (models:/{name}@{alias}) from run {run_id}")
    return int(version.version)
