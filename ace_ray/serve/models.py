"""Where a served model comes from: a model directory, an MLflow run id, or a registered model
(``models:/NAME@alias`` or ``models:/NAME/VERSION``), copied once into a local cache."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from ace_ray.model.encoder import META_FILE


def _cache(tag: str) -> Path:
    base = Path(os.environ.get("ACE_RAY_MODEL_CACHE", Path(tempfile.gettempdir()) / "ace-ray-models"))
    return base / re.sub(r"[^A-Za-z0-9_.@-]+", "_", tag)


def resolve_model(source: str, tracking_uri: str = "") -> tuple[Path, str]:
    """A local model directory for ``source``, and the MLflow run id it came from ("" if unknown)."""
    import mlflow

    from ace_ray import tracking
    from ace_ray.config import Workload

    if not source:
        raise ValueError("model: give a model directory, an MLflow run id or models:/NAME@alias")
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / META_FILE).is_file():
            raise FileNotFoundError(f"{path}: not an ace-ray model directory (no {META_FILE})")
        return path.resolve(), ""
    w = Workload()
    w.tracking.uri = tracking_uri or None
    mlflow.set_tracking_uri(tracking.tracking_uri(w))
    if source.startswith("models:/"):
        dst = _cache(source[len("models:/") :])
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst)))
        except Exception as exc:  # MLflow raises several types for an unknown name, alias or version
            raise FileNotFoundError(
                f"{source}: no such registered model in {mlflow.get_tracking_uri()} ({exc})"
            ) from exc
        return local, _registered_run_id(source)
    return tracking.download_model(w, source, _cache(source)), source


def _registered_run_id(source: str) -> str:
    """The run a ``models:/`` version was registered from."""
    from mlflow import MlflowClient

    name, _, ref = source[len("models:/") :].partition("@")
    client = MlflowClient()
    if ref:
        mv = client.get_model_version_by_alias(name, ref)
    else:
        name, _, version = name.partition("/")
        mv = client.get_model_version(name, version)
    return mv.run_id or ""
