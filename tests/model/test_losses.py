"""Each pretraining loss against a naive reference written independently here."""

import math

import numpy as np
import pytest
import torch

from ace_ray.model.losses import IGNORE, adaptive_weights, mlm_loss, mpm_kl_loss, tip_loss
from ace_ray.model.masking import mask_patches, mask_tokens


def test_mlm_loss_is_mean_cross_entropy_over_masked_tokens():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=g)
    labels = torch.full((3, 5), IGNORE)
    labels[0, 1], labels[2, 4], labels[1, 0] = 3, 6, 0
    ref, n = 0.0, 0
    for b in range(3):
        for t in range(5):
            if labels[b, t] != IGNORE:
                row = logits[b, t].tolist()
                log_z = math.log(sum(math.exp(v) for v in row))
                ref += log_z - row[int(labels[b, t])]
                n += 1
    assert float(mlm_loss(logits, labels)) == pytest.approx(ref / n, rel=1e-5)
    assert float(mlm_loss(logits, torch.full((3, 5), IGNORE))) == 0.0


def test_mpm_is_kl_of_softmaxed_features_over_masked_patches():
    g = torch.Generator().manual_seed(1)
    pred, true = torch.randn(2, 4, 6, generator=g), torch.randn(2, 4, 6, generator=g)
    masked = torch.tensor([[True, False, False, True], [False, False, True, False]])
    ref = []
    for b, i in zip(*np.nonzero(masked.numpy()), strict=True):
        p = np.exp(true[b, i].numpy()) / np.exp(true[b, i].numpy()).sum()
        q = np.exp(pred[b, i].numpy()) / np.exp(pred[b, i].numpy()).sum()
        ref.append(float((p * np.log(p / q)).sum()))
    assert float(mpm_kl_loss(pred, true, masked)) == pytest.approx(np.mean(ref), rel=1e-5)
    assert float(mpm_kl_loss(true, true, masked)) == pytest.approx(0.0, abs=1e-6)


def test_tip_is_binary_cross_entropy():
    logits, y = torch.tensor([2.0, -1.0, 0.3, -4.0]), torch.tensor([1.0, 0.0, 0.0, 1.0])
    ref = []
    for z, t in zip(logits.tolist(), y.tolist(), strict=True):
        p = 1 / (1 + math.exp(-z))
        ref.append(-(t * math.log(p) + (1 - t) * math.log(1 - p)))
    assert float(tip_loss(logits, y)) == pytest.approx(sum(ref) / 4, rel=1e-6)


def test_adaptive_weights_favour_the_loss_with_the_smaller_gradient():
    shared = torch.randn(4, 3, requires_grad=True)
    small, big = (0.1 * shared).sum(), (10.0 * shared).sum()  # gradient norms^2: 0.12 and 1200
    w = adaptive_weights({"small": small, "big": big}, shared)
    inv_small, inv_big = 1 / (0.01 * 12 + 1), 1 / (100.0 * 12 + 1)
    assert float(w["small"]) == pytest.approx(2 * inv_small / (inv_small + inv_big), rel=1e-5)
    assert float(w["small"] + w["big"]) == pytest.approx(2.0)
    assert not w["small"].requires_grad


def test_token_masking_follows_bert_and_spares_special_and_padding():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (200, 30), generator=g)
    ids[:, 0], ids[:, 20] = 101, 102  # [CLS] ... [SEP]
    attn = torch.ones_like(ids)
    attn[:, 21:] = 0
    out, labels = mask_tokens(ids, attn, 0.15, 103, 30522, torch.tensor([0, 101, 102, 103]), g)
    chosen = labels != IGNORE
    assert not chosen[:, 0].any() and not chosen[:, 20:].any()
    share = chosen.sum() / (attn.sum() - 2 * 200)
    assert 0.13 < share < 0.17
    assert ((out == 103) & chosen).sum() / chosen.sum() == pytest.approx(0.8, abs=0.04)
    assert (out[~chosen] == ids[~chosen]).all() and (labels[chosen] == ids[chosen]).all()


def test_patch_masking_zeroes_the_chosen_patches():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(50, 16, 8) + 0.1
    out, masked = mask_patches(p, 0.25, g)
    assert (out[masked] == 0).all() and (out[~masked] == p[~masked]).all()
    assert 0.2 < masked.float().mean() < 0.3
