"""Which value of an attribute (a colour) a model reads in each product: the value v whose query
"<v> <the product's category>" it scores highest, against the product's true value.

On a catalogue whose titles do not say the attribute (``--hide-in-title colour``), a text-only model can only
guess it from what the title's other words correlate with, so above the commonest value's share only a model
that reads the photo can score; on products it never trained on, not even memorised titles help.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def attribute_accuracy(
    score: Callable[[list[str]], np.ndarray],
    categories: Sequence[str],
    truth: Sequence[str],
    values: Sequence[str],
    centred: bool = False,
) -> float:
    """Share of products whose highest-scoring query "<value> <category>" names their own value.

    ``score(queries)`` gives each product's score for its own query (``queries[i]`` for product ``i``);
    ``categories`` and ``truth`` are per product, ``values`` the candidates, written as the queries write
    them. ``centred``: each value's scores less their mean over the products, so a value word that the query
    tower places near every product does not win everywhere and what is left is what the products say."""
    scores = np.stack([np.asarray(score([f"{v} {c}" for c in categories])) for v in values], axis=1)
    if centred:
        scores = scores - scores.mean(axis=0)
    return float((np.asarray(values)[scores.argmax(axis=1)] == np.asarray(truth)).mean())
