"""A real cluster, not only a local Ray: two Ray nodes and an MLflow tracking server on 127.0.0.1, started by
``scripts/local_cluster.py``. ``ace-ray pretrain`` is submitted with ``ray job submit``; its two Train workers
are spread over both nodes; the second node is stopped after the first checkpoint; the run restarts from
that checkpoint on the head, finishes, and is recorded in the tracking server.

Everything cluster-side runs in subprocesses (the CLI scripts, ``ray job submit``) or over HTTP (the Jobs
and state APIs, MLflow): this process never joins that cluster, so the suite's shared local Ray is left alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import SHOP_FEATURES, checkpoint_registered

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "local_cluster.py"
STEPS, EVERY = 24, 4


def _exe(name: str) -> str | None:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


def _cluster(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout
    )


def _listed_nodes(d: Path) -> set[str]:
    """The node ids (first 12 characters) `local_cluster.py status` lists; it must exit 0 (all up)."""
    shown = _cluster("status", "--dir", str(d), timeout=60)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    return set(re.findall(r"^node (\w+)", shown.stdout, re.M))


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read().decode())


def _wait(what: str, check, timeout: float, every: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def _job_status(dashboard: str, job: str) -> str:
    return _get(f"{dashboard}/api/jobs/{job}")["status"]


def _job_logs(dashboard: str, job: str) -> str:
    return _get(f"{dashboard}/api/jobs/{job}/logs")["logs"]


@pytest.mark.skipif(sys.platform != "linux", reason="scripts/local_cluster.py finds its processes in /proc")
# 155 s on a quiet 2-core machine (cluster up 18 s): part of `make test`.
def test_a_job_on_a_two_node_cluster_survives_losing_a_node(featurised_shop, tmp_path):
    missing = [n for n in ("ray", "mlflow") if _exe(n) is None]
    if missing:
        pytest.skip(f"no {' or '.join(missing)} executable beside {sys.executable} or on PATH")
    t0 = time.time()
    d = tmp_path / "cluster"
    shared = d / "shared"
    # The data lives on the storage every node sees; a copy, as the job writes its pretraining set there.
    shop = shared / "shop"
    shutil.copytree(featurised_shop[1], shop, ignore=shutil.ignore_patterns("pretrain_sets"))
    started = _cluster("start", "--dir", str(d), "--head-cpus", "4", "--worker-cpus", "2")
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        state = json.loads((d / "cluster.json").read_text())
        dash, head, node2 = state["dashboard"], state["head_node_id"], state["worker_node_id"]
        t_up = time.time() - t0
        # As the README has it: `eval "$(local_cluster.py env --dir D)"`, then `ray job submit` takes its address
        # from RAY_ADDRESS; `local_cluster.py status` lists both nodes.
        exported = _cluster("env", "--dir", str(d))
        assert exported.returncode == 0, exported.stderr[-3000:]
        user_env = os.environ | dict(re.findall(r"^export (\w+)=(\S+)", exported.stdout, re.M))
        assert (user_env["RAY_ADDRESS"], user_env["MLFLOW_TRACKING_URI"]) == (dash, state["mlflow_uri"])
        assert _listed_nodes(d) == {head[:12], node2[:12]}
        job = "pretrain-on-two-nodes"
        # No tracking.uri: the job takes the cluster's MLFLOW_TRACKING_URI, the server.
        cmd = ["ace-ray", "pretrain", f"workspace={shared}", f"data.root={shop}", "data.test_days=1",
               *SHOP_FEATURES, "model.init=random", "model.size=tiny", "model.layers=2",
               "pretrain.train.workers=2", "pretrain.train.placement=SPREAD", "pretrain.train.batch_size=16",
               f"pretrain.train.max_steps={STEPS}", f"pretrain.train.checkpoint_every={EVERY}",
               "pretrain.train.log_every=4", "pretrain.train.warmup_steps=2", "pretrain.train.max_failures=1"]  # fmt: skip
        submitted = subprocess.run([_exe("ray"), "job", "submit", "--submission-id", job, "--no-wait", "--", *cmd],
                                   capture_output=True, text=True, timeout=120, env=user_env)  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr[-3000:]

        # Stop the second node once Ray Train has registered the first checkpoint (every rank reported it):
        # a checkpoint folder on the storage is not enough, since rank 0 writes it before rank 1 reports,
        # and a node lost in between restarts the run from step 0.
        def checkpoint():
            assert _job_status(dash, job) in ("PENDING", "RUNNING"), _job_logs(dash, job)[-5000:]
            return checkpoint_registered(shared / "runs")

        _wait("a checkpoint", checkpoint, timeout=900)
        t_ckpt = time.time() - t0
        stopped = _cluster("stop-worker", "--dir", str(d), timeout=120)
        assert stopped.returncode == 0, stopped.stderr[-3000:]
        assert _listed_nodes(d) == {head[:12]}
        _wait("the job's end", lambda: _job_status(dash, job) not in ("PENDING", "RUNNING"), timeout=900)
        logs = _job_logs(dash, job)
        assert _job_status(dash, job) == "SUCCEEDED", logs[-5000:]
        t_done = time.time() - t0

        # Where the Train workers ran, from Ray's state API: both nodes.
        actors = _get(f"{dash}/api/v0/actors?detail=true&limit=1000&filter_keys=class_name"
                      "&filter_predicates=%3D&filter_values=RayTrainWorker")["data"]["result"]["result"]  # fmt: skip
        assert {a["node_id"] for a in actors} == {head, node2}, actors

        # The run, in the tracking server.
        client = MlflowClient(state["mlflow_uri"])
        (run_dir,) = shared.glob("runs/pretrain-*")
        (run,) = client.search_runs([client.get_experiment_by_name("ace-ray").experiment_id],
                                    f"tags.ray_run_name = '{run_dir.name}'")  # fmt: skip
        assert run.info.status == "FINISHED"
        placed = {k.removeprefix("nodes_from_step_"): v.split(",") for k, v in run.data.tags.items()
                  if k.startswith("nodes_from_step_")}  # fmt: skip
        # First attempt: rank 0 and rank 1 on different nodes; after the stop: both on the head, from a
        # checkpoint, not from step 0.
        assert sorted(placed["0"]) == sorted([head, node2]), placed
        (resumed,) = [int(s) for s in placed if s != "0"]
        assert resumed >= EVERY and resumed % EVERY == 0, placed
        assert placed[str(resumed)] == [head, head], placed
        # At most the steps since that checkpoint; all of them when the stop fell between the logging of the
        # next checkpoint's step and Ray Train's registration of that checkpoint (seen on a loaded machine).
        assert run.data.metrics["steps_repeated"] <= EVERY
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
        assert max(steps) == STEPS
        model = {f.path for f in client.list_artifacts(run.info.run_id, "model")}
        assert "model/ace_ray.json" in model, model
        # Artefacts went through the server into the shared storage, not into a node's working directory.
        assert list((shared / "mlflow-artifacts").rglob("ace_ray.json"))
        print(f"cluster up {t_up:.0f} s, first checkpoint {t_ckpt:.0f} s, job done {t_done:.0f} s; "
              f"resumed from step {resumed}")  # fmt: skip
    finally:
        ended = _cluster("stop", "--dir", str(d), timeout=180)
    assert ended.returncode == 0, ended.stdout + ended.stderr
    assert not (d / "cluster.json").exists()


def test_a_second_node_that_misses_rays_start_deadline_is_started_again(tmp_path, monkeypatch):
    # Ray gives a starting node a fixed 30 s to register; on a busy 2-core machine the second node missed it
    # and the cluster test failed. The first start here exits with Ray's message; the second one registers.
    import importlib.util

    spec = importlib.util.spec_from_file_location("local_cluster", SCRIPT)
    lc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lc)
    spawned, nodes = [], [{"node_id": "head"}]
    real_spawn = lc._spawn

    def spawn(cmd, log, env):
        spawned.append(cmd)
        if len(spawned) == 1:
            return real_spawn(["sh", "-c", "echo 'Exception: The current node timed out during startup.'; exit 1"],
                              log, env)  # fmt: skip
        nodes.append({"node_id": "second"})
        return real_spawn(["sh", "-c", "exit 0"], log, env)

    monkeypatch.setattr(lc, "_spawn", spawn)
    monkeypatch.setattr(lc, "alive_nodes", lambda dashboard: list(nodes))
    state = {"id": "test", "dir": str(tmp_path), "logs": str(tmp_path), "pgids": {}, "gcs_address": "127.0.0.1:1",
             "dashboard": "http://127.0.0.1:1", "worker_cpus": 1, "worker_gpus": None, "worker_resources": "{}",
             "temp_dir": str(tmp_path), "object_store_mb": 100}  # fmt: skip
    lc.start_worker(state, {}, timeout=30)
    assert len(spawned) == 2 and state["worker_node_id"] == "second"
    assert "timed out during startup" in (tmp_path / "worker.log").read_text()
    spawned.clear()
    nodes[:] = [{"node_id": "head"}]
    monkeypatch.setattr(lc, "START_TRIES", 1)  # out of tries: the failure is raised, naming the log
    with pytest.raises(RuntimeError, match="ray worker node exited with 1.*worker.log"):
        lc.start_worker(state, {}, timeout=30)
