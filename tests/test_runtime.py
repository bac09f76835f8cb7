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


def _ray_processes(proc) -> list:
    """The Ray processes a command started: its descendants (raylet, GCS, agents, workers)."""
    return [p for p in proc.children(recursive=True) if p.is_running()]


@pytest.mark.ray
def test_sigterm_stops_the_local_ray_a_command_started(tmp_path):
    """`kill <ace-ray>` must not leave the raylet's agents and workers running without it."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import psutil

    exe = Path(sys.executable).parent / "ace-ray"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [str(exe), "synth", "--out", str(tmp_path / "shop"), "--products", "20000", f"workspace={tmp_path}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        driver, deadline = psutil.Process(proc.pid), time.monotonic() + 120
        # Wait until Ray tasks are drawing products (the driver waits on them inside Ray's native code).
        while time.monotonic() < deadline and proc.poll() is None:
            # (the shop is drawn into a hidden staging folder inside --out until it is published)
            if next((tmp_path / "shop").rglob("*.jpg"), None):
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        started = _ray_processes(driver)
        assert any("raylet" in p.name() for p in started), [p.name() for p in started]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        gone, alive = psutil.wait_procs(started, timeout=20)
        alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, [f"{p.pid} {p.name()}" for p in alive]
        # It unwound through its own clean-up, not killed by Ray's native signal handler (an abort that
        # skips `atexit` and so `ray.shutdown`), and does not claim success.
        err = proc.stderr.read().decode()
        assert "stopped by SIGTERM; shutting down the local Ray" in err, err[-2000:]
        assert "SIGTERM received" not in err and proc.returncode in (1, 128 + signal.SIGTERM), err[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
