import pytest

from ace_ray.config import Workload
from ace_ray.runtime import outside_placement_group, run_bounded
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


def _whole_cpu_job() -> int:
    """A job whose tasks ask for a whole CPU, as Ray Data's shuffle map tasks do."""
    import ray

    return ray.get(ray.remote(num_cpus=1)(lambda: 7).remote())


@pytest.mark.ray
def test_a_job_started_in_a_quarter_cpu_placement_group_runs_outside_it(ray_session):
    """A Tune trial holds a quarter CPU in a placement group that captures its tasks: a whole-CPU task
    started there cannot be scheduled (the sweep's data-job failure); through the helper it runs."""
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = placement_group([{"CPU": 0.25}])
    ray_session.get(pg.ready(), timeout=60)
    strategy = PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)
    trial = ray_session.remote(num_cpus=0.25, scheduling_strategy=strategy)
    try:
        with pytest.raises(Exception, match="cannot fit into any bundles"):
            ray_session.get(trial(_whole_cpu_job).remote(), timeout=60)
        assert (
            ray_session.get(trial(lambda: outside_placement_group(_whole_cpu_job)).remote(), timeout=60) == 7
        )
    finally:
        remove_placement_group(pg)


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


def _synth_drawing(tmp_path, env: dict):
    """`ace-ray synth` of a shop too big to finish, in its own process, once its Ray tasks are drawing
    products (the driver then waits on them inside Ray's native code)."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    exe = Path(sys.executable).parent / "ace-ray"
    out = tmp_path / "shop"
    cmd = [str(exe), "synth", "--out", str(out), "--products", "20000", f"workspace={tmp_path}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    deadline = time.monotonic() + 120
    # (the shop is drawn into a hidden staging folder inside --out until it is published)
    while time.monotonic() < deadline and proc.poll() is None and not next(out.rglob("*.jpg"), None):
        time.sleep(0.2)
    if proc.poll() is not None:
        raise AssertionError(proc.stderr.read().decode()[-2000:])
    if not next(out.rglob("*.jpg"), None):
        proc.kill()
        raise AssertionError("no photo drawn within 120 s")
    return proc


def _stderr_after_sigterm(proc) -> str:
    """SIGTERM, then the command's stderr once it ended. It must have unwound through its own clean-up, not
    been killed by Ray's native signal handler (an abort that skips `finally` and `atexit`), and must not
    claim success."""
    import signal

    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    err = proc.stderr.read().decode()
    assert "SIGTERM received" not in err and proc.returncode in (1, 128 + signal.SIGTERM), err[-2000:]
    return err


@pytest.mark.ray
def test_sigterm_stops_the_local_ray_a_command_started(tmp_path):
    """`kill <ace-ray>` must not leave the raylet's agents and workers running without it."""
    import os

    import psutil

    proc = _synth_drawing(tmp_path, {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    try:
        started = _ray_processes(psutil.Process(proc.pid))
        assert any("raylet" in p.name() for p in started), [p.name() for p in started]
        err = _stderr_after_sigterm(proc)
        gone, alive = psutil.wait_procs(started, timeout=20)
        alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, [f"{p.pid} {p.name()}" for p in alive]
        assert "stopped by SIGTERM; shutting down the local Ray" in err, err[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_unwinds_a_command_joined_to_a_running_ray(tmp_path, ray_join_env):
    """`ray job stop` (SIGTERM) of a command on a cluster: it unwinds through its own clean-up (``finally``
    blocks, ``atexit``), not killed by Ray's native handler, and the Ray it joined goes on. (Its staging
    folder is not checked: the synth's Ray tasks outlive the driver by a moment and may write into it again.)"""
    import ray

    proc = _synth_drawing(tmp_path, ray_join_env)
    try:
        err = _stderr_after_sigterm(proc)
        assert "ace-ray: stopped by SIGTERM" in err and "local Ray" not in err, err[-2000:]
        assert ray.cluster_resources().get("CPU", 0) > 0  # the joined Ray is still there
    finally:
        if proc.poll() is None:
            proc.kill()
