"""Region x day panels with date types for STMP, and the arrays its tasks are drawn from.

A ``STMPData`` holds, for regions r = 1..R and days t = 1..D, the target ``y[r, t]``,
which cells were observed, the date type ``date_type[r, t]`` (types ``0..n_regular-1``
are regular days such as weekday / weekend, the rest are festival kinds; regional and
local holidays make the date type region-specific) and static region attributes.

Builders: ``make_synthetic`` (known ground-truth uplift driven by region attributes) and,
from the sources of ``dmeta.datasets``, the adapters of ``dmeta.stmp.protocol``.
``prepare`` turns a panel into scaled JAX arrays and the (region, date type) cell
index that tasks are sampled from.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from dmeta.types import Array

logger = logging.getLogger(__name__)

REGULAR_DAILY = ("weekday", "weekend")


@dataclasses.dataclass(frozen=True, eq=False)
class STMPData:
    """A region x day panel with date types and static region attributes.

    Attributes:
      y: f64[R, D] target (0 where unobserved).
      observed: bool[R, D] whether ``y`` was observed.
      date_type: i32[R, D] date type index into ``type_names``.
      attrs: f32[R, A] static region attributes (standardized / one-hot).
      dates: the D dates.
      regions: R region names.
      type_names: date type names; the first ``n_regular`` are regular days.
      attr_names: A attribute names.
      n_regular: number of regular date types.
      period: the seasonal skip of the jump-LSTM (7 for daily data).
      truth: ground truth of a synthetic panel (else empty).
    """

    y: np.ndarray
    observed: np.ndarray
    date_type: np.ndarray
    attrs: np.ndarray
    dates: pd.DatetimeIndex
    regions: tuple[str, ...]
    type_names: tuple[str, ...]
    attr_names: tuple[str, ...]
    n_regular: int = 2
    period: int = 7
    truth: dict = dataclasses.field(default_factory=dict)

    @property
    def is_festival(self) -> np.ndarray:
        """bool[R, D] festival days."""
        return self.date_type >= self.n_regular

    @property
    def n_types(self) -> int:
        return len(self.type_names)


def regular_types(dates: pd.DatetimeIndex) -> np.ndarray:
    """i32[D]: 0 on Monday-Friday, 1 on Saturday-Sunday."""
    return (dates.day_of_week.to_numpy() >= 5).astype(np.int32)


# ----------------------------------------------------------------------------- synthetic


def make_synthetic(
    *,
    n_regions: int = 24,
    n_days: int = 3 * 365,
    n_festivals: int = 4,
    n_attrs: int = 3,
    noise: float = 0.05,
    seed: int = 0,
) -> STMPData:
    """Daily panel whose festival uplift is a known function of region attributes.

    ``y[r, t] = level_r * weekly_r(t) * season(t) * uplift[r, f(t)] * noise`` with
    ``log uplift[r, f] = base_f + 0.4 * coef_f . attrs[r]``, so a new region's festival
    uplift is predictable from its attributes. Festival f lasts 1 or 2 days a year.

    Returns:
      ``STMPData`` with ``truth = {"uplift": f64[R, F], "level": f64[R]}``.
    """
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2015-01-01", periods=n_days, freq="D")
    attrs = rng.standard_normal((n_regions, n_attrs))
    level = 100.0 * np.exp(0.5 * attrs[:, 0] + 0.2 * rng.standard_normal(n_regions))
    weekend_lift = 1.0 + 0.3 * np.tanh(attrs[:, 1 % n_attrs])
    base = np.linspace(0.3, 1.0, n_festivals)
    coef = rng.standard_normal((n_festivals, n_attrs))
    uplift = np.exp(base[None, :] + 0.4 * attrs @ coef.T)  # [R, F]

    doy = dates.day_of_year.to_numpy()
    date_type = np.broadcast_to(regular_types(dates), (n_regions, n_days)).copy()
    fest_of_day = np.full(n_days, -1)
    for f in range(n_festivals):
        start = 40 + f * (300 // max(n_festivals, 1))
        fest_of_day[(doy >= start) & (doy < start + 1 + f % 2)] = f
    is_fest = fest_of_day >= 0
    date_type[:, is_fest] = 2 + fest_of_day[is_fest]

    weekly = np.where(date_type == 1, weekend_lift[:, None], 1.0)
    season = 1.0 + 0.1 * np.sin(2 * np.pi * doy / 365.0)
    lift = np.ones((n_regions, n_days))
    lift[:, is_fest] = uplift[:, fest_of_day[is_fest]]
    eps = np.exp(noise * rng.standard_normal((n_regions, n_days)))
    y = level[:, None] * weekly * season[None, :] * lift * eps
    return STMPData(
        y=y,
        observed=np.ones_like(y, dtype=bool),
        date_type=date_type.astype(np.int32),
        attrs=attrs.astype(np.float32),
        dates=dates,
        regions=tuple(f"r{i}" for i in range(n_regions)),
        type_names=REGULAR_DAILY + tuple(f"festival{f}" for f in range(n_festivals)),
        attr_names=tuple(f"a{i}" for i in range(n_attrs)),
        truth={"uplift": uplift, "level": level},
    )


# ----------------------------------------------------------------------------- JAX arrays


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Arrays:
    """A scaled panel on device.

    Attributes:
      ys: f32[R, D] target divided by the region's training mean (0 where unobserved).
      ys_in: f32[R, D] the series the networks' input windows read (``window``): ``ys``, or
        with ``prepare(closed_days="last_week")`` its unobserved days filled.
      obs: f32[R, D] 1 where observed.
      fest: f32[R, D] 1 on festival days.
      dtype: i32[R, D] date type.
      type_input: i32[R, D] the date type as the networks' one-hot input: ``dtype``, or -1
        (an all-zero one-hot) on the days whose type has no training target when
        ``prepare(unseen_types="zero")``.
      dow: i32[D] day of week (0 = Monday).
      month: i32[D] month (0 = January).
      attrs: f32[R, A] static region attributes.
    """

    ys: Array
    ys_in: Array
    obs: Array
    fest: Array
    dtype: Array
    type_input: Array
    dow: Array
    month: Array
    attrs: Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CellIndex:
    """Padded day lists that tasks and context sets are sampled from.

    Attributes:
      cell_days: i32[R, Dt, M] days of each (region, date type) cell.
      cell_count: i32[R, Dt] number of valid entries in ``cell_days``.
      region_days: i32[R, N] days of each region (any date type).
      region_count: i32[R].
      type_pairs: i32[Dt, P] flattened ``r * D + t`` of each date type (any region).
      type_count: i32[Dt].
      festival_type: f32[Dt] 1 for festival date types.
      festival_share: f32[] share of festival targets in the calendar of the training
        period (the mix that ``train.sample_tasks`` weights queries to).
    """

    cell_days: Array
    cell_count: Array
    region_days: Array
    region_count: Array
    type_pairs: Array
    type_count: Array
    festival_type: Array
    festival_share: Array


@dataclasses.dataclass(frozen=True, eq=False)
class Prepared:
    """A panel ready for training and evaluation.

    Attributes:
      data: the source panel (regions without training data removed).
      arrays: scaled ``Arrays``.
      scale: f64[R] mean of each region over ``known`` (``y = ys * scale``).
      train: bool[R, D] targets the neural methods train on (and draw context sets from).
      val: bool[R, D] early-stopping targets: the last days before the cutoff, not in
        ``train`` (empty without ``val_days``).
      test: bool[R, D] targets to evaluate.
      index: ``CellIndex`` over ``train``.
      known_index: ``CellIndex`` over ``known``, the history that test-time context sets
        and supports are drawn from.
    """

    data: STMPData
    arrays: Arrays
    scale: np.ndarray
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    index: CellIndex
    known_index: CellIndex

    @property
    def known(self) -> np.ndarray:
        """bool[R, D] every target before the cutoff (``train | val``): what the methods
        without early stopping fit on."""
        return self.train | self.val


def fitted_on_train(prep: Prepared) -> Prepared:
    """``prep`` without its early-stopping targets (``known == train``): what a method
    without early stopping fits on when it is to learn from the neural methods' targets.
    The ``val`` days stay in the inputs (``arrays``), the scale and the test targets
    are unchanged."""
    return dataclasses.replace(prep, val=np.zeros_like(prep.val))


def _pad_lists(lists: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    counts = np.array([len(x) for x in lists], np.int32)
    out = np.zeros((len(lists), max(int(counts.max()), 1)), np.int32)
    for i, x in enumerate(lists):
        out[i, : len(x)] = x
    return out, counts


def build_index(
    mask: np.ndarray, date_type: np.ndarray, n_types: int, *, n_regular: int = 2,
    festival_share: float = 0.0,
) -> CellIndex:  # fmt: skip
    """``CellIndex`` of the True entries of ``mask: bool[R, D]`` (types from ``n_regular``
    on are festivals; ``festival_share`` is stored for the query weights)."""
    n_regions, n_days = mask.shape
    cells = [np.flatnonzero(mask[r] & (date_type[r] == d)) for r in range(n_regions)
             for d in range(n_types)]  # fmt: skip
    cell_days, cell_count = _pad_lists(cells)
    region_days, region_count = _pad_lists([np.flatnonzero(m) for m in mask])
    flat_mask, flat_type = mask.ravel(), date_type.ravel()
    type_pairs, type_count = _pad_lists(
        [np.flatnonzero(flat_mask & (flat_type == d)) for d in range(n_types)]
    )
    return CellIndex(
        cell_days=jnp.asarray(cell_days.reshape(n_regions, n_types, -1)),
        cell_count=jnp.asarray(cell_count.reshape(n_regions, n_types)),
        region_days=jnp.asarray(region_days),
        region_count=jnp.asarray(region_count),
        type_pairs=jnp.asarray(type_pairs),
        type_count=jnp.asarray(type_count),
        festival_type=jnp.asarray(np.arange(n_types) >= n_regular, jnp.float32),
        festival_share=jnp.asarray(festival_share, jnp.float32),
    )


def one_week_of_festivals(data: STMPData, mask: np.ndarray) -> np.ndarray:
    """bool[R, D]: ``mask`` with festival days kept only in its densest 7-day window.

    The window is the one holding the most festival (region, day) targets of ``mask``
    (the latest on ties), e.g. a Christmas week: the "one week of festival data" setting.
    """
    fest = (mask & data.is_festival).sum(axis=0)
    if not fest.any():
        logger.warning("one festival week: no festival day to keep")
        return mask
    weekly = np.convolve(fest, np.ones(7), mode="full")[6:]  # weekly[t] = sum fest[t:t+7]
    start = int(len(weekly) - 1 - np.argmax(weekly[::-1]))
    keep = np.zeros(mask.shape[1], bool)
    keep[start : start + 7] = True
    end = min(start + 6, len(data.dates) - 1)
    logger.info("one festival week kept: %s..%s", data.dates[start], data.dates[end])
    return mask & (~data.is_festival | keep[None, :])


def type_input(date_type: np.ndarray, train: np.ndarray, unseen_types: str) -> np.ndarray:
    """i32[R, D]: ``date_type``, with -1 on the types no ``train`` target has if
    ``unseen_types == "zero"``."""
    if unseen_types == "one_hot":
        return date_type
    seen = np.isin(date_type, np.unique(date_type[train]))
    return np.where(seen, date_type, -1)


def prepare(
    data: STMPData,
    *,
    cutoff: int,
    window: int,
    test_end: int | None = None,
    val_days: int = 0,
    one_festival_week: bool = False,
    unseen_types: str = "one_hot",
    closed_days: str = "zero",
) -> Prepared:
    """Scales a panel by each region's mean before the cutoff and marks train / val / test.

    A target (r, t) is valid when observed, ``t >= window`` and at least half its
    input window is observed; targets before ``cutoff`` are known (the last ``val_days``
    of them are the early-stopping ``val``, the rest ``train``), test targets are
    ``cutoff <= t < test_end``. Regions with fewer than ``window`` known targets are
    dropped (logged). Unobserved inputs are zeros with an ``obs`` flag of 0.

    Args:
      data: the panel.
      cutoff: first test day index.
      window: input window length L.
      test_end: end of the test period (default: the last day).
      val_days: days before ``cutoff`` held out of ``train`` for early stopping.
      one_festival_week: keep the festival targets of one week of ``train`` only.
      unseen_types: ``"one_hot"``: every date type is its own one-hot input, including types
        without a training target, whose input weights no target updates (they stay at
        their random initialization); ``"zero"``: those types enter as an all-zero one-hot,
        as XGBoost's never-split one-hot columns treat them.
      closed_days: what the networks' input windows read on unobserved days (their flag
        stays 0): ``"zero"``, or ``"last_week"`` (``fill_last_period``).
    """
    if unseen_types not in ("one_hot", "zero"):
        raise ValueError(f"unseen_types must be 'one_hot' or 'zero', got {unseen_types!r}")
    if closed_days not in ("zero", "last_week"):
        raise ValueError(f"closed_days must be 'zero' or 'last_week', got {closed_days!r}")
    n_days = data.y.shape[1]
    test_end = n_days if test_end is None else test_end
    obs = data.observed
    cum = np.concatenate([np.zeros((obs.shape[0], 1)), np.cumsum(obs, axis=1)], axis=1)
    t = np.arange(n_days)
    in_window = cum[:, t] - cum[:, np.maximum(t - window, 0)]
    valid = obs & (t >= window)[None, :] & (in_window >= window / 2)
    keep = (valid & (t < cutoff)[None, :]).sum(axis=1) >= window
    if not keep.all():
        dropped = [data.regions[i] for i in np.flatnonzero(~keep)]
        logger.warning("dropped %d region(s) with < %d training days: %s", len(dropped),
                       window, dropped)  # fmt: skip
        data = dataclasses.replace(
            data,
            y=data.y[keep],
            observed=obs[keep],
            date_type=data.date_type[keep],
            attrs=data.attrs[keep],
            regions=tuple(np.asarray(data.regions)[keep]),
        )
        valid = valid[keep]
    known = valid & (t < cutoff)[None, :]
    festival_share = float(data.is_festival[known].mean())  # the calendar's, before one_week
    test = valid & ((t >= cutoff) & (t < test_end))[None, :]
    val = known & (t >= cutoff - val_days)[None, :]
    train = known & ~val
    if one_festival_week:  # the week comes from train; val keeps its regular days only
        train, val = one_week_of_festivals(data, train), val & ~data.is_festival
    known = train | val
    scale = region_scale(data, known)
    scaled = np.where(data.observed, data.y / scale[:, None], 0.0)
    ys = jnp.asarray(scaled, jnp.float32)
    if closed_days == "last_week":
        ys_in = jnp.asarray(fill_last_period(scaled, data.observed, data.period), jnp.float32)
    else:
        ys_in = ys  # the same buffer: nothing is filled
    arrays = Arrays(
        ys=ys,
        ys_in=ys_in,
        obs=jnp.asarray(data.observed, jnp.float32),
        fest=jnp.asarray(data.is_festival, jnp.float32),
        dtype=jnp.asarray(data.date_type),
        type_input=jnp.asarray(type_input(data.date_type, train, unseen_types)),
        dow=jnp.asarray(data.dates.day_of_week.to_numpy(), jnp.int32),
        month=jnp.asarray(data.dates.month.to_numpy() - 1, jnp.int32),
        attrs=jnp.asarray(data.attrs, jnp.float32),
    )
    index, known_index = (
        build_index(mask, data.date_type, data.n_types, n_regular=data.n_regular,
                    festival_share=festival_share)
        for mask in (train, known)
    )  # fmt: skip
    return Prepared(data, arrays, scale, train, val, test, index, known_index)


def fill_last_period(ys: np.ndarray, observed: np.ndarray, period: int) -> np.ndarray:
    """f64[R, D]: ``ys`` with each unobserved day taking the (filled) value ``period`` days
    earlier, 0 in the first period. Causal: a filled day reads only earlier days, so a
    window ending before day t sees nothing of t. Daily data: a store closed on Christmas
    reads as the same weekday a week earlier, not as a day without demand."""
    out = np.array(ys, dtype=np.float64)
    for t in range(period, out.shape[1]):
        closed = ~observed[:, t]
        out[closed, t] = out[closed, t - period]
    return out


def region_scale(data: STMPData, known: np.ndarray) -> np.ndarray:
    """f64[R] mean of each region over its ``known`` targets; a region whose known demand is
    all zero (or has no known day) gets the smallest positive scale of the others (logged),
    so no region divides by zero."""
    scale = np.array(
        [data.y[r, known[r]].mean() if known[r].any() else 0.0 for r in range(len(data.regions))]
    )
    bad = ~(np.isfinite(scale) & (scale > 0))
    if bad.any():
        floor = scale[~bad].min() if (~bad).any() else 1.0
        logger.warning(
            "regions %s have no positive training demand; scaled by %.4g instead of their mean",
            [data.regions[r] for r in np.flatnonzero(bad)],
            floor,
        )
        scale = np.where(bad, floor, scale)
    return scale


def window(arrays: Arrays, r: Array, t: Array, length: int) -> Array:
    """Input window of target (r, t): f32[L, 3] (scaled input series ``ys_in``, observed,
    festival) for t-L..t-1."""
    stacked = jnp.stack([arrays.ys_in, arrays.obs, arrays.fest], axis=-1)  # [R, D, 3]
    return jax.lax.dynamic_slice(stacked[r], (t - length, 0), (length, 3))


def uplift(arrays: Arrays, r: Array, t: Array, period: int) -> Array:
    """Scaled y[r, t] minus the observed mean of the previous ``period`` days: f32[]."""
    ys = jax.lax.dynamic_slice(arrays.ys[r], (t - period,), (period,))
    obs = jax.lax.dynamic_slice(arrays.obs[r], (t - period,), (period,))
    return arrays.ys[r, t] - jnp.sum(ys * obs) / jnp.maximum(jnp.sum(obs), 1.0)
