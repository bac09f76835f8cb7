import pytest

from ace_ray.config import Workload
from ace_ray.runtime import run_bounded
from ace_ray.tracking import tracking_uri


@pytest.mark.ray
def test_local_ray_listens_on_loopback_only(ray_session):
    assert ray_session.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert all(n["NodeManagerAddress"] == "127.0.0.1" for n in ray_session.nodes())


@pytest.mark.ray
def test_run_bounded_keeps_item_order(ray_session):
    @ray_session.remote
    def square(x):
        import time

        time.sleep(0.05 * (5 - x))  # finish out of order
        return x * x

    assert run_bounded(lambda x: square.remote(x), list(range(6)), workers=2) == [0, 1, 4, 9, 16, 25]


def test_tracking_uri_default_is_absolute_sqlite_in_workspace(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    wl = Workload(workspace=str(tmp_path))
    assert tracking_uri(wl) == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/m.db")
    assert tracking_uri(wl) == "sqlite:////elsewhere/m.db"
    wl.tracking.uri = "http://127.0.0.1:5000"
    assert tracking_uri(wl) == "http://127.0.0.1:5000"
