"""Behaviour sequences (C2M 3.1.1): per user, the last L events as (behaviour, item, category).

Ids go through vocabularies with code 0 for padding and code 1 for out-of-vocabulary ids, so the
decoder's output layers stay small on real data (keep the most frequent items, bucket the rest).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from dmeta.c2m.data import BEHAVIORS

PAD, OOV = 0, 1


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Known ids, most frequent first; ``encode`` maps them to ``2 + rank``."""

    ids: np.ndarray

    @property
    def size(self) -> int:
        """Number of codes including padding and the OOV bucket."""
        return len(self.ids) + 2

    def encode(self, values: np.ndarray) -> np.ndarray:
        """i32 codes of ``values``: 2.. for known ids, ``OOV`` otherwise."""
        index = pd.Index(self.ids).get_indexer(np.asarray(values))
        return np.where(index >= 0, index + 2, OOV).astype(np.int32)


def build_vocabulary(
    values: np.ndarray, *, max_size: int | None = None, min_count: int = 1
) -> Vocabulary:
    """The ids seen at least ``min_count`` times, the ``max_size`` most frequent (ties by id)."""
    ids, counts = np.unique(np.asarray(values), return_counts=True)
    order = np.lexsort((ids, -counts))
    order = order[counts[order] >= min_count][:max_size]
    return Vocabulary(ids[order])


BEHAVIOR_VOCAB = Vocabulary(np.array(BEHAVIORS))


@dataclasses.dataclass(frozen=True)
class BehaviorSequences:
    """Per-user sequences, chronological, left-aligned, padded with 0.

    Attributes:
      users: i64[U] user ids (sorted).
      behavior, item, category: i32[U, L] codes (``BEHAVIOR_VOCAB``, item and category
        vocabularies).
      mask: bool[U, L] real events.
    """

    users: np.ndarray
    behavior: np.ndarray
    item: np.ndarray
    category: np.ndarray
    mask: np.ndarray

    def features(self) -> np.ndarray:
        """i32[U, L, 3]: (behaviour, item, category) codes."""
        return np.stack([self.behavior, self.item, self.category], axis=-1)


def build_sequences(
    events: pd.DataFrame, *, max_len: int, items: Vocabulary, categories: Vocabulary
) -> BehaviorSequences:
    """Last ``max_len`` events of every user, vectorized.

    Args:
      events: canonical event frame (``dmeta.c2m.data``), any order.
      max_len: L, the sequence length.
      items, categories: vocabularies for ``item_id`` and ``category_id``.
    """
    events = events.sort_values(["user_id", "timestamp"], kind="stable")
    user = events["user_id"].to_numpy()
    users, row, counts = np.unique(user, return_inverse=True, return_counts=True)
    position = np.arange(len(user)) - np.repeat(np.cumsum(counts) - counts, counts)
    start = np.maximum(counts - max_len, 0)[row]  # drop all but the last max_len
    keep = position >= start
    row, col = row[keep], (position - start)[keep]
    shape = (len(users), max_len)
    out = {}
    for name, values in (
        ("behavior", BEHAVIOR_VOCAB.encode(events["behavior"].astype(str).to_numpy())),
        ("item", items.encode(events["item_id"].to_numpy())),
        ("category", categories.encode(events["category_id"].to_numpy())),
    ):
        grid = np.zeros(shape, np.int32)
        grid[row, col] = values[keep]
        out[name] = grid
    mask = np.zeros(shape, bool)
    mask[row, col] = True
    return BehaviorSequences(users=users, mask=mask, **out)
