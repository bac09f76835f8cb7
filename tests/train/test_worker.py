"""What every training worker sets up: where it autocasts to bf16, and the attention that suits it."""

import pytest
import torch

from ace_ray.config import load_workload
from ace_ray.model.towers import build_towers
from ace_ray.train import worker

CPU = torch.device("cpu")


@pytest.fixture
def bf16_cpu(monkeypatch):
    """Pretend this CPU has, or lacks, bf16 instructions."""

    def pretend(has: bool):
        monkeypatch.setattr(worker, "cpu_multiplies_bf16", lambda: has)

    return pretend


def test_autocast_to_bf16_only_where_asked_and_the_cpu_multiplies_it(bf16_cpu):
    x = torch.randn(4, 8)
    bf16_cpu(True)
    assert worker.uses_bf16(CPU, True) and not worker.uses_bf16(CPU, False)
    with worker.autocast(CPU, True):
        assert (x @ x.T).dtype == torch.bfloat16
    with worker.autocast(CPU, False):
        assert (x @ x.T).dtype == torch.float32
    bf16_cpu(False)  # emulated bf16 would be slower than float32
    assert not worker.uses_bf16(CPU, True)
    with worker.autocast(CPU, True):
        assert (x @ x.T).dtype == torch.float32


def _towers():
    w = load_workload(
        None, ["model.init=random", "model.size=tiny", "model.layers=2", "finetune.fusion=additive"]
    )
    torch.manual_seed(0)
    return build_towers(w, 12, 48).eval()


def test_cpu_bf16_switches_to_eager_attention_with_the_same_outputs(bf16_cpu):
    towers = _towers()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 2000, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    batch = {"query_ids": ids, "query_mask": mask, "title_ids": ids, "title_mask": mask,
             "patches": torch.randn(3, 4, 12, generator=g), "pixels": torch.randn(3, 5, 48, generator=g)}  # fmt: skip
    with torch.inference_mode():
        before = towers(batch)
    bf16_cpu(False)
    worker.suit_attention(towers, CPU, True)
    assert towers.encoder.bert.config._attn_implementation != "eager"
    bf16_cpu(True)
    worker.suit_attention(towers, CPU, True)
    assert towers.encoder.bert.config._attn_implementation == "eager"
    with torch.inference_mode():
        after = towers(batch)
    for x, y in zip(before, after, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_the_layers_that_read_the_photo_step_at_their_own_learning_rate():
    towers = _towers()
    cfg = load_workload(None, ["finetune.train.lr=0.001", "finetune.train.image_lr_scale=10",
                               "finetune.train.warmup_steps=0"]).finetune.train  # fmt: skip
    opt, sched = worker.optimizer_and_schedule(towers, cfg, total_steps=10)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    named = dict(towers.named_parameters())
    image = [n for n in named if n.split(".")[-2] in worker.IMAGE_PARAMS]
    assert {n.split(".")[-2] for n in image} == set(worker.IMAGE_PARAMS)
    assert {lr_of[id(named[n])] for n in image} == {0.01}
    assert {lr_of[id(p)] for n, p in named.items() if n not in image} == {0.001}
    assert len(lr_of) == len(named)  # every parameter is in exactly one group
    # Decay still applies by kind, and the schedule scales every group alike.
    assert {g["weight_decay"] for g in opt.param_groups if any(p.ndim < 2 for p in g["params"])} == {0.0}
    opt.step()
    sched.step()
    assert sorted({g["lr"] for g in opt.param_groups}) == pytest.approx([0.0009, 0.009])
