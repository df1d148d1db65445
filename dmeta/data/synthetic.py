"""Synthetic multi-segment demand with a known structure (the embedded default for demos and tests).

Segments fall into clusters (the ground-truth categories). A cluster fixes the
dynamics its segments share:

- a yearly seasonal profile (amplitude and phase) and, for daily data, a weekly profile;
- local dynamics: an AR(1) log-demand deviation with a cluster coefficient;
- responses to the external features (a price index, a promotion flag, a holiday flag);
- optionally (``carryover > 0``) a delayed promotion response: a promotion shifts the
  log-demand of the 3-5 weeks after it (``CARRYOVER_LAGS``) by a cluster coefficient
  (``carryover`` times a level, spread over [-1, 1] unless ``carryover_levels`` are given):
  stockpiling (a post-promotion dip) in some clusters, repeat purchase (a lift) in others. A model that pools every segment sees these effects
  average out; the segment's own support set or its cluster (the basket graph) reveals
  them: the regime where relations matter.

Each segment has its own level (lognormal), and demand is Poisson around
``level * exp(season + local + features)``. Record counts have a long tail: a few
segments cover the whole calendar, many start late and have little history.
Baskets co-purchase segments mostly from one cluster, so the co-occurrence graph
recovers the clusters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd

FEATURES = ("price", "promo", "holiday")
CARRYOVER_LAGS = (21, 35)  # a promotion at t shifts log-demand on steps t+21 .. t+34


@dataclasses.dataclass(frozen=True, eq=False)
class SyntheticDemand:
    """A generated dataset.

    Attributes:
      frame: long frame ``unique_id, ds, y, price, promo, holiday`` (one row per observed step).
      segments: ``unique_id, category, cluster, n_records`` per segment.
      baskets: ``basket_id, unique_id`` co-purchase stream (one row per item of a basket).
      truth: the generating parameters (per cluster and per segment arrays).
    """

    frame: pd.DataFrame
    segments: pd.DataFrame
    baskets: pd.DataFrame
    truth: dict


def make_demand(
    *,
    n_segments: int = 60,
    n_clusters: int = 4,
    n_steps: int = 3 * 365,
    freq: str = "D",
    min_records: int | None = None,
    tail_exponent: float = 1.2,
    baskets_per_segment: int = 30,
    within_cluster: float = 0.85,
    carryover: float = 0.0,
    carryover_levels: Sequence[float] | None = None,
    shared_weekly: bool = False,
    seed: int = 0,
) -> SyntheticDemand:
    """Generates clustered segment demand, features and baskets.

    Args:
      n_segments: I segments.
      n_clusters: clusters (= categories).
      n_steps: calendar length.
      freq: ``"D"`` (season 365, weekly profile) or ``"W"`` (weekly, season 52).
      min_records: fewest records of a segment (default: a quarter of a season).
      tail_exponent: Pareto exponent of the record counts (smaller: heavier tail).
      baskets_per_segment: baskets generated per segment on average.
      within_cluster: probability that a basket item comes from the basket's cluster.
      carryover: largest delayed promotion effect; cluster c gets ``carryover * levels[c]``
        (``carryover_levels``, shuffled), each segment its cluster's value plus N(0, 0.1 *
        carryover). 0 (the default) leaves the delayed response out.
      carryover_levels: one level per cluster (None: ``linspace(-1, 1)``).
      shared_weekly: one weekly profile for every cluster (the weekly pattern then does
        not reveal a segment's cluster).
      seed: numpy seed.

    Returns:
      A ``SyntheticDemand``.
    """
    if freq not in ("D", "W"):
        raise ValueError(f"freq={freq!r}; use 'D' or 'W'")
    rng = np.random.default_rng(seed)
    season = 365 if freq == "D" else 52
    min_records = min_records or max(season // 4, 8)
    if n_segments < n_clusters:
        raise ValueError(f"n_segments={n_segments} < n_clusters={n_clusters}")
    if min_records > n_steps:
        raise ValueError(f"min_records={min_records} exceeds n_steps={n_steps}")
    dates = pd.date_range("2020-01-05", periods=n_steps, freq="D" if freq == "D" else "W-SUN")

    clusters = {
        "amplitude": rng.uniform(0.3, 0.9, n_clusters),
        "phase": rng.permutation(np.linspace(0, 2 * np.pi, n_clusters, endpoint=False)),
        "weekly": rng.normal(0, 0.25, (1 if shared_weekly else n_clusters, 7)),
        "ar": rng.uniform(0.3, 0.95, n_clusters),
        "beta": np.stack(
            [
                rng.uniform(-1.5, -0.3, n_clusters),
                rng.uniform(0.1, 0.8, n_clusters),
                rng.uniform(-0.2, 0.8, n_clusters),
            ],
            1,
        ),
    }
    cluster = np.arange(n_segments) % n_clusters
    rng.shuffle(cluster)
    level = np.exp(rng.normal(2.5, 0.7, n_segments))
    n_records = np.minimum(n_steps, (min_records * (1 + rng.pareto(tail_exponent, n_segments))))
    n_records = n_records.astype(int)
    n_records[rng.choice(n_segments, max(1, n_segments // 10), replace=False)] = n_steps

    t = np.arange(n_steps)
    yearly = clusters["amplitude"][:, None] * np.sin(
        2 * np.pi * t[None, :] / season + clusters["phase"][:, None]
    )
    weekly = clusters["weekly"][:, dates.day_of_week] if freq == "D" else 0.0
    seasonal = (yearly + weekly)[cluster]  # [I, L]

    noise = rng.normal(0, 0.15, (n_segments, n_steps))
    local = np.zeros((n_segments, n_steps))
    rho = clusters["ar"][cluster]
    for step in range(1, n_steps):
        local[:, step] = rho * local[:, step - 1] + noise[:, step]

    price = 1 + np.cumsum(rng.normal(0, 0.02, (n_segments, n_steps)), 1)
    price = np.clip(price, 0.5, 1.5)
    promo = (rng.random((n_segments, n_steps)) < 0.08).astype(float)
    holiday = np.broadcast_to(_holidays(dates), (n_segments, n_steps)).astype(float)
    feats = np.stack([np.log(price), promo, holiday], -1)  # [I, L, 3]
    effect = np.einsum("ilf,if->il", feats, clusters["beta"][cluster])
    own = np.random.default_rng([seed, 1])  # leaves the main stream as it was without carryover
    levels = np.linspace(-1, 1, n_clusters) if carryover_levels is None else carryover_levels
    if len(levels) != n_clusters:
        raise ValueError(f"carryover_levels has {len(levels)} values for {n_clusters} clusters")
    gamma = own.permutation(carryover * np.asarray(levels, float))[cluster]
    gamma = gamma + own.normal(0, 0.1 * carryover, n_segments)
    effect += gamma[:, None] * _lagged_sum(promo, *CARRYOVER_LAGS)
    mean = level[:, None] * np.exp(seasonal + local + effect)
    y = rng.poisson(mean).astype(float)

    start = n_steps - n_records
    keep = t[None, :] >= start[:, None]
    seg_idx, step_idx = np.nonzero(keep)
    ids = np.array([f"seg{i:03d}" for i in range(n_segments)])
    frame = pd.DataFrame(
        {
            "unique_id": ids[seg_idx],
            "ds": dates[step_idx],
            "y": y[seg_idx, step_idx],
            "price": price[seg_idx, step_idx],
            "promo": promo[seg_idx, step_idx],
            "holiday": holiday[seg_idx, step_idx],
        }
    )
    segments = pd.DataFrame(
        {
            "unique_id": ids,
            "category": [f"cat{c}" for c in cluster],
            "cluster": cluster,
            "n_records": n_records,
        }
    )
    baskets = _baskets(rng, cluster, n_clusters, baskets_per_segment * n_segments, within_cluster)
    baskets["unique_id"] = ids[baskets.pop("segment").to_numpy()]
    truth = dict(
        clusters, cluster=cluster, level=level, n_records=n_records, season=season, carryover=gamma
    )
    return SyntheticDemand(frame, segments, baskets, truth)


def _lagged_sum(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """f[I, L] with ``out[:, t] = sum of x[:, t-k] for lo <= k < hi`` (zero before the start)."""
    csum = np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(x, 1)], 1)  # [I, L+1]
    t = np.arange(x.shape[1])
    upper = np.clip(t - lo + 1, 0, None)
    lower = np.clip(t - hi + 1, 0, None)
    return csum[:, upper] - csum[:, lower]


def _holidays(dates: pd.DatetimeIndex) -> np.ndarray:
    """1 on (or in the week of) late-December and early-July dates."""
    day = dates.day_of_year.to_numpy()
    return ((day >= 355) | ((day >= 183) & (day <= 189))).astype(float)


def _baskets(rng, cluster, n_clusters, n_baskets, within) -> pd.DataFrame:
    """Baskets of 2-4 segments drawn mostly from one cluster; rows (basket_id, segment)."""
    members = [np.flatnonzero(cluster == c) for c in range(n_clusters)]
    sizes = rng.integers(2, 5, n_baskets)
    basket_cluster = rng.integers(0, n_clusters, n_baskets)
    rows_basket, rows_segment = [], []
    for b, (size, c) in enumerate(zip(sizes, basket_cluster)):
        same = rng.random(size) < within
        items = np.where(same, rng.choice(members[c], size), rng.integers(0, len(cluster), size))
        items = np.unique(items)
        rows_basket.extend([b] * len(items))
        rows_segment.extend(items.tolist())
    return pd.DataFrame({"basket_id": rows_basket, "segment": rows_segment})
