"""Shared fixtures: one local Ray for the whole session, an MLflow store per test, small catalogues."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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


@pytest.fixture
def ray_join_env(ray_session, _mlflow_store) -> dict[str, str]:
    """The environment of a command run in its own process that joins the session's Ray, as a user's second
    command joins a cluster (one starting a local Ray of its own paid ~10 s of start-up and shutdown). Read
    after ``_mlflow_store`` has set this test's tracking URI, so the command records into the test's store."""
    return {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}


@pytest.fixture(scope="session")
def _empty_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its schema, made once: creating the schema (~1 s of migrations) in every
    test's store was a minute of the suite."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow") / "empty.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture(autouse=True)
def _mlflow_store(tmp_path, monkeypatch, _empty_mlflow_db):
    """Every test records into its own MLflow store, never the developer's."""
    shutil.copyfile(_empty_mlflow_db, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


def train_worker_processes() -> list:
    """The Ray Train worker processes of this test session (their process title names the actor class):
    those descended from this process, which started the Ray clusters that the tests and their command-line
    runs use. A training run of someone else's on the same machine is not ours to kill."""
    import psutil

    me, found = os.getpid(), []
    for p in psutil.process_iter(["cmdline"]):
        try:
            ours = any(a.pid == me for a in p.parents())
            if ours and "RayTrainWorker" in " ".join(p.info["cmdline"] or []):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def checkpoint_registered(runs: Path) -> bool:
    """Whether Ray Train has registered a checkpoint of a run under ``runs`` (its snapshot lists one): a
    checkpoint folder alone is not enough, rank 0 writes it before the other ranks have reported."""
    for snap in runs.glob("*/checkpoint_manager_snapshot.json"):
        with contextlib.suppress(ValueError, OSError):  # being rewritten
            if json.loads(snap.read_text())["checkpoint_results"]:
                return True
    return False


# The feature settings of ``featurised_shop``'s store: a workload on that shop must name them to select it.
SHOP_FEATURES = ("data.features.cnn_input=64", "data.features.grid=2")


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


@pytest.fixture(scope="session")
def featurised_shop(tmp_path_factory, ray_session):
    """A small validated shop with features and hot queries, and a workload on it (1 test day, a tiny
    random model); (workload, root, feature store). Do not modify."""
    from ace_ray.config import FeaturesConfig, load_workload
    from ace_ray.data import feature_store as fs
    from ace_ray.data.features import build_features
    from ace_ray.data.hot_queries import write_hot_queries
    from ace_ray.data.synth.generate import synthesize
    from ace_ray.data.validate import validate

    tmp = tmp_path_factory.mktemp("featurised")
    root = tmp / "shop"
    w0 = small_workload(root, products=300, days=4, sessions=200)
    synthesize(w0.data.synth, w0.data.clicks, root)
    validate(root)
    build_features(root, FeaturesConfig(cnn_input=64, grid=2, batch_size=32))
    write_hot_queries(root, test_days=1)
    w = load_workload(None, [f"workspace={tmp}", f"data.root={root}", "data.test_days=1", "model.init=random",
                             "model.size=tiny", "model.layers=2", *SHOP_FEATURES])  # fmt: skip
    return w, root, fs.for_workload(w)


def random_towers(w, store, out: Path):
    """Randomly initialised (seed 0) towers for ``w``'s model, saved to ``out``; (towers, out)."""
    import dataclasses

    import torch

    from ace_ray.model.towers import build_towers, save_towers

    torch.manual_seed(0)
    towers = build_towers(w, store.manifest.feature_dim, store.manifest.pixel_dim).eval()
    save_towers(towers, out, w.data.text.tokenizer, {"feature_manifest": dataclasses.asdict(store.manifest),
                                                     "preset": "acebert", "text": dataclasses.asdict(w.data.text)})  # fmt: skip
    return towers, out


@pytest.fixture(scope="session")
def served_model(featurised_shop, tmp_path_factory):
    """(workload, root, store, model dir): random towers saved as a fine-tuned model of the shop."""
    w, root, store = featurised_shop
    _, model = random_towers(w, store, tmp_path_factory.mktemp("served") / "model")
    return w, root, store, model


@pytest.fixture(scope="session")
def built_index(served_model, tmp_path_factory) -> Path:
    """The index job run for real (Ray Data actors, exact index) on the shop."""
    from ace_ray.serve.index_job import build_index_dir
    from ace_ray.serve.settings import IndexSettings

    w, root, store, model = served_model
    cfg = IndexSettings(batch_size=64, actors=1)
    return build_index_dir(model, root, store, tmp_path_factory.mktemp("indexes"), cfg, w.data.test_days)
