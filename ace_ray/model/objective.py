"""The fine-tuning objective (paper 3, eq. 4-8) as pure functions of embeddings: the matching loss with its
false-negative mask, the domain classifier's loss, and the two ways of playing the adversarial game.

Inputs: ``q`` and ``a``, the L2-normalised query and product embeddings [W, d] of one batch of W (query,
clicked product) pairs (row i of each is a pair), and the domain classifier D (embedding -> logit of "from
the query tower").

- ``mode="none"``: the encoder minimises L_main (eq. 4-5).
- ``mode="alternating"`` (eq. 7-8): every batch the encoder minimises L_main - lambda L_adv with D frozen
  (D gets no gradient); after every ``encoder_steps`` encoder steps, D takes ``disc_steps`` steps minimising
  L_adv on that batch's embeddings, detached (the encoder gets no gradient). D's steps use no batch of their
  own, so every batch trains the encoder and the encoder's step count (and its schedule) is the same as
  without the game.
- ``mode="grl"``: one backward pass does both: D descends L_adv and, through the gradient-reversal layer,
  the encoder ascends lambda L_adv.

Training code (``ace_ray.train.finetune``) only calls these; the signs and which parameters receive
gradients in each phase are tested here without Ray (``tests/model/test_objective.py``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ace_ray.model.losses import bidirectional_softmax_loss, domain_loss
from ace_ray.model.towers import reverse_gradient

MODES = ("none", "alternating", "grl")


def false_negative_mask(product_ids: list, query_ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, int]]:
    """[W, W] bool, True off the diagonal where pair j is a second positive of pair i, not a negative: the
    same product (its product embedding is pair i's target) or the same query (token ids equal, so its query
    embedding is pair i's own; in the product->query softmax that logit would equal the target's, and the
    loss could never fall below log 2). With counts of each kind (ordered pairs)."""
    codes = {p: i for i, p in enumerate(dict.fromkeys(product_ids))}
    c = torch.tensor([codes[p] for p in product_ids])
    same_product = c[:, None] == c[None, :]
    _, q = torch.unique(query_ids, dim=0, return_inverse=True)
    same_query = q[:, None] == q[None, :]
    mask = same_product | same_query
    mask.fill_diagonal_(False)
    same_product.fill_diagonal_(False)
    same_query.fill_diagonal_(False)
    counts = {"false_negatives": int(mask.sum()), "fn_same_product": int(same_product.sum()),
              "fn_same_query": int((same_query & ~same_product).sum())}  # fmt: skip
    return mask, counts


def other_category_mask(categories: list) -> torch.Tensor:
    """[W, W] bool, True where pair j's product is of another category than pair i's: left out of a softmax,
    it keeps only the same-category negatives (``finetune.image_negatives=same_category``)."""
    codes = {c: i for i, c in enumerate(dict.fromkeys(categories))}
    c = torch.tensor([codes[x] for x in categories])
    return c[:, None] != c[None, :]


def inbatch_accuracy(q: torch.Tensor, a: torch.Tensor, mask: torch.Tensor | None) -> float:
    """Share of queries whose own product scores highest among the batch's negatives (the masked second
    positives are left out, as in the loss)."""
    with torch.no_grad():
        logits = q.float() @ a.float().T
        if mask is not None:
            logits = logits.masked_fill(mask.to(logits.device), float("-inf"))
        return float((logits.argmax(1) == torch.arange(len(q), device=q.device)).float().mean())


@contextlib.contextmanager
def frozen(module: torch.nn.Module | None):
    """D's parameters take no gradient inside (gradients still flow through D to its inputs)."""
    params = [p for p in module.parameters() if p.requires_grad] if module is not None else []
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@dataclass(frozen=True)
class Objective:
    """The fine-tuning objective of one preset (``finetune.gamma`` and ``finetune.adversarial.*``)."""

    gamma: float
    mode: str = "none"
    weight: float = 0.1  # lambda
    encoder_steps: int = 5  # k
    disc_steps: int = 1
    image_weight: float = 0.0  # finetune.image_loss_weight

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(
                f"finetune.adversarial.mode: unknown mode {self.mode!r}; one of {', '.join(MODES)}"
            )

    @classmethod
    def from_config(cls, ft) -> Objective:
        adv = ft.adversarial
        return cls(ft.gamma, adv.mode, adv.weight, adv.encoder_steps, adv.disc_steps, ft.image_loss_weight)

    def encoder_loss(self, q: torch.Tensor, a: torch.Tensor, disc: torch.nn.Module | None,
                     mask: torch.Tensor | None = None, image: torch.Tensor | None = None,
                     image_mask: torch.Tensor | None = None,
                     log_q: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
        """What one backward pass of an encoder step minimises, and its parts (``main``; with ``image``, the
        products' image vectors alone, also ``image`` = the same matching loss with them in place of ``a``
        and ``image_mask`` (default ``mask``) as its mask, weighted by ``image_weight``; with a game also
        ``adv`` = L_adv and D's logits ``dq``, ``da``). ``log_q``: the products' log sampling frequencies,
        subtracted from their logits in both matching losses (``finetune.logq_correction``)."""
        main = bidirectional_softmax_loss(q, a, self.gamma, mask, log_q)
        parts, match = {"main": main}, main
        if image is not None and self.image_weight:
            image_mask = mask if image_mask is None else image_mask
            parts["image"] = bidirectional_softmax_loss(q, image, self.gamma, image_mask, log_q)
            match = main + self.image_weight * parts["image"]
        if self.mode == "none":
            return match, parts
        if self.mode == "alternating":
            with frozen(disc):
                dq, da = disc(q), disc(a)
            adv = domain_loss(dq, da)
            return match - self.weight * adv, {**parts, "adv": adv, "dq": dq, "da": da}
        dq, da = disc(reverse_gradient(q, self.weight)), disc(reverse_gradient(a, self.weight))
        adv = domain_loss(dq, da)
        # D descends L_adv; the reversal makes the encoder ascend lambda * L_adv.
        return match + adv, {**parts, "adv": adv, "dq": dq, "da": da}

    def disc_loss(self, q: torch.Tensor, a: torch.Tensor, disc: torch.nn.Module) -> torch.Tensor:
        """L_adv for a discriminator step: embeddings detached, so only D learns from it."""
        return domain_loss(disc(q.detach()), disc(a.detach()))

    def disc_due(self, encoder_step: int) -> bool:
        """Whether D takes its separate steps after encoder step ``encoder_step`` (1-based): alternating
        mode, after every ``encoder_steps`` encoder steps."""
        return self.mode == "alternating" and encoder_step % self.encoder_steps == 0

    def steps_disc_with_encoder(self) -> bool:
        """Whether D steps on the gradient of every encoder backward pass (gradient reversal)."""
        return self.mode == "grl"


def game_stats(q: torch.Tensor, a: torch.Tensor, dq: torch.Tensor | None = None,
               da: torch.Tensor | None = None) -> dict[str, float]:  # fmt: skip
    """What shows whether the adversarial game is healthy: D's accuracy (0.5 = embeddings it cannot tell
    apart) and the distance between the query and product centroids (the representation gap)."""
    out = {"centroid_gap": float((q.detach().mean(0) - a.detach().mean(0)).norm())}
    if dq is not None:
        out["d_acc"] = float(((dq.detach() > 0).float().mean() + (da.detach() < 0).float().mean()) / 2)
    return out
