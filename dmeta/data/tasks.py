"""Meta-learning tasks from MPFN windows: segment splits, support-only scaling, a seeded sampler.

Meta-training tasks (``sample_tasks``) are cut at a random time of a random training
segment and, by default, built like the meta-test tasks (``eval_tasks``): the most recent
samples before the cut as support, the first ones after the gap as query.

A segment's samples are ordered by time. Its **support** samples come before a
cut and its **query** samples after it, with a gap so that no support target
interval ends after the first query prediction time (no leakage): a support
sample at ``a`` reveals demand up to ``a + T_g + T_f - 1``, so query samples
start at ``b >= a_last + T_g + T_f - 1``.

Each segment is scaled on its own support period (every calendar step up to the
end of its last support target): the demand channel and the target are divided
by the segment's mean support demand (``scale``; 1 when that mean is 0, logged),
the other features are z-scored on the same steps. Unobserved steps read 0.
A sampled meta-training task is by default scaled the same way on its own support
period (``scaling="support"``), so, like a meta-test task, it is never scaled with
statistics of its query period; ``scaling="segment"`` reuses the segment's scaling at
its fixed cut instead (the former behaviour, under which a task cut before that point
was scaled with data from its own query period).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from dmeta.data.windows import Windows, gather_windows
from dmeta.types import Array, Key, Split, TaskBatch

logger = logging.getLogger(__name__)

_PAD_TIME = np.iinfo(np.int32).max // 2  # t_c of padding samples: after every real sample


@dataclasses.dataclass(frozen=True)
class SegmentSplit:
    """Segment indices (rows of the panel) of the three meta-learning roles."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_segments(n_records: np.ndarray, *, train_frac: float = 0.7) -> SegmentSplit:
    """RMLDP protocol: the top ``train_frac`` of segments by records train, the rest alternate.

    Args:
      n_records: i[I] records (or samples) per segment.
      train_frac: share of segments, richest first, used for meta-training.

    Returns:
      ``SegmentSplit``; the segments left after meta-training are assigned by record rank
      alternately to meta-validation and meta-testing, so both cover the whole tail.
    """
    if not 0 < train_frac < 1:
        raise ValueError(f"train_frac={train_frac} must lie in (0, 1)")
    order = np.argsort(-np.asarray(n_records), kind="stable")
    n_train = int(np.ceil(train_frac * len(order)))
    rest = order[n_train:]
    return SegmentSplit(np.sort(order[:n_train]), np.sort(rest[0::2]), np.sort(rest[1::2]))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TaskPool:
    """Every sample of every segment, scaled, on device; windows are gathered on demand.

    Attributes:
      values: f32[I, L, F] panel scaled per segment on its support period, 0 where unobserved.
      t_c: i32[I, N] sample times (calendar indices), ascending; padding is a huge time.
      y: f32[I, N] scaled targets (raw target / (T_f * scale)); 0 for padding.
      n: i32[I] samples per segment.
      cut: i32[I] support samples of each segment (indices < cut).
      query_start: i32[I] first query sample (indices >= query_start; == n when none).
      scale: f32[I] mean support demand per step; raw target = y * T_f * scale.
      raw: f32[I, L, F] the unscaled panel, 0 where unobserved; observed: bool[I, L].
      y_raw: f32[I, N] unscaled targets (demand summed over T_f steps); 0 for padding.
      seq_len, horizon_gap, horizon_len, season: S, T_g, T_f and the season length.
    """

    values: Array
    t_c: Array
    y: Array
    n: Array
    cut: Array
    query_start: Array
    scale: Array
    raw: Array
    observed: Array
    y_raw: Array
    seq_len: int = dataclasses.field(metadata=dict(static=True))
    horizon_gap: int = dataclasses.field(metadata=dict(static=True))
    horizon_len: int = dataclasses.field(metadata=dict(static=True))
    season: int = dataclasses.field(metadata=dict(static=True))

    @property
    def gap(self) -> int:
        """Least time between the last support sample and the first query sample."""
        return self.horizon_gap + self.horizon_len - 1


def build_task_pool(windows: Windows, *, support_frac: float = 0.7) -> TaskPool:
    """Pads the samples per segment, fixes each segment's support/query cut and scales.

    Args:
      windows: from ``make_windows`` (sorted by segment, t_c).
      support_frac: share of a segment's usable samples (those leaving room for the
        gap) that form its support set; the rest after the gap form the query set.

    Returns:
      A ``TaskPool`` covering every segment of ``windows.panel`` (segments without
      samples have ``n == 0``).
    """
    panel = windows.panel
    n_seg, length, _ = panel.values.shape
    n = np.bincount(windows.segment, minlength=n_seg).astype(np.int32)
    width = max(int(n.max(initial=0)), 1)
    start = np.cumsum(n) - n
    pos = np.arange(len(windows.segment)) - start[windows.segment]
    t_c = np.full((n_seg, width), _PAD_TIME, np.int32)
    t_c[windows.segment, pos] = windows.t_c
    y_raw = np.zeros((n_seg, width), np.float32)
    y_raw[windows.segment, pos] = windows.y

    gap = windows.horizon_gap + windows.horizon_len - 1
    last = np.where(n > 0, t_c[np.arange(n_seg), np.maximum(n - 1, 0)], -1)
    usable = (t_c <= (last - gap)[:, None]).sum(1)  # samples that can precede a query
    cut = np.where(usable > 0, np.maximum(1, np.floor(support_frac * usable)), 0).astype(np.int32)
    support_end = np.where(cut > 0, t_c[np.arange(n_seg), np.maximum(cut - 1, 0)], -1)
    query_start = np.where(cut > 0, (t_c < (support_end + gap)[:, None]).sum(1), n)
    query_start = query_start.astype(np.int32)
    no_task = np.flatnonzero(cut == 0)
    if len(no_task):
        logger.warning(
            "%d segments have too few samples for a support and a query set separated by "
            "the %d-step gap (e.g. %s); they are skipped by eval_tasks",
            len(no_task),
            gap,
            list(panel.ids[no_task[:5]]),
        )

    # Support period of each segment: calendar steps up to the end of its last support target.
    fit_end = np.where(cut > 0, support_end + gap, last)
    in_fit = (np.arange(length)[None, :] <= fit_end[:, None]) & panel.observed
    values, scale = _scale_panel(panel.values, panel.observed, in_fit, panel.ids)
    y = y_raw / (windows.horizon_len * scale[:, None])
    return TaskPool(
        values=jnp.asarray(values),
        t_c=jnp.asarray(t_c),
        y=jnp.asarray(y, jnp.float32),
        n=jnp.asarray(n),
        cut=jnp.asarray(cut),
        query_start=jnp.asarray(query_start),
        scale=jnp.asarray(scale, jnp.float32),
        raw=jnp.asarray(panel.values * panel.observed[..., None], jnp.float32),
        observed=jnp.asarray(panel.observed),
        y_raw=jnp.asarray(y_raw),
        seq_len=windows.seq_len,
        horizon_gap=windows.horizon_gap,
        horizon_len=windows.horizon_len,
        season=windows.season,
    )


def _scale_panel(values, observed, in_fit, ids) -> tuple[np.ndarray, np.ndarray]:
    """Per-segment scaling fitted on ``in_fit`` steps; returns (scaled f32[I,L,F], scale f32[I])."""
    w = in_fit[..., None].astype(np.float64)
    count = np.maximum(w.sum(1), 1.0)  # [I, 1]
    mean = (values * w).sum(1) / count  # [I, F]
    std = np.sqrt((((values - mean[:, None]) ** 2) * w).sum(1) / count)
    scale = mean[:, 0].copy()
    zero = scale <= 0
    if zero.any():
        logger.warning(
            "%d segments have zero mean demand on their support period (e.g. %s); "
            "their demand is left unscaled",
            int(zero.sum()),
            list(ids[np.flatnonzero(zero)[:5]]),
        )
        scale[zero] = 1.0
    std = np.where(std > 0, std, 1.0)
    out = (values - mean[:, None]) / std[:, None]
    out[..., 0] = values[..., 0] / scale[:, None]
    out *= observed[..., None]
    return out.astype(np.float32), scale.astype(np.float32)


def _split(
    pool: TaskPool, segment: Array, idx: Array, valid: Array, scaled: tuple | None = None
) -> Split:
    """Gathers samples ``idx`` i32[T, N] of segments ``segment`` i32[T] into a ``Split``,
    scaled per segment (``pool.values``, ``pool.y``) or with ``scaled = (values f32[T, L, F],
    y f32[T, N])`` each task's own scaling (``_task_scaling``)."""
    idx = jnp.where(valid, idx, 0)
    seg = segment[:, None]
    t_c = pool.t_c[seg, idx]
    t_c = jnp.where(valid, t_c, 0)
    if scaled is None:
        values, rows, y = pool.values, seg, pool.y[seg, idx]
    else:
        values, rows = scaled[0], jnp.arange(segment.shape[0])[:, None]
        y = jnp.take_along_axis(scaled[1], idx, 1)
    x_local = gather_windows(values, rows, t_c, pool.seq_len)
    x_season = gather_windows(values, rows, t_c + pool.horizon_gap - pool.season, pool.seq_len)
    mask = valid.astype(jnp.float32)
    return Split(x_local * mask[..., None, None], x_season * mask[..., None, None], y * mask, mask)


def _task_scaling(pool: TaskPool, segment: Array, fit_end: Array) -> tuple[Array, Array]:
    """Each task's panel and targets scaled as ``build_task_pool`` scales a segment, on the
    observed steps up to ``fit_end`` i32[T] (the end of its last support target): returns
    (values f32[T, L, F], y f32[T, N])."""
    raw, observed = pool.raw[segment], pool.observed[segment]
    in_fit = (jnp.arange(raw.shape[1])[None, :] <= fit_end[:, None]) & observed
    w = in_fit[..., None].astype(raw.dtype)
    count = jnp.maximum(w.sum(1), 1.0)  # [T, 1]
    mean = (raw * w).sum(1) / count  # [T, F]
    std = jnp.sqrt((((raw - mean[:, None]) ** 2) * w).sum(1) / count)
    std = jnp.where(std > 0, std, 1.0)
    scale = jnp.where(mean[:, 0] > 0, mean[:, 0], 1.0)
    values = (raw - mean[:, None]) / std[:, None]
    values = values.at[..., 0].set(raw[..., 0] / scale[:, None])
    values = values * observed[..., None]
    return values, pool.y_raw[segment] / (pool.horizon_len * scale[:, None])


def _pick(key: Key, lo: Array, hi: Array, width: int, k: int) -> tuple[Array, Array]:
    """k distinct random indices in [lo, hi) per row (fewer when the range is short).

    Args:
      key: PRNG key.
      lo, hi: i32[T] bounds per row.
      width: N, the padded sample axis.
      k: indices per row.

    Returns:
      (idx i32[T, k], valid bool[T, k]), sorted ascending within each row.
    """
    pos = jnp.arange(width)
    inside = (pos >= lo[:, None]) & (pos < hi[:, None])
    score = jnp.where(inside, jax.random.uniform(key, (lo.shape[0], width)), 2.0)
    _, idx = jax.lax.top_k(-score, k)
    valid = jnp.take_along_axis(inside, idx, 1)
    order = jnp.argsort(jnp.where(valid, idx, width + idx), axis=1)
    return jnp.take_along_axis(idx, order, 1), jnp.take_along_axis(valid, order, 1)


def sample_tasks(
    key: Key,
    pool: TaskPool,
    segments: Array,
    *,
    n_tasks: int,
    n_support: int,
    n_query: int,
    sampler: str = "recent",
    scaling: str = "support",
) -> TaskBatch:
    """Samples a meta-batch: segments, a random time cut each, support before, query after.

    Pure JAX (jit-able with ``n_tasks``, ``n_support``, ``n_query``, ``sampler``,
    ``scaling`` static).

    Args:
      key: PRNG key.
      pool: the task pool.
      segments: i32[K] candidate segments (e.g. ``SegmentSplit.train``).
      n_tasks, n_support, n_query: T and the support / query sizes.
      sampler: ``"recent"`` builds each task as ``eval_tasks`` builds a meta-test task
        (RMLDP section 6.1): the ``n_support`` most recent samples before the cut and the
        first ``n_query`` after the gap; ``"random"`` draws ``n_support`` samples anywhere
        before the cut and ``n_query`` anywhere after the gap.
      scaling: ``"support"`` scales each task on its own support period, as a meta-test
        task is; ``"segment"`` uses the segment's scaling at its fixed cut (module doc).

    Returns:
      ``TaskBatch`` with support [T, n_support, ...] and query [T, n_query, ...]; samples
      a short segment cannot provide are masked.
    """
    k_seg, k_cut, k_sup, k_qry = jax.random.split(key, 4)
    segments = jnp.asarray(segments)
    seg = segments[jax.random.randint(k_seg, (n_tasks,), 0, segments.shape[0])]
    t_c, n = pool.t_c[seg], pool.n[seg]
    last = jnp.take_along_axis(t_c, jnp.maximum(n - 1, 0)[:, None], 1)[:, 0]
    usable = (t_c <= (last - pool.gap)[:, None]).sum(1)
    cut = 1 + jnp.floor(jax.random.uniform(k_cut, (n_tasks,)) * usable).astype(jnp.int32)
    cut = jnp.minimum(cut, jnp.maximum(usable, 1))
    support_end = jnp.take_along_axis(t_c, (cut - 1)[:, None], 1)[:, 0]
    query_start = (t_c < (support_end + pool.gap)[:, None]).sum(1)
    width = t_c.shape[1]
    has_task = usable > 0
    if sampler == "recent":
        s_idx = cut[:, None] - n_support + jnp.arange(n_support)
        q_idx = query_start[:, None] + jnp.arange(n_query)
        s_ok = (s_idx >= 0) & has_task[:, None]
        q_ok = (q_idx < n[:, None]) & has_task[:, None]
    elif sampler == "random":
        s_hi = jnp.where(has_task, cut, 0)
        s_idx, s_ok = _pick(k_sup, jnp.zeros_like(cut), s_hi, width, n_support)
        q_idx, q_ok = _pick(k_qry, query_start, jnp.where(has_task, n, 0), width, n_query)
    else:
        raise ValueError(f"sampler={sampler!r}; use 'recent' or 'random'")
    if scaling == "support":
        scaled = _task_scaling(pool, seg, support_end + pool.gap)
    elif scaling == "segment":
        scaled = None
    else:
        raise ValueError(f"scaling={scaling!r}; use 'support' or 'segment'")
    support = _split(pool, seg, s_idx, s_ok, scaled)
    return TaskBatch(support, _split(pool, seg, q_idx, q_ok, scaled), seg)


def pool_rows(pool: TaskPool, segments: np.ndarray) -> TaskPool:
    """The pool of ``segments`` i[K] only: its row k is ``pool``'s row ``segments[k]``."""
    rows = jnp.asarray(segments)
    return jax.tree.map(lambda a: a[rows], pool)


def sample_strata(
    key: Key,
    pool: TaskPool,
    strata: Mapping[int, Array],
    *,
    n_strata: int,
    n_tasks: int,
    n_support: int,
    n_query: int,
    sampler: str = "recent",
    scaling: str = "support",
) -> TaskBatch:
    """The strata ``strata`` holds of a shard-stratified meta-batch of ``n_tasks`` tasks.

    Each of the ``n_strata`` strata of segments gives ``n_tasks / n_strata`` tasks
    (``sample_tasks`` with key ``fold_in(key, s)`` on stratum s's segments), so a process
    holding some strata draws exactly their part of the batch that one process holding all
    of them draws. Pure JAX (jit-able with everything but ``key`` and ``pool`` static).

    Args:
      key: PRNG key of the whole meta-batch (the same on every process).
      pool: the task pool (of this process's segments, ``pool_rows``).
      strata: stratum index s -> i32[K_s] its segments (rows of ``pool``), in stratum order.
      n_strata: S, the strata of all processes.
      n_tasks, n_support, n_query, sampler, scaling: as in ``sample_tasks`` (``n_tasks``
        for the whole batch; it must divide by ``n_strata``).

    Returns:
      ``TaskBatch`` of ``len(strata) * n_tasks / n_strata`` tasks, stratum after stratum.
    """
    if n_tasks % n_strata:
        raise ValueError(f"n_tasks={n_tasks} does not divide by {n_strata} strata")
    parts = [
        sample_tasks(
            jax.random.fold_in(key, s),
            pool,
            segments,
            n_tasks=n_tasks // n_strata,
            n_support=n_support,
            n_query=n_query,
            sampler=sampler,
            scaling=scaling,
        )
        for s, segments in strata.items()
    ]
    return jax.tree.map(lambda *a: jnp.concatenate(a), *parts)


def eval_tasks(
    pool: TaskPool,
    segments: np.ndarray,
    *,
    max_support: int | None = None,
    max_query: int | None = None,
) -> TaskBatch:
    """The fixed support / query sets of target segments (meta-validation or meta-testing).

    Support is the most recent ``max_support`` samples before each segment's cut, query
    the first ``max_query`` samples from its query start; segments without a task
    (``cut == 0``) are dropped.

    Args:
      pool: the task pool.
      segments: i[K] target segments.
      max_support, max_query: caps on the padded sizes (default: the largest needed).

    Returns:
      ``TaskBatch`` over the kept segments (``batch.segment`` says which).
    """
    cut, n, q0 = (np.asarray(a) for a in (pool.cut, pool.n, pool.query_start))
    segments = np.asarray(segments)
    segments = segments[cut[segments] > 0]
    if len(segments) == 0:
        raise ValueError("no target segment has both a support and a query set")
    cut, n_query = cut[segments], n[segments] - q0[segments]
    n_s = int(cut.max()) if max_support is None else max_support
    n_q = max(int(n_query.max()), 1) if max_query is None else max_query
    s_idx = cut[:, None] - n_s + np.arange(n_s)
    q_idx = q0[segments][:, None] + np.arange(n_q)
    seg = jnp.asarray(segments, jnp.int32)
    support = _split(pool, seg, jnp.asarray(s_idx), jnp.asarray(s_idx >= 0))
    query = _split(pool, seg, jnp.asarray(q_idx), jnp.asarray(q_idx < n[segments][:, None]))
    return TaskBatch(support, query, seg)


def unscale(pool: TaskPool, segment: Array, y_scaled: Array) -> Array:
    """Raw target demand from scaled targets.

    Args:
      pool: the task pool.
      segment: i32[T] segment of each row.
      y_scaled: f32[T, N] scaled targets or predictions.

    Returns:
      f32[T, N] in the units of the input ``y`` (summed over T_f steps).
    """
    return y_scaled * (pool.horizon_len * pool.scale[segment])[:, None]
