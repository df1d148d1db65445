"""Fast PrefixSpan over integer arrays with pseudo-projected databases (Pei et al., 2001).

Sequences are single-item elements (the setting of the ``prefixspan`` PyPI package and of the
C2M paper, Algorithm 2). The database is one flat ``int32`` array plus offsets; a projected
database is a pair of arrays ``(seq, pos)``: the sequences that contain the prefix and the flat
index right after the prefix's earliest match. All work for one projected database is a few
vectorized numpy passes:

* the extensions of a prefix are the items whose *first* occurrence in a suffix lies at flat
  index ``q >= pos`` with ``prev[q] < pos`` (``prev`` = previous occurrence of the same item in
  the same sequence), which also gives the child's pseudo-projection ``q + 1``;
* at the deepest level only supports are needed: the distinct items of a suffix are the items
  whose *last* occurrence in the sequence lies in it, a contiguous range of a precomputed compact
  array, so the deepest level is a single ``bincount`` over all grandchildren of a prefix at once.

Support counts sequences (not occurrences), and a pattern is kept when ``support >= min_support``,
exactly as ``prefixspan.PrefixSpan(db).frequent(min_support)`` with ``maxlen = max_length``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Largest number of expanded suffix elements materialised at once at the deepest level.
_CHUNK = 1 << 22


class _Database:
    """Flat integer database with the index arrays PrefixSpan needs.

    Attributes:
      items: i32[T] dense item codes of all sequences, concatenated.
      ends: i64[N] flat end index of each sequence.
      prev: i64[T] flat index of the previous occurrence of the same item in the same
        sequence, -1 if none.
      last_items: i32[U] items at the positions that are the last occurrence of their item
        in their sequence, in flat order.
      last_start: i64[T + 1] index into ``last_items`` of the first such position >= q.
      n_items: V, number of distinct items.
    """

    def __init__(self, codes: np.ndarray, offsets: np.ndarray, n_items: int):
        total = codes.shape[0]
        self.items = codes.astype(np.int32)
        self.ends = offsets[1:].astype(np.int64)
        self.n_items = n_items
        seq_id = np.repeat(np.arange(len(self.ends)), np.diff(offsets))
        # Sort positions by (sequence, item, position) to find neighbouring occurrences.
        order = np.lexsort((np.arange(total), codes, seq_id))
        same = np.zeros(total, dtype=bool)
        same[1:] = (seq_id[order][1:] == seq_id[order][:-1]) & (
            codes[order][1:] == codes[order][:-1]
        )
        prev = np.full(total, -1, dtype=np.int64)
        prev[order[1:][same[1:]]] = order[:-1][same[1:]]
        self.prev = prev
        is_last = np.ones(total, dtype=bool)
        is_last[prev[prev >= 0]] = False
        self.last_items = self.items[is_last]
        self.last_start = np.zeros(total + 1, dtype=np.int64)
        np.cumsum(is_last, out=self.last_start[1:])


def _ranges(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ``arange(starts[i], ends[i])``: returns (lengths i64[M], flat indices)."""
    lengths = ends - starts
    total = int(lengths.sum())
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return lengths, shift + np.arange(total, dtype=np.int64)


def _first_occurrences(
    db: _Database, seq: np.ndarray, pos: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, the first occurrence of every distinct item of its suffix.

    Args:
      seq: i64[M] sequence of each row; pos: i64[M] flat start of each row's suffix.

    Returns:
      (row i64[E], flat index i64[E], item i32[E]) sorted by row then position.
    """
    lengths, idx = _ranges(pos, db.ends[seq])
    start = np.repeat(pos, lengths)
    keep = db.prev[idx] < start
    idx = idx[keep]
    row = np.repeat(np.arange(len(seq)), lengths)[keep]
    return row, idx, db.items[idx]


def _count_deepest(
    db: _Database, group: np.ndarray, seq: np.ndarray, pos: np.ndarray, n_groups: int
):
    """Support of every item extension of every group of rows.

    Args:
      group: i64[M] prefix id (in [0, n_groups)) of each row; seq, pos: as in
        ``_first_occurrences``. Each (group, sequence) pair appears at most once.

    Returns:
      i64[n_groups, V] number of rows of each group whose suffix contains each item.
    """
    v = db.n_items
    starts = db.last_start[pos]
    ends = db.last_start[db.ends[seq]]
    lengths = ends - starts
    counts = np.zeros(n_groups * v, dtype=np.int64)
    cum = np.cumsum(lengths)
    cuts = np.searchsorted(cum, np.arange(_CHUNK, int(cum[-1]) if len(cum) else 0, _CHUNK))
    bounds = np.concatenate([[0], cuts, [len(seq)]])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi <= lo:
            continue
        n, idx = _ranges(starts[lo:hi], ends[lo:hi])
        key = np.repeat(group[lo:hi] * v, n) + db.last_items[idx]
        counts += np.bincount(key, minlength=n_groups * v)
    return counts.reshape(n_groups, v)


class _Miner:
    def __init__(self, db: _Database, min_support: int, max_length: int):
        self.db = db
        self.min_support = min_support
        self.max_length = max_length
        self.found: list[tuple[tuple[int, ...], np.ndarray, np.ndarray]] = []

    def emit(self, prefix: tuple[int, ...], counts: np.ndarray) -> np.ndarray:
        frequent = np.flatnonzero(counts >= self.min_support)
        if len(frequent):
            self.found.append((prefix, frequent, counts[frequent]))
        return frequent

    def mine(self, prefix: tuple[int, ...], seq: np.ndarray, pos: np.ndarray) -> None:
        """Emits all frequent extensions of ``prefix`` whose projected database is (seq, pos)."""
        db, depth = self.db, len(prefix)
        if depth + 1 == self.max_length:
            self.emit(prefix, _count_deepest(db, np.zeros_like(seq), seq, pos, 1)[0])
            return
        row, idx, item = _first_occurrences(db, seq, pos)
        frequent = self.emit(prefix, np.bincount(item, minlength=db.n_items))
        if not len(frequent):
            return
        rank = np.full(db.n_items, -1, dtype=np.int64)
        rank[frequent] = np.arange(len(frequent))
        keep = rank[item] >= 0
        child, row, idx = rank[item[keep]], row[keep], idx[keep]
        if depth + 2 == self.max_length:
            counts = _count_deepest(db, child, seq[row], idx + 1, len(frequent))
            for b, c in zip(frequent, counts):
                self.emit((*prefix, int(b)), c)
            return
        order = np.argsort(child, kind="stable")
        splits = np.searchsorted(child[order], np.arange(1, len(frequent)))
        for b, rows in zip(frequent, np.split(order, splits)):
            self.mine((*prefix, int(b)), seq[row[rows]], idx[rows] + 1)


def prefixspan(
    sequences: Sequence[Sequence[int]] | tuple[np.ndarray, np.ndarray],
    *,
    min_support: int,
    max_length: int | None = None,
) -> dict[tuple[int, ...], int]:
    """All frequent sequential patterns and their supports.

    Args:
      sequences: a list of integer sequences, or ``(values i64[T], offsets i64[N + 1])`` with
        sequence ``i`` equal to ``values[offsets[i]:offsets[i + 1]]``.
      min_support: a pattern is kept when at least this many sequences contain it (as a
        not necessarily contiguous subsequence).
      max_length: longest pattern length; None mines without a cap.

    Returns:
      ``{pattern: support}`` with patterns as tuples of the original integer items.
    """
    if min_support < 1:
        raise ValueError(f"min_support must be >= 1, got {min_support}")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be >= 1 or None, got {max_length}")
    if (
        isinstance(sequences, tuple)
        and len(sequences) == 2
        and isinstance(sequences[0], np.ndarray)
    ):
        values, offsets = np.asarray(sequences[0]), np.asarray(sequences[1], dtype=np.int64)
    else:
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        values = np.fromiter(
            (x for s in sequences for x in s), dtype=np.int64, count=int(offsets[-1])
        )
    vocab, codes = np.unique(values, return_inverse=True)
    if len(vocab) == 0:
        return {}
    db = _Database(codes.reshape(-1), offsets, len(vocab))
    miner = _Miner(
        db, min_support, max_length if max_length is not None else np.iinfo(np.int64).max
    )
    miner.mine((), np.arange(len(offsets) - 1, dtype=np.int64), offsets[:-1].copy())
    result: dict[tuple[int, ...], int] = {}
    original = vocab.tolist()
    for prefix, items, counts in miner.found:
        head = tuple(original[i] for i in prefix)
        for i, c in zip(items.tolist(), counts.tolist()):
            result[(*head, original[i])] = c
    return result
