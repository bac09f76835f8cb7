"""How shoppers write things: synonyms per canonical value, and query rendering with word-order changes
and the odd typo. Shared by the synthetic shop and the importers' simulated click logs.
"""

from __future__ import annotations

import re

import numpy as np

# Canonical value (lower case) -> ways people write it; the first is the most common.
SYNONYMS: dict[str, list[str]] = {
    # colours
    "black": ["black", "jet black"],
    "white": ["white", "off white", "ivory"],
    "grey": ["grey", "gray", "charcoal"],
    "red": ["red", "scarlet", "crimson"],
    "blue": ["blue", "royal blue", "sky blue"],
    "navy": ["navy", "navy blue", "dark blue"],
    "green": ["green", "olive", "emerald"],
    "yellow": ["yellow", "mustard"],
    "pink": ["pink", "rose", "blush"],
    "purple": ["purple", "violet", "lilac"],
    "orange": ["orange", "rust"],
    "brown": ["brown", "tan", "coffee"],
    "beige": ["beige", "cream", "nude"],
    # patterns
    "striped": ["striped", "stripe", "stripes"],
    "dotted": ["polka dot", "dotted", "dots"],
    "checked": ["checked", "plaid", "check"],
    "floral": ["floral", "flower print", "flowers"],
    "solid": ["plain", "solid"],
    # materials
    "cotton": ["cotton"],
    "leather": ["leather", "genuine leather", "pu leather"],
    "denim": ["denim", "jean"],
    "wool": ["wool", "woolen", "knit"],
    "silk": ["silk", "satin"],
    "polyester": ["polyester", "poly"],
    "canvas": ["canvas"],
    "ceramic": ["ceramic", "porcelain"],
    "glass": ["glass"],
    "metal": ["metal", "stainless steel"],
    "plastic": ["plastic"],
    "suede": ["suede"],
    # styles
    "casual": ["casual", "everyday"],
    "formal": ["formal", "office", "business"],
    "sporty": ["sporty", "sports", "athletic"],
    "vintage": ["vintage", "retro"],
    "boho": ["boho", "bohemian"],
    "minimalist": ["minimalist", "simple"],
    "streetwear": ["streetwear", "street", "urban"],
    # genders
    "women": ["women", "womens", "ladies", "for women"],
    "men": ["men", "mens", "for men"],
    "unisex": ["unisex"],
    "kids": ["kids", "children", "boys girls"],
    "boys": ["boys", "boy"],
    "girls": ["girls", "girl"],
    # synth leaf categories
    "t-shirt": ["t-shirt", "tshirt", "tee", "t shirt"],
    "shirt": ["shirt", "button down shirt", "blouse"],
    "dress": ["dress", "frock", "gown"],
    "skirt": ["skirt", "mini skirt"],
    "jeans": ["jeans", "denim pants"],
    "shorts": ["shorts", "short pants"],
    "jacket": ["jacket", "coat", "blazer"],
    "sweater": ["sweater", "jumper", "pullover"],
    "sneakers": ["sneakers", "trainers", "running shoes"],
    "boots": ["boots", "ankle boots"],
    "heels": ["heels", "high heels", "pumps"],
    "sandals": ["sandals", "flip flops", "slides"],
    "handbag": ["handbag", "purse", "tote bag"],
    "backpack": ["backpack", "rucksack", "school bag"],
    "wallet": ["wallet", "card holder"],
    "hat": ["hat", "cap", "bucket hat"],
    "scarf": ["scarf", "shawl"],
    "watch": ["watch", "wristwatch"],
    "sunglasses": ["sunglasses", "shades"],
    "belt": ["belt", "waist belt"],
    "mug": ["mug", "coffee cup", "cup"],
    "vase": ["vase", "flower vase"],
    "cushion": ["cushion", "pillow", "throw pillow"],
    "lamp": ["lamp", "table lamp", "desk lamp"],
    "bowl": ["bowl", "salad bowl"],
    "headphones": ["headphones", "headset", "earphones"],
    "phone case": ["phone case", "phone cover", "mobile case"],
    "laptop sleeve": ["laptop sleeve", "laptop bag", "notebook case"],
    # fashion-products article types (canonical = the article type in lower case)
    "tshirts": ["t-shirt", "tshirt", "tee", "t shirts"],
    "shirts": ["shirts", "shirt"],
    "casual shoes": ["casual shoes", "sneakers", "shoes"],
    "sports shoes": ["sports shoes", "running shoes", "trainers"],
    "formal shoes": ["formal shoes", "office shoes"],
    "flip flops": ["flip flops", "slippers", "chappals"],
    "handbags": ["handbags", "handbag", "purse"],
    "watches": ["watches", "watch"],
    "kurtas": ["kurtas", "kurta"],
    "tops": ["tops", "top"],
}

TOKEN = re.compile(r"[a-z0-9]+")
_KEYBOARD_NEIGHBOURS = "qwertyuiopasdfghjklzxcvbnm"


def tokens(text: str) -> list[str]:
    """Lower-case alphanumeric tokens (the shop's search engine and the tests use the same rule)."""
    return TOKEN.findall(str(text).lower())


def canonical(value: object) -> str:
    """A value's canonical lexicon key: lower case, single spaces."""
    return " ".join(str(value).lower().split())


def surface_forms(value: object) -> list[str]:
    """Ways to write ``value``; unknown values are written as they are (lower case)."""
    key = canonical(value)
    return SYNONYMS.get(key, [key])


def mentions(text: str, value: object) -> bool:
    """Whether ``text`` names ``value`` in any of its surface forms (whole words only)."""
    padded = f" {' '.join(tokens(text))} "
    return any(f" {' '.join(tokens(form))} " in padded for form in surface_forms(value))


def pick_form(value: object, rng: np.random.Generator, common_share: float = 0.6) -> str:
    """A surface form: the most common one with probability ``common_share``, else any other."""
    forms = surface_forms(value)
    if len(forms) == 1 or rng.random() < common_share:
        return forms[0]
    return forms[1 + int(rng.integers(len(forms) - 1))]


def typo(word: str, rng: np.random.Generator) -> str:
    """One keyboard slip: drop, double, swap or replace a character (words under 4 letters are kept)."""
    if len(word) < 4:
        return word
    i = int(rng.integers(1, len(word) - 1))
    kind = int(rng.integers(4))
    if kind == 0:
        return word[:i] + word[i + 1 :]
    if kind == 1:
        return word[:i] + word[i] + word[i:]
    if kind == 2:
        return word[: i - 1] + word[i] + word[i - 1] + word[i + 1 :]
    return word[:i] + _KEYBOARD_NEIGHBOURS[int(rng.integers(len(_KEYBOARD_NEIGHBOURS)))] + word[i + 1 :]


def render_query(
    terms: list[object], rng: np.random.Generator, reorder_rate: float = 0.25, typo_rate: float = 0.05
) -> str:
    """A query for an intent: ``terms`` in canonical order (modifiers first, the noun last), each written
    with a synonym, sometimes in another order, sometimes with a typo."""
    words = [pick_form(t, rng) for t in terms if canonical(t)]
    if len(words) > 1 and rng.random() < reorder_rate:
        words = [words[i] for i in rng.permutation(len(words))]
    if words and rng.random() < typo_rate:
        j = int(rng.integers(len(words)))
        parts = words[j].split(" ")
        k = int(rng.integers(len(parts)))
        parts[k] = typo(parts[k], rng)
        words[j] = " ".join(parts)
    return " ".join(words)
