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
    clusters = _cluster_params(rng, n_clusters, shared_weekly)
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
    local = _ar_noise(rng, clusters["ar"][cluster], n_steps)
    price, promo, holiday = _features(rng, dates, n_segments)
    feats = np.stack([np.log(price), promo, holiday], -1)  # [I, L, 3]
    effect = np.einsum("ilf,if->il", feats, clusters["beta"][cluster])
    gamma = _carryover(seed, carryover, carryover_levels, cluster, n_clusters)
    effect += gamma[:, None] * _lagged_sum(promo, *CARRYOVER_LAGS)
    mean = level[:, None] * np.exp(seasonal + local + effect)
    y = rng.poisson(mean).astype(float)

    ids = np.array([f"seg{i:03d}" for i in range(n_segments)])
    keep = t[None, :] >= (n_steps - n_records)[:, None]
    frame = _long_frame(ids, dates, keep, y=y, price=price, promo=promo, holiday=holiday)
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


def _cluster_params(rng: np.random.Generator, n_clusters: int, shared_weekly: bool) -> dict:
    """Per-cluster yearly amplitude / phase, weekly profile(s), AR coefficient and feature
    effects ``beta`` f[C, 3] (log price, promotion, holiday)."""
    return {
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


def _ar_noise(rng: np.random.Generator, rho: np.ndarray, n_steps: int) -> np.ndarray:
    """f[I, L] AR(1) noise with per-segment coefficients ``rho`` f[I], innovations N(0, 0.15)."""
    noise = rng.normal(0, 0.15, (len(rho), n_steps))
    local = np.zeros((len(rho), n_steps))
    for step in range(1, n_steps):
        local[:, step] = rho * local[:, step - 1] + noise[:, step]
    return local


def _features(rng: np.random.Generator, dates: pd.DatetimeIndex, n_segments: int):
    """Price (a clipped random walk), promotion flags (8% of days) and holidays, each f[I, L]."""
    shape = (n_segments, len(dates))
    price = np.clip(1 + np.cumsum(rng.normal(0, 0.02, shape), 1), 0.5, 1.5)
    promo = (rng.random(shape) < 0.08).astype(float)
    holiday = np.broadcast_to(_holidays(dates), shape).astype(float)
    return price, promo, holiday


def _carryover(seed, carryover: float, levels, cluster: np.ndarray, n_clusters: int) -> np.ndarray:
    """f[I] delayed promotion response: the cluster's level (shuffled) times ``carryover``,
    plus N(0, 0.1 * carryover) per segment, from its own stream (``[seed, 1]``) so the main
    stream is the same with and without it."""
    own = np.random.default_rng([seed, 1])
    levels = np.linspace(-1, 1, n_clusters) if levels is None else levels
    if len(levels) != n_clusters:
        raise ValueError(f"carryover_levels has {len(levels)} values for {n_clusters} clusters")
    gamma = own.permutation(carryover * np.asarray(levels, float))[cluster]
    return gamma + own.normal(0, 0.1 * carryover, len(cluster))


def _long_frame(ids, dates, keep: np.ndarray, **columns: np.ndarray) -> pd.DataFrame:
    """Long format ``unique_id, ds, *columns`` of the (segment, step) cells where ``keep``."""
    seg_idx, step_idx = np.nonzero(keep)
    return pd.DataFrame(
        {
            "unique_id": ids[seg_idx],
            "ds": dates[step_idx],
            **{name: value[seg_idx, step_idx] for name, value in columns.items()},
        }
    )


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
