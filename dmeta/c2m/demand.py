"""Integrated demand mining per segment (C2M 3.2) and Mean Purchase Probability (4.1).

* Category patterns (3.2.1): per segment, the category sequences of the chosen source behaviours
  (view + cart by default, eq. 8), PrefixSpan with ``min_sup = n_c / k`` (eq. 9, ``n_c`` users in
  segment c), patterns common to all segments removed (eq. 10-11).
* Attributes (3.2.2, Algorithm 3): each purchase is a choice situation among the items of the
  same category the user viewed or carted; candidate attribute values are the most frequent
  among purchases; a conditional logit per segment (eq. 12) scores every combination of
  candidate values and the most probable one is the segment's attribute set (eq. 13).
* MPP: a ridge-regularized logit per user; the user's probability of choosing their segment's
  attribute set among all attribute combinations, averaged over users with purchases.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pandas as pd

from dmeta.mining.logit import attribute_set_search, fit_logit, fit_logit_batched
from dmeta.mining.prefixspan import prefixspan


@dataclasses.dataclass(frozen=True)
class SegmentPatterns:
    """patterns: per segment ``{pattern: support}``; common: eq. 10; unique: eq. 11 per segment."""

    patterns: list[dict[tuple[int, ...], int]]
    common: set[tuple[int, ...]]
    unique: list[dict[tuple[int, ...], int]]


def segment_patterns(
    events: pd.DataFrame,
    users: np.ndarray,
    labels: np.ndarray,
    *,
    k: float,
    max_length: int,
    behaviors: tuple[str, ...] = ("view", "cart"),
) -> SegmentPatterns:
    """Eq. 8-11 for segments ``labels[i]`` of ``users[i]`` (labels ``0..S-1``). A label with
    no user (a centroid nobody is nearest to) gets no patterns and takes no part in eq. 10's
    intersection, which would otherwise be empty and keep every common pattern."""
    ev = events[events["behavior"].astype(str).isin(behaviors)]
    ev = ev.sort_values(["user_id", "timestamp"], kind="stable")
    segment = pd.Series(labels, index=users).reindex(ev["user_id"].to_numpy()).to_numpy()
    n_segments = int(labels.max()) + 1
    patterns = []
    for s in range(n_segments):
        part = ev[segment == s]
        _, counts = np.unique(part["user_id"].to_numpy(), return_counts=True)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        n_c = int((labels == s).sum())
        min_sup = max(1, math.ceil(n_c / k))
        values = part["category_id"].to_numpy()
        patterns.append(prefixspan((values, offsets), min_support=min_sup, max_length=max_length))
    occupied = [set(p) for s, p in enumerate(patterns) if (labels == s).any()]
    common = set.intersection(*occupied) if occupied else set()
    unique = [{q: c for q, c in p.items() if q not in common} for p in patterns]
    return SegmentPatterns(patterns, common, unique)


@dataclasses.dataclass(frozen=True)
class ChoiceData:
    """x: f[N, J, K] dummy-coded attributes (alternative 0 is the purchase); mask: bool[N, J];
    user: i64[N]; category: i64[N] category of the purchase; fields: per attribute field, its columns in ``x`` for values ``1..V_f-1``
    (value 0 is the reference); levels: per field the original attribute values."""

    x: np.ndarray
    mask: np.ndarray
    user: np.ndarray
    category: np.ndarray
    fields: list[list[int]]
    levels: list[np.ndarray]


def encode_attributes(attributes: pd.DataFrame) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """Integer codes ``0..V_f-1`` per attribute column (sorted values), and the levels."""
    codes, levels = {"item_id": attributes["item_id"].to_numpy()}, []
    for col in attributes.columns.drop("item_id"):
        lv, code = np.unique(attributes[col].to_numpy(), return_inverse=True)
        codes[col] = code
        levels.append(lv)
    return pd.DataFrame(codes), levels


def choice_situations(
    events: pd.DataFrame,
    attributes: pd.DataFrame,
    *,
    n_alternatives: int,
    seed: int = 0,
    source: tuple[str, ...] = ("buy",),
    top_up: str = "uniform",
) -> ChoiceData:
    """Choice situations from purchases (Algorithm 3, steps 1-3).

    For each event whose behaviour is in ``source``, the alternatives are the most recent
    distinct items of the same category the user viewed or carted before it (not the purchased
    one), topped up with random items of that category; items without attributes are skipped.

    ``top_up`` (our choice; the paper's choice sets are the viewed and carted items alone):
    ``"uniform"`` draws the top-up items uniformly from the category's items in the log;
    ``"popular"`` in proportion to their events there. On a purchase-only log every
    alternative is a top-up item, and a uniform draw compares each purchase with the
    category's long tail, so every segment's logit learns the same popularity contrast (on
    Complete Journey: private label beats the tail everywhere); a popular draw nets that out
    and leaves what sets a segment's choices apart from the market's.
    """
    if top_up not in ("uniform", "popular"):
        raise ValueError(f"top_up={top_up!r}; use 'uniform' or 'popular'")
    codes, levels = encode_attributes(attributes)
    sizes = [len(lv) for lv in levels]
    offsets = np.concatenate([[0], np.cumsum([v - 1 for v in sizes])])
    fields = [list(range(offsets[f], offsets[f + 1])) for f in range(len(sizes))]
    table = codes.set_index("item_id")
    known = set(table.index.tolist())
    rng = np.random.default_rng(seed)
    ev = events[events["item_id"].isin(known)].sort_values(["user_id", "timestamp"], kind="stable")
    by_cat = ev.groupby("category_id")["item_id"].unique()  # in order of first event
    weight = {}  # per category, its items' event counts (the popular draw's weights)
    if top_up == "popular":
        events_of = ev["item_id"].value_counts()
        weight = {c: events_of.reindex(items).to_numpy(float) for c, items in by_cat.items()}
    rows, users, cats = [], [], []
    for user, group in ev.groupby("user_id", sort=True):
        seen: dict[int, list[int]] = {}
        for item, cat, beh in zip(
            group["item_id"], group["category_id"], group["behavior"].astype(str)
        ):
            if beh in source:
                alts = [i for i in dict.fromkeys(reversed(seen.get(cat, []))) if i != item]
                extra = n_alternatives - 1 - len(alts)
                if extra > 0:
                    pool = by_cat[cat]
                    keep = (pool != item) & ~np.isin(pool, alts)
                    if keep.any():
                        w = weight[cat][keep] if weight else None
                        p = None if w is None else w / w.sum()
                        n = min(extra, int(keep.sum()))
                        alts += rng.choice(pool[keep], n, replace=False, p=p).tolist()
                rows.append([item, *alts[: n_alternatives - 1]])
                users.append(user)
                cats.append(cat)
            if beh in ("view", "cart"):
                seen.setdefault(cat, []).append(item)
    n, k = len(rows), int(offsets[-1])
    x = np.zeros((n, n_alternatives, k))
    mask = np.zeros((n, n_alternatives), bool)
    values = table.to_numpy()
    for i, items in enumerate(rows):
        v = values[table.index.get_indexer(items)]  # [J_i, F]
        for f in range(len(sizes)):
            on = v[:, f] > 0
            x[i, np.flatnonzero(on), offsets[f] + v[on, f] - 1] = 1.0
        mask[i, : len(items)] = True
    return ChoiceData(x, mask, np.asarray(users), np.asarray(cats), fields, levels)


def candidate_values(data: ChoiceData, top: int) -> list[list[int]]:
    """Algorithm 3, step 2: per field the ``top`` most frequent value codes among purchases."""
    chosen = data.x[:, 0]
    out = []
    for cols in data.fields:
        counts = np.concatenate([[len(chosen) - chosen[:, cols].sum()], chosen[:, cols].sum(0)])
        out.append(np.argsort(-counts, kind="stable")[:top].tolist())
    return out


def _columns(data: ChoiceData, values: list[list[int]]) -> list[list[int]]:
    """Value codes -> columns of ``[0, beta]`` (column 0 is the zero reference utility)."""
    return [[0 if v == 0 else cols[v - 1] + 1 for v in vs] for cols, vs in zip(data.fields, values)]


@dataclasses.dataclass(frozen=True)
class AttributeSets:
    """beta: f[S, K] per-segment logit (NaN rows for segments without purchases);
    best: per segment the chosen value code per field (None without purchases)."""

    beta: np.ndarray
    best: list[tuple[int, ...] | None]


def segment_attribute_sets(
    data: ChoiceData, segment_of: np.ndarray, n_segments: int, *, top: int, l2: float
) -> AttributeSets:
    """Algorithm 3, steps 3-5. ``segment_of``: i[N] segment of each choice situation (-1: not
    used)."""
    candidates = candidate_values(data, top)
    k = data.x.shape[-1]
    beta = np.full((n_segments, k), np.nan)
    best: list[tuple[int, ...] | None] = []
    for s in range(n_segments):
        rows = segment_of == s
        if not rows.any():
            best.append(None)
            continue
        fit = fit_logit(data.x[rows], np.zeros(rows.sum(), int), mask=data.mask[rows], l2=l2)
        beta[s] = np.asarray(fit.beta)
        columns = _columns(data, candidates)
        cols, _, _ = attribute_set_search(np.concatenate([[0.0], beta[s]]), columns)
        best.append(tuple(v[c.index(col)] for v, c, col in zip(candidates, columns, cols)))
    return AttributeSets(beta, best)


def user_logits(data: ChoiceData, *, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-user ridge logits fitted at once. Returns (users i64[U'], beta f[U', K])."""
    users, inverse, counts = np.unique(data.user, return_inverse=True, return_counts=True)
    n_max = counts.max()
    slot = np.arange(len(data.user)) - (np.cumsum(counts) - counts)[inverse]
    g, j, k = len(users), data.x.shape[1], data.x.shape[2]
    order = np.argsort(inverse, kind="stable")
    x = np.zeros((g, n_max, j, k))
    mask = np.ones((g, n_max, j), bool)
    w = np.zeros((g, n_max))
    x[inverse[order], slot[order]] = data.x[order]
    mask[inverse[order], slot[order]] = data.mask[order]
    w[inverse[order], slot[order]] = 1.0
    fit = fit_logit_batched(x, np.zeros((g, n_max), int), mask=mask, weights=w, l2=l2)
    return users, np.asarray(fit.beta)


def mean_purchase_probability(
    data: ChoiceData, user_beta: np.ndarray, best_of_user: list[tuple[int, ...] | None]
) -> float:
    """Mean over users of P_user(segment's attribute set) among all value combinations."""
    combos = list(itertools.product(*[range(len(lv)) for lv in data.levels]))
    cols = np.array([_columns(data, [[v] for v in c]) for c in combos])[..., 0]  # [C, F]
    index = {c: i for i, c in enumerate(combos)}
    probs = []
    for b, best in zip(user_beta, best_of_user):
        if best is None:
            continue
        util = np.concatenate([[0.0], b])[cols].sum(1)
        p = np.exp(util - util.max())
        probs.append(p[index[best]] / p.sum())
    return float(np.mean(probs)) if probs else float("nan")


def derived_attributes(
    item_ids: np.ndarray, embeddings: np.ndarray, *, n_fields: int, n_values: int, seed: int
) -> pd.DataFrame:
    """Discrete attributes from item embeddings through a sigmoid (the paper's fallback when
    items carry none): field ``f`` is ``sigmoid(e . w_f)`` (fixed-seed random unit ``w_f``
    on standardized embeddings) cut into ``n_values`` equal-width bins."""
    e = (embeddings - embeddings.mean(0)) / (embeddings.std(0) + 1e-8)
    w = np.random.default_rng(seed).normal(size=(e.shape[1], n_fields))
    w /= np.linalg.norm(w, axis=0)
    s = 1.0 / (1.0 + np.exp(-(e @ w)))
    values = np.minimum((s * n_values).astype(int), n_values - 1)
    frame = pd.DataFrame(values, columns=[f"d{f}" for f in range(n_fields)])
    frame.insert(0, "item_id", item_ids)
    return frame
