"""The pretraining losses (paper eq. 1-3) and FashionBERT's adaptive loss weights.

Each loss is a plain function of tensors so that tests can check it against an independent reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100  # label of tokens that are not masked


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 1: mean cross-entropy over the masked tokens (``labels != -100``); 0 when none are masked."""
    if not (labels != IGNORE).any():
        return logits.sum() * 0.0
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE
    )


def mpm_kl_loss(predicted: torch.Tensor, true: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Eq. 2: KL(p || q) between softmax(true patch features) and softmax(predicted), over the feature
    dimension, averaged over the masked patches (``masked`` [B, N] bool); 0 when none are masked."""
    if not masked.any():
        return predicted.sum() * 0.0
    p_log = F.log_softmax(true[masked].float(), -1)
    q_log = F.log_softmax(predicted[masked].float(), -1)
    return F.kl_div(q_log, p_log, log_target=True, reduction="batchmean")


def tip_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 3: binary cross-entropy of "this image belongs to this title", mean over pairs."""
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


def adaptive_weights(losses: dict[str, torch.Tensor], shared: torch.Tensor) -> dict[str, torch.Tensor]:
    """FashionBERT's adaptive loss: minimise 1/2 ||sum w_i grad L_i||^2 + 1/2 ||w||^2 with sum w = 1, whose
    solution (gradients taken as orthogonal) is w_i ∝ 1 / (||grad L_i||^2 + 1). The gradients are taken
    at ``shared`` (the encoder output all heads read), the cheap form of the bound. Weights are constants
    (no gradient flows through them); the mean weight is 1 so the loss scale stays that of a plain sum."""
    norms = {}
    for name, loss in losses.items():
        if not loss.requires_grad:
            norms[name] = torch.zeros((), device=shared.device)
            continue
        (g,) = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
        norms[name] = torch.zeros((), device=shared.device) if g is None else g.float().pow(2).sum()
    inv = {k: 1.0 / (v + 1.0) for k, v in norms.items()}
    total = sum(inv.values())
    return {k: (v / total * len(inv)).detach() for k, v in inv.items()}


def bidirectional_softmax_loss(
    q: torch.Tensor,
    a: torch.Tensor,
    gamma: float,
    false_negatives: torch.Tensor | None = None,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 4-5: -1/W (sum_i log P(a_i|q_i) + sum_i log P(q_i|a_i)) with P a softmax over gamma * cosine
    with the batch's other pairs as negatives. ``q`` and ``a`` are L2-normalised [W, d]. Entries of
    ``false_negatives`` (True where pair j is a second positive of pair i: see
    ``objective.false_negative_mask``) are left out of both softmaxes: they are positives, not negatives.

    ``log_q`` [W]: the log of how often each product is sampled into a batch (its clicks), subtracted from
    its column of logits (the sampling-bias correction of Yi et al., RecSys 2019). In-batch negatives are
    drawn by clicks, so uncorrected the loss pushes popular products down by log Q: the model learns
    P(a|q) / Q(a) instead of P(a|q). The correction reaches the query->product softmax only: in the
    product->query one it is a constant per row."""
    with torch.autocast(q.device.type, enabled=False):  # bf16 logits would blur gamma * cosine by ~0.1
        logits = gamma * (q.float() @ a.float().T)
    if log_q is not None:
        logits = logits - log_q.to(logits.device, torch.float32)[None, :]
    if false_negatives is not None:
        logits = logits.masked_fill(false_negatives.to(logits.device), float("-inf"))
    target = torch.arange(len(q), device=logits.device)
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)


def domain_loss(d_query: torch.Tensor, d_product: torch.Tensor) -> torch.Tensor:
    """Eq. 6: cross-entropy of the domain classifier, queries labelled 1 and products 0 (logits in)."""
    return F.binary_cross_entropy_with_logits(
        d_query.float(), torch.ones_like(d_query, dtype=torch.float32)
    ) + F.binary_cross_entropy_with_logits(
        d_product.float(), torch.zeros_like(d_product, dtype=torch.float32)
    )
