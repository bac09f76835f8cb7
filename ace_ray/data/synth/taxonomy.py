"""The synthetic shop's category tree and attribute vocabularies."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

# colour name -> BGR (OpenCV order)
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (30, 30, 30),
    "white": (245, 245, 245),
    "grey": (128, 128, 128),
    "red": (40, 40, 210),
    "blue": (220, 120, 40),
    "navy": (110, 40, 20),
    "green": (60, 150, 40),
    "yellow": (40, 215, 240),
    "pink": (180, 130, 250),
    "purple": (150, 50, 120),
    "orange": (20, 130, 245),
    "brown": (40, 75, 120),
    "beige": (170, 210, 230),
}
PATTERNS = ["solid", "striped", "dotted", "checked", "floral"]
PATTERN_P = [0.5, 0.15, 0.12, 0.12, 0.11]
STYLES = ["casual", "formal", "sporty", "vintage", "boho", "minimalist", "streetwear"]
GENDERS = ["women", "men", "unisex", "kids"]

_SOFT = ["cotton", "polyester", "silk", "wool", "denim"]
_SHOE = ["leather", "canvas", "suede", "plastic"]
_BAG = ["leather", "canvas", "polyester", "suede"]
_HOME = ["ceramic", "glass", "metal", "plastic"]


@dataclass(frozen=True)
class Leaf:
    """A leaf category: its name (the canonical lexicon key), top level, drawing and allowed attributes."""

    name: str
    top: str
    shape: str  # key into shapes.SHAPES
    materials: tuple[str, ...]
    gendered: bool
    aspect: float  # width / height of the object's box
    weight: float = 1.0  # relative share of the catalogue


LEAVES: tuple[Leaf, ...] = (
    Leaf("t-shirt", "clothing", "tshirt", ("cotton", "polyester"), True, 1.0, 2.0),
    Leaf("shirt", "clothing", "shirt", ("cotton", "silk", "polyester"), True, 0.9, 1.5),
    Leaf("dress", "clothing", "dress", ("cotton", "silk", "polyester"), False, 0.7, 1.5),
    Leaf("skirt", "clothing", "skirt", tuple(_SOFT), False, 1.0),
    Leaf("jeans", "clothing", "trousers", ("denim",), True, 0.6, 1.3),
    Leaf("shorts", "clothing", "shorts", ("cotton", "denim", "polyester"), True, 1.2),
    Leaf("jacket", "clothing", "jacket", ("leather", "denim", "wool", "polyester"), True, 1.0),
    Leaf("sweater", "clothing", "sweater", ("wool", "cotton"), True, 1.0),
    Leaf("sneakers", "shoes", "sneaker", ("canvas", "leather", "suede"), True, 2.0, 1.5),
    Leaf("boots", "shoes", "boot", ("leather", "suede"), True, 1.0),
    Leaf("heels", "shoes", "heel", ("leather", "suede", "plastic"), False, 1.6),
    Leaf("sandals", "shoes", "sandal", _SHOE, True, 2.0),
    Leaf("handbag", "bags", "handbag", _BAG, False, 1.2, 1.3),
    Leaf("backpack", "bags", "backpack", ("canvas", "polyester", "leather"), False, 0.8),
    Leaf("wallet", "bags", "wallet", ("leather", "canvas"), True, 1.5),
    Leaf("hat", "accessories", "hat", ("cotton", "wool", "canvas"), True, 1.6),
    Leaf("scarf", "accessories", "scarf", ("silk", "wool", "cotton"), False, 0.5),
    Leaf("watch", "accessories", "watch", ("metal", "leather", "plastic"), True, 0.6),
    Leaf("sunglasses", "accessories", "sunglasses", ("plastic", "metal"), True, 2.4),
    Leaf("belt", "accessories", "belt", ("leather", "canvas"), True, 3.0, 0.7),
    Leaf("mug", "home", "mug", ("ceramic", "glass"), False, 1.2),
    Leaf("vase", "home", "vase", ("ceramic", "glass"), False, 0.6),
    Leaf("cushion", "home", "cushion", ("cotton", "silk", "wool"), False, 1.0),
    Leaf("lamp", "home", "lamp", ("metal", "ceramic", "glass"), False, 0.7),
    Leaf("bowl", "home", "bowl", ("ceramic", "glass", "plastic"), False, 1.8, 0.8),
    Leaf("headphones", "electronics", "headphones", ("plastic", "metal"), False, 1.0),
    Leaf("phone case", "electronics", "phone_case", ("plastic", "leather", "silk"), False, 0.55),
    Leaf("laptop sleeve", "electronics", "laptop_sleeve", ("polyester", "leather", "wool"), False, 1.4, 0.7),
)

TOP_LEVELS = tuple(dict.fromkeys(leaf.top for leaf in LEAVES))

# Seller title words that are not attributes (keyword stuffing).
STUFFING = [
    "new", "2026", "hot sale", "free shipping", "trendy", "fashion", "high quality", "best gift",
    "premium", "original", "limited edition", "bestseller",
]  # fmt: skip

_SYLLABLES = [
    "zar",
    "vo",
    "lu",
    "mi",
    "ko",
    "ra",
    "nel",
    "tis",
    "qua",
    "bel",
    "dor",
    "fin",
    "sa",
    "ve",
    "lo",
    "xi",
]


def brand_names(n: int = 120) -> list[str]:
    """Deterministic made-up brand names of two syllables."""
    names = [(a + b).capitalize() for a, b in itertools.product(_SYLLABLES, _SYLLABLES) if a != b]
    order = np.random.default_rng(7).permutation(len(names))
    return [names[i] for i in order[:n]]


BRANDS = brand_names()
