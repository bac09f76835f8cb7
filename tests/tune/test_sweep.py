"""A real sweep as a user runs it: `ace-ray tune` in its own process, killed after its first finished
trial, continued with `ace-ray tune --resume`. Finished trials are kept, ASHA stops the weak ones early,
MLflow holds a parent run and a child per trial, no trial reads a test day, the best config is a workload
that fine-tuning accepts, and the test days are read once, by the best config, at the end."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import mlflow
import pandas as pd
import pytest
import yaml

from ace_ray.cli import main
from ace_ray.data.clicks import first_test_day
from tests.conftest import SHOP_FEATURES

pytestmark = pytest.mark.ray

# A learning rate that learns and one that cannot, in that order and one at a time. The sweep is killed
# after the first; the weak one runs after the resume, so ASHA stops it only if the resumed sweep kept the
# first trial's rung records (alone at its rung, it would have nothing to be cut against). Recall@10: on the
# ~130-product validation pool Recall@100 is ~0.77 by chance. 8 steps, reports every 2: the kill can come
# after the weak trial's first checkpoint (Tune sees the first trial finished only when it next saves its
# state), and the resumed trial then continues from step 2; its next report must still be before its end.
SPACE = """name: smoke
metric: val_recall_at_10
mode: max
search: grid
scheduler: asha
asha: {grace_period: 1, reduction_factor: 2}
max_concurrent: 1
compare: [cebert]
params:
  finetune.train.lr: {grid: [0.004, 1.0e-9]}
fixed: [data.val_days=1, finetune.val_k=10, finetune.train.max_steps=8, finetune.train.checkpoint_every=2]
"""


def _args(shop: Path, workspace: Path) -> list[str]:
    return [f"workspace={workspace}", f"data.root={shop}", "data.test_days=1", "model.init=random",
            "model.size=tiny", "model.layers=2", "data.batches.batch_size=32", "data.batches.partitions=4",
            "finetune.preset=twinbert", "finetune.train.workers=1", "finetune.train.warmup_steps=1",
            "eval.baselines=[random]", "eval.map_points=100", "eval.embed_actors=1", *SHOP_FEATURES]  # fmt: skip


def _terminated(root: Path) -> set[str]:
    """Trial ids that Tune's saved experiment state records as finished (what a resume keeps)."""
    done = set()
    for state in root.glob("runs/tune/*/experiment_state-*.json"):
        try:
            entries = json.loads(state.read_text())["trial_data"]
        except (ValueError, KeyError, OSError):
            continue  # being written
        for entry in entries:
            trial = json.loads(entry[0]) if isinstance(entry, list) else entry
            trial = json.loads(trial) if isinstance(trial, str) else trial
            if trial.get("status") == "TERMINATED":
                done.add(trial["trial_id"])
    return done


def _children(parent: str) -> list:
    return mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"tags.mlflow.parentRunId = '{parent}'")  # fmt: skip


def test_a_killed_sweep_resumes_keeping_its_finished_trials(featurised_shop, tmp_path, capsys, ray_join_env):
    shop = featurised_shop[1]
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    (tmp_path / "space.yaml").write_text(SPACE)
    cli = [
        sys.executable,
        "-m",
        "ace_ray.cli",
        "tune",
        "--space",
        str(tmp_path / "space.yaml"),
        *_args(shop, tmp_path),
    ]
    log = tmp_path / "sweep.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            cli, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=ray_join_env
        )
    finished = []
    try:
        deadline = time.time() + 900
        while time.time() < deadline and not finished:
            assert proc.poll() is None, "the sweep ended before it was killed:\n" + log.read_text()[-3000:]
            done = _terminated(tmp_path)
            runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                      filter_string="tags.stage = 'finetune'")  # fmt: skip
            finished = [r for r in runs if r.data.tags.get("tune_trial_id") in done]
            time.sleep(1)
        assert finished, "no trial finished within 900 s:\n" + log.read_text()[-3000:]
        # Ctrl-C: Tune saves its state and returns; a partial sweep must neither pick a best nor read the test days.
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the command is left
        proc.wait(timeout=30)
    assert "ace-ray tune --resume" in log.read_text()
    (sweep,) = (tmp_path / "runs" / "tune").iterdir()
    assert not (sweep / "final.json").exists() and not (sweep / "best.yaml").exists()
    first = finished[0]

    capsys.readouterr()
    assert main(["tune", "--resume", str(sweep), *_args(shop, tmp_path)]) == 0
    # The resumed sweep's progress lines count the trials finished before it stopped.
    assert "[tune] 2/2 trials" in capsys.readouterr().out

    (parent,) = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                   filter_string="tags.stage = 'tune'")  # fmt: skip
    children = [c for c in _children(parent.info.run_id) if "tune_trial_id" in c.data.tags]
    trial_ids = [c.data.tags["tune_trial_id"] for c in children]
    assert len(trial_ids) == len(set(trial_ids)) == 2  # one child run per trial, none run twice
    kept = next(c for c in children if c.info.run_id == first.info.run_id)
    assert kept.info.end_time == first.info.end_time  # the finished trial was not run again
    table = pd.read_csv(sweep / "trials.csv")
    assert len(table) == 2, table
    # The weak trial ran after the resume and was stopped against the first trial's rung records.
    assert list(table.loc[table["stopped_early"], "finetune.train.lr"]) == [1e-9], table
    assert (sweep / "scheduler_state.pkl").is_file()
    early = [c for c in children if c.data.tags["stopped_early"] == "true"]
    assert early and all(c.info.status == "KILLED" for c in early)
    # No trial read a test-day click: each trained before the validation day and validated before the test day.
    val_day, test_day = first_test_day(shop, 2).isoformat(), first_test_day(shop, 1).isoformat()
    assert {c.data.tags["train_until"] for c in children} == {val_day}
    assert {c.data.tags["validation_days"] for c in children} == {f"{val_day}..{test_day}"}
    # The best config is a complete workload that fine-tuning accepts as it is; it trains on the validation
    # day too, and it was evaluated once on the test day.
    best = yaml.safe_load((sweep / "best.yaml").read_text())
    assert best["finetune"]["train"]["lr"] == 0.004 and best["data"]["val_days"] == 0
    assert main(["config", "--workload", str(sweep / "best.yaml")]) == 0
    report = (sweep / "report.md").read_text()
    assert "on the test days (read once)" in report
    # Every trial's curve is drawn, also after the report is rewritten with the test days' figures: the
    # lines are the only saturated pixels (axes, text and background are grey).
    rgb = matplotlib.image.imread(sweep / "curves.png")[..., :3]
    assert ((rgb.max(-1) - rgb.min(-1)) > 0.3).sum() > 500
    final = mlflow.get_run(parent.info.run_id).data.metrics
    assert "test/twinbert/recall_at_100" in final and final["stopped_early"] >= 1
    # Beside it, the compared preset, trained with the best settings and evaluated the same way.
    assert "test/cebert/recall_at_100" in final and "| cebert |" in report
