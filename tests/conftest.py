"""Shared fixtures: one local Ray for the whole session, an MLflow store per test, small catalogues."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ace_ray.config import ClickModelConfig, RayConfig, SynthConfig, Workload

# shared/ lies beside the checkout (as in CI); ACE_RAY_SHARED points elsewhere.
SHARED = Path(os.environ.get("ACE_RAY_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FASHION = SHARED / "data" / "fashion-products"

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every test; more logical CPUs than cores so pipelines never starve."""
    import ray

    from ace_ray.runtime import ensure_ray

    os.environ.pop("RAY_ADDRESS", None)
    ensure_ray(RayConfig(num_cpus=4))
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _mlflow_store(tmp_path, monkeypatch):
    """Every test records into its own MLflow store, never the developer's."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


def small_workload(root: Path, **synth) -> Workload:
    wl = Workload(workspace=str(root.parent))
    wl.data.root = str(root)
    wl.data.synth = SynthConfig(**({"products": 300, "days": 4, "sessions": 150, "shard_size": 100} | synth))
    wl.data.clicks = ClickModelConfig()
    return wl


@pytest.fixture(scope="session")
def shop(tmp_path_factory, ray_session) -> Path:
    """A synthetic shop big enough for statistics (generated once per session; do not modify)."""
    from ace_ray.data.synth.generate import synthesize

    root = tmp_path_factory.mktemp("shop") / "shop"
    synthesize(SynthConfig(products=1500, days=6, sessions=800, shard_size=250), ClickModelConfig(), root)
    return root
