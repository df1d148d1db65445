"""Synthetic C2M event logs with planted segments, category patterns and attribute preferences.

Each segment owns a block of categories; its users browse mostly inside the block, every user
of segment ``s`` carries the planted sequential category patterns of ``s`` (each with
probability ``pattern_prob``) and one pattern common to all segments, and each purchase is a
choice among ``n_alternatives`` viewed items of one category, drawn from the segment's
conditional logit over dummy-coded item attributes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from dmeta.c2m.data import EventLog

ITEM_OFFSET, CATEGORY_OFFSET = 10_000, 500


@dataclasses.dataclass(frozen=True)
class SyntheticC2M:
    """log: events and item attributes (fields ``f0..``, values ``0..n_values-1``);
    segment: i64[U] planted segment of user ``u`` (user ids are ``0..U-1``);
    patterns: per segment, its planted category-id patterns; common_pattern: planted in all;
    beta: f[S, n_fields * (n_values - 1)] utilities of the non-reference attribute values."""

    log: EventLog
    segment: np.ndarray
    patterns: tuple[tuple[tuple[int, ...], ...], ...]
    common_pattern: tuple[int, ...]
    beta: np.ndarray


def dummy_columns(values: np.ndarray, n_values: int) -> np.ndarray:
    """Dummy coding with value 0 as reference: ``i[..., F]`` -> ``f[..., F * (n_values - 1)]``."""
    onehot = np.eye(n_values)[values][..., 1:]
    return onehot.reshape(*values.shape[:-1], -1)


def synthetic_c2m(
    *,
    n_users: int = 400,
    n_segments: int = 4,
    block_size: int = 8,
    n_shared: int = 8,
    items_per_category: int = 8,
    n_fields: int = 3,
    n_values: int = 3,
    mean_events: int = 40,
    own_block: float = 0.8,
    n_patterns: int = 2,
    pattern_length: int = 3,
    pattern_prob: float = 0.9,
    n_purchases: int = 6,
    n_alternatives: int = 4,
    beta_scale: float = 1.5,
    seed: int = 0,
) -> SyntheticC2M:
    """Draws the log. Categories: ``n_segments`` blocks of ``block_size``, then ``n_shared``."""
    rng = np.random.default_rng(seed)
    n_cat = n_segments * block_size + n_shared
    segment = rng.permutation(np.arange(n_users) % n_segments)
    blocks = np.arange(n_segments * block_size).reshape(n_segments, block_size)
    shared = np.arange(n_segments * block_size, n_cat)
    patterns = tuple(
        tuple(
            tuple(rng.choice(blocks[s], pattern_length, replace=False)) for _ in range(n_patterns)
        )
        for s in range(n_segments)
    )
    common = tuple(rng.choice(shared, 2, replace=False))
    values = rng.integers(0, n_values, (n_cat * items_per_category, n_fields))
    beta = rng.uniform(-beta_scale, beta_scale, (n_segments, n_fields * (n_values - 1)))
    x_items = dummy_columns(values, n_values)

    rows = []  # (user, item, category, behavior)
    for user, s in enumerate(segment):
        n_bg = max(rng.poisson(mean_events), 1)
        own = rng.random(n_bg) < own_block
        cats = np.where(own, rng.choice(blocks[s], n_bg), rng.integers(0, n_cat, n_bg))
        kinds = rng.choice(["view", "cart", "fav"], n_bg, p=[0.85, 0.1, 0.05])
        chunks = [[(c, k) for c, k in zip(cats, kinds)]]
        for pattern in (*patterns[s], common):
            if rng.random() < pattern_prob:
                chunks.append([(c, "view") for c in pattern])
        # Interleave: every planted pattern keeps its order at random positions.
        slots = np.concatenate([np.full(len(ch), i) for i, ch in enumerate(chunks)])
        rng.shuffle(slots)
        cursors = [0] * len(chunks)
        stream = []
        for i in slots:
            stream.append(chunks[i][cursors[i]])
            cursors[i] += 1
        events = [
            (user, c * items_per_category + rng.integers(items_per_category), c, k)
            for c, k in stream
        ]
        for _ in range(n_purchases):
            c = rng.choice(blocks[s])
            alts = c * items_per_category + rng.choice(
                items_per_category, n_alternatives, replace=False
            )
            util = x_items[alts] @ beta[s] + rng.gumbel(size=n_alternatives)
            at = rng.integers(0, len(events) + 1)
            block = [(user, a, c, "view") for a in alts] + [(user, alts[util.argmax()], c, "buy")]
            events[at:at] = block
        rows.extend(events)
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "category_id", "behavior"])
    frame["item_id"] += ITEM_OFFSET
    frame["category_id"] += CATEGORY_OFFSET
    frame["timestamp"] = 1_600_000_000 + np.arange(len(frame)) * 60
    frame["behavior"] = frame["behavior"].astype("category")
    attributes = pd.DataFrame(values, columns=[f"f{i}" for i in range(n_fields)])
    attributes.insert(0, "item_id", np.arange(len(values)) + ITEM_OFFSET)
    shift = lambda p: tuple(int(c) + CATEGORY_OFFSET for c in p)
    return SyntheticC2M(
        log=EventLog(frame, attributes),
        segment=segment,
        patterns=tuple(tuple(shift(p) for p in seg) for seg in patterns),
        common_pattern=shift(common),
        beta=beta,
    )
