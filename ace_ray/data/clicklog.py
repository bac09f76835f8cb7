"""Simulated search sessions and clicks (a position-biased click model).

Users arrive with an intent (a category plus some attributes) drawn with Zipf-like popularity and write it as
a query. The shop's current engine ranks candidates by how well the *title* matches the query (plus a
popularity prior and noise); users examine position ``p`` with probability ``1/(p+1)**decay`` and click
when the product's *true* attributes satisfy the intent. So a product whose title omits its colour is
under-ranked for colour queries yet still clicked when shown: the signal an image-aware model can learn.

Each day is one Ray task seeded by (seed, day): the log is the same for any number of workers.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd
import ray

from ace_ray.config import ClickModelConfig, SynthConfig
from ace_ray.data import lexicon
from ace_ray.data.schema import IMPRESSIONS_SCHEMA
from ace_ray.runtime import run_bounded

# Seed streams, so products, intents and days never share random numbers.
_INTENT_STREAM, _DAY_STREAM = 11, 13
# How many intent attributes a query names: none, one, two or three.
_INTENT_SIZE_P = np.array([0.15, 0.45, 0.3, 0.1])
# Relevance of a product from a sibling category / an unrelated one, relative to the right category.
_SIBLING_RELEVANCE, _UNRELATED_RELEVANCE = 0.08, 0.01
_MAX_CLICK_P = 0.95
_RANK_POPULARITY, _RANK_NOISE = 0.3, 0.25


@dataclass
class ClickWorld:
    """Everything a day task needs, as arrays (shipped once through the object store)."""

    product_ids: np.ndarray  # str
    category: np.ndarray  # int code per product
    top: np.ndarray  # int code of the top-level category
    attrs: np.ndarray  # int codes [n_products, n_attrs], -1 = unknown
    quality: np.ndarray  # latent appeal in (0, 2)
    title_tokens: list[frozenset[str]]
    members: list[np.ndarray]  # product indices per category code
    intent_category: np.ndarray  # per intent
    intent_terms: list[list[tuple[int, int]]]  # per intent: (attribute index, value code)
    intent_words: list[list[str]]  # per intent: canonical terms to render, noun last
    intent_p: np.ndarray  # popularity


def _codes(values: pd.Series) -> tuple[np.ndarray, list[str]]:
    cat = pd.Categorical(values.where(values.notna() & (values.astype(str).str.strip() != "")))
    return cat.codes.astype(np.int32), [str(c) for c in cat.categories]


def build_world(
    products: pd.DataFrame,
    attribute_columns: list[str],
    cfg: ClickModelConfig,
    seed: int,
    quality: np.ndarray | None = None,
) -> ClickWorld:
    """Encode the catalogue and draw the intent pool with Zipf popularity."""
    n = len(products)
    if n == 0:
        raise ValueError("cannot simulate clicks for an empty catalogue")
    rng = np.random.default_rng([seed, _INTENT_STREAM])
    category, cat_names = _codes(products["category"].astype(str))
    top, _ = _codes(products["category_path"].astype(str).str.split("/").str[0])
    columns = [_codes(products[c]) for c in attribute_columns]
    attrs = np.stack([c for c, _ in columns], axis=1) if columns else np.zeros((n, 0), np.int32)
    if quality is None:
        quality = np.clip(rng.lognormal(0.0, 0.35, n), 0.2, 1.99)
    members = [np.flatnonzero(category == c) for c in range(len(cat_names))]

    n_intents = max(20, int(n * cfg.intents_per_product))
    seen: dict[tuple, int] = {}
    intent_category, intent_terms, intent_words = [], [], []
    for _ in range(n_intents * 3):  # draws until enough distinct intents (duplicates are skipped)
        if len(intent_terms) >= n_intents:
            break
        p = int(rng.integers(n))
        known = np.flatnonzero(attrs[p] >= 0)
        k = min(int(rng.choice(len(_INTENT_SIZE_P), p=_INTENT_SIZE_P)), len(known))
        chosen = sorted(rng.choice(known, size=k, replace=False).tolist()) if k else []
        terms = [(a, int(attrs[p, a])) for a in chosen]
        key = (int(category[p]), tuple(terms))
        if key in seen:
            continue
        seen[key] = len(intent_terms)
        intent_category.append(int(category[p]))
        intent_terms.append(terms)
        intent_words.append([columns[a][1][v] for a, v in terms] + [cat_names[category[p]]])
    ranks = np.arange(1, len(intent_terms) + 1, dtype=np.float64)
    pop = ranks ** (-cfg.zipf_exponent)
    return ClickWorld(
        product_ids=products["product_id"].astype(str).to_numpy(),
        category=category,
        top=top,
        attrs=attrs,
        quality=np.asarray(quality, dtype=np.float64),
        title_tokens=[frozenset(lexicon.tokens(t)) for t in products["title"].astype(str)],
        members=members,
        intent_category=np.array(intent_category, dtype=np.int32),
        intent_terms=intent_terms,
        intent_words=intent_words,
        intent_p=pop / pop.sum(),
    )


def relevance(world: ClickWorld, intent: int, shown: np.ndarray, mismatch: float) -> np.ndarray:
    """How well products satisfy an intent by their *true* category and attributes, in [0, 2)."""
    cat = world.intent_category[intent]
    same_top = world.top[shown] == world.top[world.members[cat][0]]
    rel = np.where(
        world.category[shown] == cat, 1.0, np.where(same_top, _SIBLING_RELEVANCE, _UNRELATED_RELEVANCE)
    )
    for a, v in world.intent_terms[intent]:
        rel = rel * np.where(world.attrs[shown, a] == v, 1.0, mismatch)
    return rel * world.quality[shown]


def simulate_day(
    world: ClickWorld,
    cfg: ClickModelConfig,
    day: dt.date,
    day_index: int,
    sessions: int,
    list_size: int,
    seed: int,
) -> pd.DataFrame:
    """One day's impressions: ``sessions`` query sessions, each a ranked list with clicks."""
    rng = np.random.default_rng([seed, _DAY_STREAM, day_index])
    n = len(world.product_ids)
    examine = (1.0 / np.arange(1, list_size + 1)) ** cfg.position_decay
    intents = rng.choice(len(world.intent_p), size=sessions, p=world.intent_p)
    rows: dict[str, list] = {k: [] for k in ("session_id", "query", "product_id", "position", "clicked")}
    for s, intent in enumerate(intents):
        query = lexicon.render_query(world.intent_words[intent], rng, cfg.reorder_rate, cfg.typo_rate)
        q_tokens = lexicon.tokens(query)
        pool = world.members[world.intent_category[intent]]
        n_off = int(round(cfg.candidates * cfg.off_category_share))
        n_in = min(len(pool), cfg.candidates - n_off)
        cand = np.unique(
            np.concatenate([rng.choice(pool, size=n_in, replace=False), rng.integers(0, n, n_off)])
        )
        overlap = np.array(
            [sum(t in world.title_tokens[c] for t in q_tokens) for c in cand], dtype=np.float64
        )
        # The shop's current engine: share of query words in the title, a popularity prior, noise.
        score = (
            overlap / max(1, len(q_tokens))
            + _RANK_POPULARITY * np.log(world.quality[cand])
            + rng.normal(0, _RANK_NOISE, len(cand))
        )
        shown = cand[np.argsort(-score, kind="stable")[:list_size]]
        rel = relevance(world, intent, shown, cfg.attribute_mismatch)
        p_click = np.minimum(_MAX_CLICK_P, cfg.base_ctr * rel * examine[: len(shown)])
        clicked = rng.random(len(shown)) < p_click
        sid = f"{day.isoformat()}-{s:06d}"
        rows["session_id"] += [sid] * len(shown)
        rows["query"] += [query] * len(shown)
        rows["product_id"] += world.product_ids[shown].tolist()
        rows["position"] += list(range(len(shown)))
        rows["clicked"] += clicked.tolist()
    df = pd.DataFrame(rows)
    df.insert(0, "day", day)
    return df[IMPRESSIONS_SCHEMA.names]


@ray.remote
def _simulate_day_task(world, cfg, day, day_index, sessions, list_size, seed):
    return simulate_day(world, cfg, day, day_index, sessions, list_size, seed)


def simulate_impressions(
    products: pd.DataFrame,
    attribute_columns: list[str],
    clicks: ClickModelConfig,
    sim: SynthConfig,
    quality: np.ndarray | None = None,
) -> pd.DataFrame:
    """The whole click log (``sim.days`` x ``sim.sessions``), one Ray task per day (Ray must be running)."""
    world_ref = ray.put(build_world(products, attribute_columns, clicks, sim.seed, quality))
    start = dt.date.fromisoformat(sim.start_date)
    frames = run_bounded(
        lambda d: _simulate_day_task.remote(
            world_ref, clicks, start + dt.timedelta(days=d), d, sim.sessions, sim.list_size, sim.seed
        ),
        list(range(sim.days)),
        sim.workers,
        desc="click log (days)",
    )
    return pd.concat(frames, ignore_index=True)
