"""Masking for MLM (BERT's 80/10/10 rule) and masked patch modelling (masked patches zeroed, FashionBERT)."""

from __future__ import annotations

import torch

from ace_ray.model.losses import IGNORE


def mask_tokens(ids: torch.Tensor, attention: torch.Tensor, prob: float, mask_id: int, vocab: int,
                special: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Choose ``prob`` of the real, non-special tokens; of those 80% -> [MASK], 10% random, 10% kept.

    Returns (input ids, labels) where labels are -100 except at the chosen tokens.
    """
    ids = ids.long()
    candidates = attention.bool() & ~torch.isin(ids, special.to(ids.device))
    chosen = (torch.rand(ids.shape, generator=gen, device=ids.device) < prob) & candidates
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    roll = torch.rand(ids.shape, generator=gen, device=ids.device)
    out = torch.where(chosen & (roll < 0.8), torch.full_like(ids, mask_id), ids)
    random_tok = torch.randint(0, vocab, ids.shape, generator=gen, device=ids.device)
    out = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_tok, out)
    return out, labels


def mask_patches(
    patches: torch.Tensor, prob: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero ``prob`` of the patch feature vectors. Returns (masked patches, mask [B, N] bool)."""
    masked = torch.rand(patches.shape[:2], generator=gen, device=patches.device) < prob
    return patches.masked_fill(masked.unsqueeze(-1), 0.0), masked
