"""Resume as a user does it: a fine-tuning started with `ace-ray finetune` is interrupted (Ctrl-C) after a
checkpoint and continued with `ace-ray finetune --resume RUN`. The resumed run consumes exactly the batches
of an unbroken run on both workers (the logged batch fingerprints), and ends with the same weights. The unbroken
run is registered with `--register`, and `models:/NAME@candidate` resolves to its model."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
import pytest
import torch
from safetensors.torch import load_file

from ace_ray.cli import main
from ace_ray.serve.index_dir import model_hash
from ace_ray.serve.models import resolve_model
from tests.conftest import SHOP_FEATURES, checkpoint_registered, train_worker_processes

pytestmark = pytest.mark.ray

STEPS = 16


def _args(shop: Path, workspace: Path) -> list[str]:
    return ["finetune", "--preset", "acebert", "--root", str(shop), "--workers", "2", f"workspace={workspace}",
            "data.test_days=1", "data.batches.batch_size=16", "data.batches.partitions=4", "model.init=random",
            "model.size=tiny", "model.layers=2", "finetune.train.lr=0.002", "finetune.train.warmup_steps=3",
            f"finetune.train.max_steps={STEPS}", "finetune.train.checkpoint_every=4", "finetune.train.log_every=4",
            "finetune.adversarial.encoder_steps=2", "finetune.adversarial.disc_lr_schedule=encoder",
            "finetune.hot_query_dropout=0.3", "finetune.hot_query_leave_out=0.5",
            "finetune.hot_query_leave_one_out=true", "finetune.logq_correction=1",
            *SHOP_FEATURES]  # fmt: skip


def _run_dir(workspace: Path) -> Path:
    (run,) = [p for p in (workspace / "runs").iterdir() if p.is_dir()]
    return run


def _final_model(run_id: str, tmp: Path) -> dict[str, torch.Tensor]:
    model = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model", dst_path=str(tmp)))
    weights = {f"bert.{k}": v for k, v in load_file(str(model / "model.safetensors")).items()}
    return weights | load_file(str(model / "multimodal.safetensors"))


def _latest(run_id: str, key: str) -> dict[int, float]:
    """Per step, the value logged last (a resumed run logs again the steps it redoes)."""
    hist = sorted(mlflow.MlflowClient().get_metric_history(run_id, key), key=lambda m: m.timestamp)
    return {m.step: m.value for m in hist}


def _run_id(name: str) -> str:
    (run,) = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.ray_run_name = '{name}'",
                                output_format="list")  # fmt: skip
    return run.info.run_id


def test_an_interrupted_cli_run_resumes_to_the_unbroken_runs_batches_and_weights(
    featurised_shop, tmp_path, ray_join_env, monkeypatch
):
    shop = featurised_shop[1]
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    monkeypatch.setenv("ACE_RAY_MODEL_CACHE", str(tmp_path / "model_cache"))
    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    # The unbroken run is also registered, as the README ships a model: `finetune --register NAME`.
    assert main(["finetune", "--register", "shop", *_args(shop, unbroken)[1:]]) == 0

    # The same command in its own process (joining the session's Ray), stopped with Ctrl-C once its first
    # checkpoint is registered. Its workers outlive the driver by a second or two (the session's Ray ends them
    # when it sees the driver gone), enough to finish this short run, so they are frozen first: the run stops
    # where the Ctrl-C found it.
    cli = [sys.executable, "-m", "ace_ray.cli", *_args(shop, broken)]
    proc = subprocess.Popen(cli, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=ray_join_env)  # fmt: skip
    frozen = []
    try:
        deadline = time.time() + 900  # generous: a loaded machine is slow, an idle one takes ~30 s
        while time.time() < deadline and not checkpoint_registered(broken / "runs"):
            assert proc.poll() is None, "the run ended before it was interrupted"
            time.sleep(0.05)
        assert checkpoint_registered(broken / "runs"), "no checkpoint within 900 s"
        frozen = train_worker_processes()
        for p in frozen:
            p.suspend()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for p in frozen:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
    name = _run_dir(broken).name
    interrupted = _run_id(name)
    steps_before = max(_latest(interrupted, "loss"))
    assert steps_before < STEPS, "the run was not interrupted"

    assert main(["finetune", "--resume", name, *_args(shop, broken)[1:]]) == 0
    assert _run_id(name) == interrupted  # the same MLflow run continued
    assert min(_latest(interrupted, "resumed_from_step").values()) >= 4
    good = _run_id(_run_dir(unbroken).name)
    for key in ("data_r0", "data_r1", "d_lr"):  # D's learning-rate schedule continued, not restarted
        assert _latest(interrupted, key) == _latest(good, key), key  # exactly the same batches, step by step
    assert _latest(interrupted, "disc_steps")[STEPS] == _latest(good, "disc_steps")[STEPS] == STEPS // 2
    a, b = _final_model(good, tmp_path / "a"), _final_model(interrupted, tmp_path / "b")
    # What `serve --model models:/shop@candidate` serves: the unbroken run's model.
    registered, run_id = resolve_model("models:/shop@candidate")
    assert run_id == good and model_hash(registered) == model_hash(tmp_path / "a" / "model")
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-5, worst
    # Resuming with other settings than the run's is refused, naming them.
    assert main(["finetune", "--resume", name, *_args(shop, broken)[1:], "finetune.gamma=10"]) == 2
