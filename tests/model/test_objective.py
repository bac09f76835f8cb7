"""The fine-tuning objective without Ray: false negatives (same product, same query), and for each way of
playing the adversarial game, which parameters get gradients and in which direction, against gradients
computed here from the losses' definitions."""

import math

import pytest
import torch
import torch.nn.functional as F

from ace_ray.model.losses import bidirectional_softmax_loss, domain_loss
from ace_ray.model.objective import Objective, false_negative_mask, inbatch_accuracy, other_category_mask
from ace_ray.model.towers import DomainClassifier


def test_false_negatives_are_same_product_or_same_query_pairs():
    queries = torch.tensor([[101, 7, 102], [101, 8, 102], [101, 7, 102], [101, 9, 102], [101, 7, 102]])
    mask, counts = false_negative_mask(["a", "b", "c", "b", "a"], queries)
    want = torch.zeros(5, 5, dtype=torch.bool)
    for i, j in [(0, 2), (0, 4), (2, 4), (1, 3)]:  # query 7 three times (0, 2, 4); product b twice (1, 3)
        want[i, j] = want[j, i] = True
    assert torch.equal(mask, want)
    # (0, 4) is both: counted once, as a same-product pair
    assert counts == {"false_negatives": 8, "fn_same_product": 4, "fn_same_query": 4}


def test_a_duplicate_query_no_longer_holds_the_loss_above_log_2():
    # Pairs 0 and 1 share the query text and click different products: with perfect embeddings the
    # product->query softmax of product 1 still sees pair 0's identical query as a "negative".
    q = F.normalize(torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]), dim=-1)
    a = q.clone()
    ids = torch.tensor([[5], [5], [6], [7]])
    unmasked = float(bidirectional_softmax_loss(q, a, 50.0))
    mask, counts = false_negative_mask(["p0", "p1", "p2", "p3"], ids)
    masked = float(bidirectional_softmax_loss(q, a, 50.0, mask))
    assert counts["fn_same_query"] == 2
    assert unmasked > math.log(2) and masked < 1e-6
    # The in-batch accuracy counts the same positives: the duplicate query's tie no longer counts as a miss.
    assert inbatch_accuracy(q, a, None) == 0.75 and inbatch_accuracy(q, a, mask) == 1.0


class ToyTowers(torch.nn.Module):
    """Two linear "towers" over fixed inputs: enough to see which parameters a loss reaches."""

    def __init__(self):
        super().__init__()
        self.query, self.product = torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)

    def forward(self, x):
        return F.normalize(self.query(x), dim=-1), F.normalize(self.product(x + 0.3), dim=-1)


def _setup(mode: str, weight: float = 0.5):
    torch.manual_seed(0)
    towers, disc, x = ToyTowers(), DomainClassifier(4, 8), torch.randn(8, 6)
    return towers, disc, x, Objective(gamma=5.0, mode=mode, weight=weight, encoder_steps=2, disc_steps=1)


def _grads(module):
    return [None if p.grad is None else p.grad.clone() for p in module.parameters()]


def _reference(towers, disc, x, fn, wrt):
    """Gradients of ``fn(q, a, D)`` w.r.t. ``wrt``'s parameters, computed directly."""
    q, a = towers(x)
    return torch.autograd.grad(fn(q, a, disc), list(wrt.parameters()), allow_unused=True)


def _close(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g is not None and torch.allclose(g, w, atol=1e-6), (g, w)


def test_without_a_game_only_the_matching_loss_trains_the_encoder():
    towers, disc, x, obj = _setup("none")
    loss, parts = obj.encoder_loss(*towers(x), disc)
    loss.backward()
    assert set(parts) == {"main"}
    _close(
        _grads(towers),
        _reference(towers, disc, x, lambda q, a, d: bidirectional_softmax_loss(q, a, 5.0), towers),
    )
    assert all(g is None for g in _grads(disc))


def test_alternating_encoder_step_ascends_d_loss_with_d_frozen():
    towers, disc, x, obj = _setup("alternating")
    loss, parts = obj.encoder_loss(*towers(x), disc)
    loss.backward()
    assert all(g is None for g in _grads(disc))  # D is frozen while the encoder steps
    want = _reference(towers, disc, x,
                      lambda q, a, d: bidirectional_softmax_loss(q, a, 5.0) - 0.5 * domain_loss(d(q), d(a)), towers)  # fmt: skip
    _close(_grads(towers), want)
    # Direction: a small step along the encoder's gradient of -lambda L_adv alone raises L_adv (fools D).
    towers.zero_grad()
    q, a = towers(x)
    (-0.5 * domain_loss(disc(q), disc(a))).backward()
    before = float(domain_loss(*(disc(e) for e in towers(x))))
    with torch.no_grad():
        for p in towers.parameters():
            p -= 0.05 * p.grad
    assert float(domain_loss(*(disc(e) for e in towers(x)))) > before


def test_alternating_disc_step_descends_d_loss_and_leaves_the_encoder_alone():
    towers, disc, x, obj = _setup("alternating")
    q, a = towers(x)
    obj.disc_loss(q, a, disc).backward()
    assert all(g is None for g in _grads(towers))
    _close(_grads(disc), _reference(towers, disc, x, lambda q, a, d: domain_loss(d(q), d(a)), disc))
    before = float(obj.disc_loss(q, a, disc))
    with torch.no_grad():
        for p in disc.parameters():
            p -= 0.05 * p.grad
    assert float(obj.disc_loss(q, a, disc)) < before


def test_gradient_reversal_trains_both_sides_in_one_pass():
    towers, disc, x, obj = _setup("grl", weight=0.5)
    loss, parts = obj.encoder_loss(*towers(x), disc)
    loss.backward()
    # D descends L_adv ...
    _close(_grads(disc), _reference(towers, disc, x, lambda q, a, d: domain_loss(d(q), d(a)), disc))
    # ... and the encoder descends L_main - lambda L_adv, the same as the alternating encoder step.
    want = _reference(towers, disc, x,
                      lambda q, a, d: bidirectional_softmax_loss(q, a, 5.0) - 0.5 * domain_loss(d(q), d(a)), towers)  # fmt: skip
    _close(_grads(towers), want)
    assert obj.steps_disc_with_encoder() and not obj.disc_due(2)


def test_d_steps_come_after_every_k_encoder_steps_and_take_no_batch():
    obj = Objective(gamma=20.0, mode="alternating", encoder_steps=5, disc_steps=2)
    assert [s for s in range(1, 21) if obj.disc_due(s)] == [5, 10, 15, 20]
    assert not any(Objective(gamma=20.0).disc_due(s) for s in range(1, 21))
    with pytest.raises(ValueError, match="unknown mode 'minimax'"):
        Objective(gamma=1.0, mode="minimax")


@pytest.mark.parametrize("mode", ["none", "alternating"])
def test_the_image_loss_adds_the_queries_matched_against_the_image_vectors_alone(mode):
    towers, disc, x, _ = _setup(mode)
    obj = Objective(gamma=5.0, mode=mode, weight=0.5, encoder_steps=2, disc_steps=1, image_weight=0.3)
    image_head = torch.nn.Linear(6, 4)

    def image(x):
        return F.normalize(image_head(x - 0.2), dim=-1)

    loss, parts = obj.encoder_loss(*towers(x), disc, image=image(x))
    loss.backward()
    assert "image" in parts and "main" in parts
    game = (
        (lambda q, a, d: -0.5 * domain_loss(d(q), d(a))) if mode == "alternating" else (lambda q, a, d: 0.0)
    )
    q, a = towers(x)
    want = torch.autograd.grad(bidirectional_softmax_loss(q, a, 5.0) + game(q, a, disc)
                               + 0.3 * bidirectional_softmax_loss(q, image(x), 5.0),
                               [*towers.parameters(), *image_head.parameters()])  # fmt: skip
    _close(_grads(towers) + _grads(image_head), list(want))
    # Without a weight the image vectors are not part of the loss.
    plain, parts = Objective(gamma=5.0).encoder_loss(*towers(x), disc, image=image(x))
    assert set(parts) == {"main"} and torch.allclose(plain, bidirectional_softmax_loss(*towers(x), 5.0))


def test_same_category_negatives_leave_the_other_categories_out_of_the_image_loss():
    other = other_category_mask(["Heels", "Shirts", "Heels", "Bags"])
    assert other.tolist() == [[False, True, False, True], [True, False, True, True],
                              [False, True, False, True], [True, True, True, False]]  # fmt: skip
    torch.manual_seed(0)
    q, a, image = (F.normalize(torch.randn(4, 3), dim=-1) for _ in range(3))
    obj = Objective(gamma=5.0, image_weight=1.0)
    _, parts = obj.encoder_loss(q, a, None, image=image, image_mask=other)
    assert torch.allclose(parts["image"], bidirectional_softmax_loss(q, image, 5.0, other))
    # Pair 3 (the only bag) has no negative left: its terms are log 1 = 0, not NaN.
    assert torch.isfinite(parts["image"])
    _, default = obj.encoder_loss(q, a, None, image=image)
    assert not torch.allclose(parts["image"], default["image"])


def test_the_sampling_correction_takes_log_q_from_the_query_to_product_softmax_alone():
    torch.manual_seed(0)
    q, a = (F.normalize(torch.randn(5, 3), dim=-1) for _ in range(2))
    log_q = torch.log(torch.tensor([1.0, 7.0, 2.0, 30.0, 1.0]))
    got = bidirectional_softmax_loss(q, a, 4.0, None, log_q)
    cos = q @ a.T
    want = 0.0
    for i in range(5):  # a naive reference, one softmax at a time
        to_products = [4.0 * cos[i, j] - log_q[j] for j in range(5)]
        want -= to_products[i] - torch.logsumexp(torch.stack(to_products), 0)
        to_queries = [4.0 * cos[j, i] for j in range(5)]
        want -= to_queries[i] - torch.logsumexp(torch.stack(to_queries), 0)
    assert torch.allclose(got, want / 5, atol=1e-5)
    # Equal frequencies change nothing; the objective passes it to the loss.
    assert torch.allclose(bidirectional_softmax_loss(q, a, 4.0, None, torch.full((5,), 2.0)),
                          bidirectional_softmax_loss(q, a, 4.0))  # fmt: skip
    assert torch.allclose(Objective(gamma=4.0).encoder_loss(q, a, None, log_q=log_q)[0], got)


def _popular_product_score(correct: bool) -> float:
    """Free product vectors trained against fixed queries: every query clicks its own product and, as often,
    product 0 (a best seller). Returns how far below the query's own product product 0 ends, on average."""
    torch.manual_seed(0)
    n = 16
    queries = F.normalize(torch.randn(n, 8), dim=-1)
    products = torch.nn.Parameter(torch.randn(n, 8) * 0.1)
    opt = torch.optim.Adam([products], lr=0.05)
    clicks = torch.tensor([n - 1] + [1] * (n - 1), dtype=torch.float32)  # product 0: one click per query
    for step in range(300):
        own = torch.randperm(n - 1, generator=torch.Generator().manual_seed(step))[:8] + 1
        # Eight queries, each with a click on its own product and one on the best seller.
        qi, pi = torch.cat([own, own]), torch.cat([own, torch.zeros(8, dtype=torch.long)])
        mask, _ = false_negative_mask([int(p) for p in pi], qi[:, None])
        a = F.normalize(products[pi], dim=-1)
        loss = bidirectional_softmax_loss(
            queries[qi], a, 10.0, mask, torch.log(clicks[pi]) if correct else None
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    scores = queries @ F.normalize(products.detach(), dim=-1).T
    return float((scores[1:, 0] - scores[1:, 1:].diagonal()).mean())


def test_without_the_correction_in_batch_negatives_push_the_best_seller_down():
    # Each query clicks the best seller as often as its own product (P(a|q) equal), but the best seller is in
    # every batch, a negative for the other queries: uncorrected it ends far below the own product (-0.49),
    # corrected much less far (-0.33; one vector cannot be as near 15 random queries as their own products).
    plain, corrected = _popular_product_score(False), _popular_product_score(True)
    assert plain < -0.4 and corrected > plain + 0.12
