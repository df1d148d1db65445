"""MPFN samples (RMLDP Definition 2, eq. 2-3) cut from a dense panel of all segments.

For segment i and current time t_c (an index into the common calendar):

- ``x_local = values[i, t_c-S+1 : t_c+1]``, the |T_c| = S records up to t_c (eq. 2);
- ``x_season = values[i, t_l-S+1 : t_l+1]`` with ``t_l = t_c + T_g - season``, the S
  records ending at the same point of the previous season as the target start (eq. 3);
- ``y = sum_{j=T_g}^{T_g+T_f-1} values[i, t_c+j, 0]``, the demand over the target interval.

The paper writes the target interval as the closed ``[t_c+T_g, t_c+T_g+T_f]``, which
has T_f + 1 steps; we sum exactly T_f steps so that ``horizon_len`` is the length of
the target interval (T_f = 7 daily steps is one week, not eight days).

A sample is kept when its whole target interval is observed and at least
``min_history`` records of its local window are. Positions before a series starts
(or before the calendar) read as zeros: data-poor segments yield left-padded
samples instead of being dropped, and seasonal windows that reach before the data
are all or partly zero. Both counts are logged.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import numpy as np
import pandas as pd

from dmeta.data.frames import LongFrame

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class Panel:
    """All segments on one calendar.

    Attributes:
      values: f32[I, L, F] feature 0 is y, then the LongFrame's features; 0 where unobserved.
      observed: bool[I, L] True from each series' first to its last record.
      ids: [I] segment ids, sorted (row i of every array is segment ``ids[i]``).
      dates: DatetimeIndex[L], the common calendar.
      feature_names: F names, ``("y", *feature_cols)``.
      freq: pandas frequency string of the calendar.
    """

    values: np.ndarray
    observed: np.ndarray
    ids: np.ndarray
    dates: pd.DatetimeIndex
    feature_names: tuple[str, ...]
    freq: str


def to_panel(lf: LongFrame) -> Panel:
    """Scatters a validated long frame into a dense ``Panel``."""
    frame = lf.frame
    codes, ids = pd.factorize(frame["unique_id"], sort=True)
    dates = pd.date_range(frame["ds"].min(), frame["ds"].max(), freq=lf.freq)
    t = dates.get_indexer(frame["ds"])
    names = ("y", *lf.feature_cols)
    values = np.zeros((len(ids), len(dates), len(names)), np.float32)
    values[codes, t] = frame[list(names)].to_numpy(np.float32)
    observed = np.zeros((len(ids), len(dates)), bool)
    observed[codes, t] = True
    return Panel(values, observed, np.asarray(ids), dates, names, lf.freq)


def n_records(panel: Panel) -> np.ndarray:
    """i32[I] number of observed records per segment."""
    return panel.observed.sum(axis=1).astype(np.int32)


def season_length(freq: str) -> int:
    """Steps per year for a calendar: 365 for daily, 52 for weekly frequencies."""
    name = freq.upper()
    if name == "D":
        return 365
    if name.startswith("W"):
        return 52
    raise ValueError(f"no default season for freq {freq!r}; pass season explicitly")


def gather_windows(values, segment, t_end, seq_len: int):
    """Windows of ``seq_len`` steps ending at ``t_end``; steps before index 0 are zero.

    Works on numpy and jax arrays alike (used by the JAX task sampler too).

    Args:
      values: f32[I, L, F].
      segment: i32[...] segment of each window (broadcastable against ``t_end``).
      t_end: i32[...] last calendar index of each window (< L).
      seq_len: S.

    Returns:
      f32[..., S, F].
    """
    idx = t_end[..., None] + np.arange(1 - seq_len, 1)
    valid = idx >= 0
    x = values[segment[..., None], idx * valid]
    return x * valid[..., None]


@dataclasses.dataclass(frozen=True, eq=False)
class Windows:
    """All kept MPFN samples of a panel, sorted by (segment, t_c).

    ``x_local`` and ``x_season`` are gathered from the panel on first access
    (M * S * F * 4 bytes each) and cached.

    Attributes:
      panel: the source panel (raw values).
      segment: i32[M] segment index (row of the panel) of each sample.
      t_c: i32[M] current time, an index into ``panel.dates``.
      y: f32[M] raw target demand (sum of T_f values of y).
      local_obs: i32[M] observed records in the local window (< S means left-padded).
      season_obs: i32[M] observed records in the seasonal window.
      seq_len, horizon_gap, horizon_len, season: S, T_g, T_f and the season length.
      min_history: least observed records required in a local window.
    """

    panel: Panel
    segment: np.ndarray
    t_c: np.ndarray
    y: np.ndarray
    local_obs: np.ndarray
    season_obs: np.ndarray
    seq_len: int
    horizon_gap: int
    horizon_len: int
    season: int
    min_history: int

    @functools.cached_property
    def x_local(self) -> np.ndarray:
        """f32[M, S, F] records t_c-S+1 .. t_c."""
        return gather_windows(self.panel.values, self.segment, self.t_c, self.seq_len)

    @functools.cached_property
    def x_season(self) -> np.ndarray:
        """f32[M, S, F] records t_l-S+1 .. t_l with t_l = t_c + T_g - season."""
        t_l = self.t_c + self.horizon_gap - self.season
        return gather_windows(self.panel.values, self.segment, t_l, self.seq_len)


def make_windows(
    panel: Panel,
    *,
    seq_len: int,
    horizon_gap: int,
    horizon_len: int,
    season: int,
    min_history: int = 1,
) -> Windows:
    """Cuts every valid (segment, t_c) sample of a panel, fully vectorized.

    Args:
      panel: from ``to_panel``.
      seq_len: S = |T_c|, records per local / seasonal window (30 in the paper).
      horizon_gap: T_g >= 1, steps from t_c to the first target step.
      horizon_len: T_f >= 1, steps summed into the target.
      season: steps per season (365 daily, 52 weekly); must be >= T_g so the
        seasonal window never reads past t_c.
      min_history: least observed records in the local window, in [1, S].

    Returns:
      ``Windows`` sorted by (segment, t_c).
    """
    s, t_g, t_f = seq_len, horizon_gap, horizon_len
    if s < 1 or t_g < 1 or t_f < 1:
        raise ValueError(f"need seq_len, horizon_gap, horizon_len >= 1; got {s}, {t_g}, {t_f}")
    if season < t_g:
        raise ValueError(f"season={season} < horizon_gap={t_g}: the seasonal window would leak")
    if not 1 <= min_history <= s:
        raise ValueError(f"min_history={min_history} must lie in [1, seq_len={s}]")
    obs = panel.observed
    n_seg, length = obs.shape
    # cum[:, k] = observed records among calendar steps [0, k).
    cum = np.concatenate([np.zeros((n_seg, 1), np.int32), np.cumsum(obs, 1, dtype=np.int32)], 1)

    def count(lo, hi):  # observed records in [lo, hi) per segment, bounds clipped to the calendar
        return cum[:, np.clip(hi, 0, length)] - cum[:, np.clip(lo, 0, length)]

    t = np.arange(length)
    target_ok = (t + t_g + t_f <= length) & (count(t + t_g, t + t_g + t_f) == t_f)
    local = count(t + 1 - s, t + 1)
    t_l = t + t_g - season
    seasonal = count(t_l + 1 - s, t_l + 1)
    segment, t_c = np.nonzero(target_ok & (local >= min_history))
    segment, t_c = segment.astype(np.int32), t_c.astype(np.int32)
    target_idx = t_c[:, None] + t_g + np.arange(t_f)
    y = panel.values[segment[:, None], target_idx, 0].sum(1, dtype=np.float64).astype(np.float32)
    windows = Windows(
        panel=panel,
        segment=segment,
        t_c=t_c,
        y=y,
        local_obs=local[segment, t_c],
        season_obs=seasonal[segment, t_c],
        seq_len=s,
        horizon_gap=t_g,
        horizon_len=t_f,
        season=season,
        min_history=min_history,
    )
    _log_coverage(windows)
    return windows


def _log_coverage(w: Windows) -> None:
    """Logs padded samples and segments that yield no sample at all."""
    n = len(w.segment)
    padded = w.local_obs < w.seq_len
    logger.info(
        "%d samples from %d segments; %d left-padded local windows (%d segments), "
        "%d seasonal windows partly or wholly before the data",
        n,
        len(np.unique(w.segment)),
        int(padded.sum()),
        len(np.unique(w.segment[padded])),
        int((w.season_obs < w.seq_len).sum()),
    )
    empty = np.flatnonzero(np.bincount(w.segment, minlength=len(w.panel.ids)) == 0)
    if len(empty):
        logger.warning(
            "%d segments yield no sample (fewer than horizon_gap + horizon_len + min_history - 1 "
            "= %d consecutive records with the target observed), e.g. %s",
            len(empty),
            w.horizon_gap + w.horizon_len + w.min_history - 1,
            list(w.panel.ids[empty[:5]]),
        )
