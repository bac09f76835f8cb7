"""Search spaces: the shipped ones load; a bad space is refused before any trial, naming the key."""

from pathlib import Path

import pytest

from ace_ray.config import ConfigError, load_workload
from ace_ray.tune.space import load_space
from ace_ray.tune.sweep import concurrency

SPACES = sorted(Path(__file__).resolve().parents[2].glob("tune_spaces/*.yaml"))


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_shipped_spaces_load_against_the_quickstart_workload(path):
    space = load_space(path, load_workload("workloads/quickstart.yaml"))
    assert space.trials() >= 4 and space.metric == "val_recall_at_100"


def _space(tmp_path, body: str) -> Path:
    f = tmp_path / "space.yaml"
    f.write_text("name: t\n" + body)
    return f


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "params:\n  finetune.gama: {grid: [1, 2]}\n",
            r"params\.finetune\.gama: unknown key 'finetune\.gama'; did you mean 'gamma'",
        ),
        (
            "params:\n  data.batches.partitions: {grid: [1, ten]}\n",
            r"params\.data\.batches\.partitions: .*expected an integer, got 'ten'",
        ),
        (
            "params:\n  finetune.adversarial.mode: {choice: []}\n",
            r"params\.finetune\.adversarial\.mode: choice has no values",
        ),
        (
            "params:\n  finetune.gamma: {uniform: [-1.0, 5.0]}\n",
            r"params\.finetune\.gamma: finetune\.gamma: must be > 0, got -1\.0",
        ),
        (
            "params:\n  data.batches.partitions: {randint: [-3, 5]}\n",
            r"data\.batches\.partitions: must be >= 1, got -3",
        ),
        ("params:\n  finetune.train.lr: {loguniform: [0.01, 0.001]}\n", r"bounds must be low < high"),
        ("params:\n  finetune.train.lr: {loguniform: [0, 0.001]}\n", r"loguniform bounds must be > 0"),
        ("params:\n  finetune.gamma: {normal: [1, 2]}\n", r"unknown distribution 'normal'"),
        (
            "params:\n  finetune.adversarial.mode: {grid: [alternating, minimax]}\n",
            r"'minimax' is not one of",
        ),
        (
            "search: optuna\nparams:\n  finetune.gamma: {grid: [10, 20]}\n",
            r"grid values need search: grid or random",
        ),
        (
            "scheduler: hyperband\nparams:\n  finetune.gamma: {grid: [10]}\n",
            r"scheduler: 'hyperband' is not one of",
        ),
        ("params: {}\n", r"a sweep needs at least one searched key"),
        (
            "compare: [twinbrt]\nparams:\n  finetune.gamma: {grid: [10]}\n",
            r"compare: unknown preset 'twinbrt'; one of twinbert",
        ),
        ("params:\n  finetune.gamma: {grid: [10]}\nfixed: [finetune.preset=twinbert]\n", r"--preset NAME"),
        (
            "params:\n  finetune.gamma: {grid: [10]}\nfixed: [finetune.train.batch_size=8]\n",
            r"fixed: unknown key",
        ),
    ],
)
def test_bad_spaces_are_refused_naming_the_key(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message):
        load_space(_space(tmp_path, body), load_workload(None))


def test_trials_at_once_follow_the_free_cpus(tmp_path):
    space = load_space(
        _space(tmp_path, "params:\n  finetune.gamma: {grid: [1, 2, 3, 4, 5, 6, 7, 8]}\n"), load_workload(None)
    )
    one = load_workload(None, ["finetune.train.workers=1"])
    assert concurrency(space, one, 4) == 2  # 1 CPU for the batches' Ray Data jobs, 1.25 per trial
    assert concurrency(space, one, 64) == 8  # never more than there are trials
    assert (
        concurrency(space, load_workload(None, ["finetune.train.workers=2"]), 4) == 1
    )  # never fewer than one
    space.max_concurrent = 3
    assert concurrency(space, one, 64) == 3
