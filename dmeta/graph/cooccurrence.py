"""Segment knowledge graph (RMLDP section 4.3.2): co-occurrence in baskets or a user edge list.

Nodes are segments (rows of the panel, in ``ids`` order); the weight of a link is
the number of baskets (orders) in which both segments occur. Links whose weight is
below ``threshold`` are dropped. The result is a dense symmetric ``f32[I, I]``
matrix with a zero diagonal, what ``deepwalk.random_walks`` consumes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from dmeta.data.frames import LINE_OFFSET, DataError

logger = logging.getLogger(__name__)


def _codes(values: pd.Series, ids: np.ndarray, column: str, source: str) -> np.ndarray:
    """Positions of ``values`` in ``ids``; raises naming the first unknown rows."""
    index = pd.Index(np.asarray(ids).astype(str))
    codes = index.get_indexer(values.astype(str))
    bad = np.flatnonzero(codes < 0)
    if len(bad):
        shown = ", ".join(f"line {i + LINE_OFFSET} ({values.iloc[i]!r})" for i in bad[:5])
        raise DataError(f"{source}: column {column!r} names segments not in the data at {shown}")
    return codes


def _require(df: pd.DataFrame, cols: tuple[str, ...], source: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; found {list(df.columns)}")


def _threshold(w: np.ndarray, threshold: float) -> np.ndarray:
    np.fill_diagonal(w, 0.0)
    kept = w >= threshold
    dropped = int(((w > 0) & ~kept).sum() // 2)
    if dropped:
        logger.info("graph: dropped %d links with weight < %g", dropped, threshold)
    isolated = int((~(kept & (w > 0)).any(1)).sum())
    if isolated:
        logger.info("graph: %d of %d segments have no link", isolated, len(w))
    return np.where(kept, w, 0.0).astype(np.float32)


def cooccurrence_graph(
    baskets: pd.DataFrame,
    ids: np.ndarray,
    *,
    basket_col: str = "basket_id",
    id_col: str = "unique_id",
    threshold: float = 1.0,
    source: str = "<baskets>",
    unknown: str = "error",
) -> np.ndarray:
    """Co-occurrence weights from baskets.

    Args:
      baskets: one row per (basket, segment) item; repeated items count once per basket.
      ids: [I] segment ids (node order).
      basket_col, id_col: column names.
      threshold: links with fewer co-occurrences are dropped.
      source: name used in error messages.
      unknown: ``"error"`` raises on segments not in ``ids``; ``"drop"`` drops those rows
        (logged).

    Returns:
      f32[I, I] symmetric weights, zero diagonal.
    """
    _require(baskets, (basket_col, id_col), source)
    if unknown == "drop":
        known = baskets[id_col].astype(str).isin(set(np.asarray(ids).astype(str)))
        if not known.all():
            logger.warning("%s: dropped %d rows of unknown segments", source, int((~known).sum()))
        baskets = baskets[known]
    seg = _codes(baskets[id_col].reset_index(drop=True), ids, id_col, source)
    basket, _ = pd.factorize(baskets[basket_col])
    b = sp.coo_matrix(
        (np.ones(len(seg), np.float32), (basket, seg)),
        shape=(int(basket.max(initial=-1)) + 1, len(ids)),
    ).tocsr()
    b.data[:] = 1.0  # an item repeated within a basket counts once
    w = np.asarray((b.T @ b).todense(), np.float64)
    return _threshold(w, threshold)


def edge_graph(
    edges: pd.DataFrame,
    ids: np.ndarray,
    *,
    threshold: float = 0.0,
    source: str = "<edges>",
    unknown: str = "error",
) -> np.ndarray:
    """Weights from a user edge list ``src, dst[, weight]`` (undirected; repeats add up).

    Args:
      edges: the edge list; ``weight`` defaults to 1 and must be finite and >= 0.
      ids: [I] segment ids (node order).
      threshold: links with a smaller total weight are dropped.
      source: name used in error messages.
      unknown: ``"error"`` raises on segments not in ``ids``; ``"drop"`` drops those edges
        (logged; e.g. segments outside a ``max_segments`` subset).

    Returns:
      f32[I, I] symmetric weights, zero diagonal.
    """
    _require(edges, ("src", "dst"), source)
    lines = np.arange(len(edges)) + LINE_OFFSET  # of the file, before any edge is dropped
    if unknown == "drop":
        names = set(np.asarray(ids).astype(str))
        known = edges["src"].astype(str).isin(names) & edges["dst"].astype(str).isin(names)
        if not known.all():
            logger.warning("%s: dropped %d edges of unknown segments", source, int((~known).sum()))
        edges, lines = edges[known], lines[known.to_numpy()]
    edges = edges.reset_index(drop=True)
    src = _codes(edges["src"], ids, "src", source)
    dst = _codes(edges["dst"], ids, "dst", source)
    if "weight" in edges:
        weight = pd.to_numeric(edges["weight"], errors="coerce").to_numpy(np.float64)
        bad = np.flatnonzero(~np.isfinite(weight) | (weight < 0))
        if len(bad):
            shown = ", ".join(f"line {lines[i]} ({edges['weight'].iloc[i]!r})" for i in bad[:5])
            raise DataError(f"{source}: column 'weight' must be a number >= 0 at {shown}")
    else:
        weight = np.ones(len(edges))
    w = np.zeros((len(ids), len(ids)))
    np.add.at(w, (src, dst), weight)
    np.add.at(w, (dst, src), weight)
    return _threshold(w, threshold)


def read_graph(path: str | Path, ids: np.ndarray, *, kind: str, threshold: float) -> np.ndarray:
    """Reads ``--baskets PATH`` (``kind="baskets"``: basket_id, unique_id) or ``--edges PATH``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    df = pd.read_csv(path)
    if kind == "baskets":
        return cooccurrence_graph(df, ids, threshold=threshold, source=str(path))
    if kind == "edges":
        return edge_graph(df, ids, threshold=threshold, source=str(path))
    raise ValueError(f"kind={kind!r}; use 'baskets' or 'edges'")
