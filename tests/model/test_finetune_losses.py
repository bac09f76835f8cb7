"""The fine-tuning losses (eq. 4-6) and the gradient reversal against naive references written here."""

import math

import pytest
import torch

from ace_ray.model.losses import bidirectional_softmax_loss, domain_loss
from ace_ray.model.objective import false_negative_mask
from ace_ray.model.towers import reverse_gradient


def _naive_bidirectional(q, a, gamma, same):
    """-1/W (sum_i log P(a_i|q_i) + sum_i log P(q_i|a_i)), leaving out j with same[i][j]."""
    w = len(q)
    cos = [[sum(x * y for x, y in zip(q[i], a[j], strict=True)) for j in range(w)] for i in range(w)]
    total = 0.0
    for i in range(w):
        den_q = sum(math.exp(gamma * cos[i][j]) for j in range(w) if not same[i][j])
        den_a = sum(math.exp(gamma * cos[j][i]) for j in range(w) if not same[i][j])
        total += math.log(math.exp(gamma * cos[i][i]) / den_q) + math.log(math.exp(gamma * cos[i][i]) / den_a)
    return -total / w


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bidirectional_softmax_matches_the_naive_sum(seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    a = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    none = [[False] * 6 for _ in range(6)]
    ref = _naive_bidirectional(q.tolist(), a.tolist(), 5.0, none)
    assert float(bidirectional_softmax_loss(q, a, 5.0)) == pytest.approx(ref, rel=1e-5)
    ids = ["p1", "p2", "p1", "p3", "p2", "p1"]
    same, _ = false_negative_mask(ids, torch.arange(6)[:, None])
    ref = _naive_bidirectional(q.tolist(), a.tolist(), 5.0, same.tolist())
    assert float(bidirectional_softmax_loss(q, a, 5.0, same)) == pytest.approx(ref, rel=1e-5)


def test_domain_loss_is_the_cross_entropy_of_eq_6():
    dq, da = torch.tensor([0.3, -1.0]), torch.tensor([2.0, 0.1, -0.5])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    ref = -sum(math.log(sig(x)) for x in dq.tolist()) / 2 - sum(math.log(1 - sig(x)) for x in da.tolist()) / 3
    assert float(domain_loss(dq, da)) == pytest.approx(ref, rel=1e-6)


def test_gradient_reversal_flips_and_scales_the_gradient_only():
    x = torch.randn(4, 3, requires_grad=True)
    y = reverse_gradient(x, 0.5)
    assert torch.equal(y, x)
    (y * torch.arange(3.0)).sum().backward()
    assert torch.allclose(x.grad, -0.5 * torch.arange(3.0).expand(4, 3))


def test_bidirectional_softmax_keeps_float32_logits_under_bf16_autocast():
    """Training autocasts to bf16 (GPUs, CPUs with bf16 instructions); the matching loss must not: gamma
    times a bf16 cosine is off by ~0.1."""
    g = torch.Generator().manual_seed(3)
    q = torch.nn.functional.normalize(torch.randn(16, 32, generator=g), dim=-1)
    a = torch.nn.functional.normalize(q + 0.3 * torch.randn(16, 32, generator=g), dim=-1)
    none = [[False] * 16 for _ in range(16)]
    ref = _naive_bidirectional(q.tolist(), a.tolist(), 20.0, none)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = bidirectional_softmax_loss(q, a, 20.0)
    assert loss.dtype == torch.float32 and float(loss) == pytest.approx(ref, rel=1e-5)
