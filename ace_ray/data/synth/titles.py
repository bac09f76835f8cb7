"""Seller-written titles: attributes in a loose order, some left out, some keyword stuffing."""

from __future__ import annotations

import numpy as np

from ace_ray.data import lexicon
from ace_ray.data.synth.taxonomy import STUFFING

# How often sellers name each attribute. Colour is left out ~30% of the time: then only the image shows it.
MENTION_P = {"brand": 0.85, "gender": 0.75, "style": 0.4, "material": 0.55, "colour": 0.7, "pattern": 0.65}
_PLAIN_MENTION_P = 0.1  # "solid" is rarely written
_REORDER_P = 0.3
_STUFFING_P = 0.45
_EXTRA_NOUN_P = 0.3


def write_title(
    attrs: dict[str, str | None], noun: str, rng: np.random.Generator, hide: tuple[str, ...] = ()
) -> str:
    """A title for a product with true ``attrs`` in leaf category ``noun``; attributes in ``hide`` are never
    written (the random draws are the same, so the rest of the shop does not change)."""
    middle = []  # (attribute, word)
    for key in ("gender", "style", "material", "colour", "pattern"):
        value = attrs.get(key)
        if not value:
            continue
        p = _PLAIN_MENTION_P if (key == "pattern" and value == "solid") else MENTION_P[key]
        if rng.random() < p:
            middle.append((key, lexicon.pick_form(value, rng, common_share=0.7)))
    if len(middle) > 1 and rng.random() < _REORDER_P:
        middle = [middle[i] for i in rng.permutation(len(middle))]
    middle = [word for key, word in middle if key not in hide]
    brand = attrs.get("brand") and rng.random() < MENTION_P["brand"] and "brand" not in hide
    words = ([attrs["brand"]] if brand else []) + middle
    words.append(lexicon.pick_form(noun, rng, common_share=0.7))
    if rng.random() < _STUFFING_P:
        words += [str(w) for w in rng.choice(STUFFING, size=int(rng.integers(1, 4)), replace=False)]
    if rng.random() < _EXTRA_NOUN_P:
        words.append(lexicon.pick_form(noun, rng, common_share=0.0))
    return " ".join(w[:1].upper() + w[1:] for w in " ".join(words).split())
