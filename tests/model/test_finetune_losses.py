"""The fine-tuning losses (eq. 4-6) and the gradient reversal against naive references written here."""

import math

import pytest
import torch

from ace_ray.model.losses import bidirectional_softmax_loss, domain_loss, same_product_mask
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
    same = same_product_mask(ids)
    ref = _naive_bidirectional(q.tolist(), a.tolist(), 5.0, same.tolist())
    assert float(bidirectional_softmax_loss(q, a, 5.0, same)) == pytest.approx(ref, rel=1e-5)


def test_false_negative_mask_marks_other_pairs_of_the_same_product():
    same = same_product_mask(["a", "b", "a", "c", "a"])
    assert int(same.sum()) == 6  # three pairs of "a": each sees the two others
    assert same[0, 2] and same[2, 4] and not same[0, 0] and not same[1, 3]
    # Masking a same-product "negative" that scores as high as the positive lowers the loss.
    q = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    a = q.clone()
    a[1] = a[0]
    mask = same_product_mask(["a", "a"])
    assert float(bidirectional_softmax_loss(q, a, 10.0, mask)) < float(bidirectional_softmax_loss(q, a, 10.0))


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
