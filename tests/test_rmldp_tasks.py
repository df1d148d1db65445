"""RMLDP meta-training tasks: the "recent" sampler builds tasks the way meta-test tasks are built."""

import dataclasses

import jax
import numpy as np
import pytest

from dmeta import distributed
from dmeta.data.frames import validate_long
from dmeta.data.synthetic import make_demand
from dmeta.data.tasks import (
    build_task_pool,
    eval_tasks,
    pool_rows,
    sample_strata,
    sample_tasks,
    split_segments,
)
from dmeta.data.windows import make_windows, n_records, to_panel

N_SUPPORT, N_QUERY = 8, 4


@pytest.fixture(scope="module")
def timed_pool():
    """A pool whose targets are the sample times, so a batch shows which samples it drew."""
    data = make_demand(n_segments=12, n_clusters=2, n_steps=300, seed=1)
    panel = to_panel(validate_long(data.frame))
    pool = build_task_pool(make_windows(panel, seq_len=6, horizon_gap=2, horizon_len=3, season=365))
    return dataclasses.replace(pool, y=pool.t_c.astype(np.float32)), split_segments(
        n_records(panel)
    )


def drawn(split, row):
    return np.asarray(split.y[row])[np.asarray(split.mask[row]) > 0].astype(int)


def test_recent_tasks_are_the_window_before_the_cut_and_the_next_after_the_gap(timed_pool):
    pool, split = timed_pool
    sample = jax.jit(
        sample_tasks, static_argnames=("n_tasks", "n_support", "n_query", "sampler", "scaling")
    )
    batch = sample(jax.random.key(0), pool, split.train, n_tasks=16, n_support=N_SUPPORT,
                   n_query=N_QUERY, sampler="recent", scaling="segment")  # fmt: skip
    for row, seg in enumerate(np.asarray(batch.segment)):
        t_c = np.asarray(pool.t_c[seg])[: int(pool.n[seg])]
        sup, qry = drawn(batch.support, row), drawn(batch.query, row)
        cut = int(np.searchsorted(t_c, sup[-1])) + 1
        q0 = int(np.searchsorted(t_c, sup[-1] + pool.gap))  # first sample after the gap
        np.testing.assert_array_equal(sup, t_c[max(cut - N_SUPPORT, 0) : cut])
        np.testing.assert_array_equal(qry, t_c[q0 : q0 + N_QUERY])
        # eval_tasks builds the same task when the segment's meta-test cut is this one
        moved = dataclasses.replace(
            pool, cut=pool.cut.at[seg].set(cut), query_start=pool.query_start.at[seg].set(q0)
        )
        ref = eval_tasks(moved, np.array([seg]), max_support=N_SUPPORT, max_query=N_QUERY)
        np.testing.assert_array_equal(sup, drawn(ref.support, 0))
        np.testing.assert_array_equal(qry, drawn(ref.query, 0))


def test_random_sampler_is_kept_and_draws_other_samples(timed_pool):
    pool, split = timed_pool
    kw = dict(n_tasks=16, n_support=N_SUPPORT, n_query=N_QUERY, scaling="segment")
    key = jax.random.key(1)
    recent = sample_tasks(key, pool, split.train, **kw, sampler="recent")
    rand = sample_tasks(key, pool, split.train, **kw, sampler="random")
    np.testing.assert_array_equal(recent.segment, rand.segment)  # same segments and cuts
    gaps = [np.diff(drawn(rand.support, r)).max(initial=1) for r in range(16)]
    assert max(gaps) > 1  # random support samples are not one contiguous window
    for r in range(16):
        assert drawn(rand.support, r).max() + pool.gap <= drawn(rand.query, r).min()
    with pytest.raises(ValueError, match="sampler"):
        sample_tasks(key, pool, split.train, **kw, sampler="latest")


def test_each_task_is_scaled_on_its_own_support_period(timed_pool):
    """scaling="support": a meta-training task's demand and targets are divided by the mean
    demand of its segment's observed steps up to the end of its last support target, as a
    meta-test task's are, so no statistic comes from its query period."""
    timed, split = timed_pool
    pool = dataclasses.replace(timed, y=timed.y_raw / (timed.horizon_len * timed.scale[:, None]))
    kw = dict(n_tasks=16, n_support=N_SUPPORT, n_query=N_QUERY)
    key = jax.random.key(5)
    times = sample_tasks(key, timed, split.train, **kw, scaling="segment")  # which samples
    batch = sample_tasks(key, pool, split.train, **kw)  # the default: scaling="support"
    np.testing.assert_array_equal(times.segment, batch.segment)
    raw, observed = np.asarray(pool.raw), np.asarray(pool.observed)
    moved = 0
    for row, seg in enumerate(np.asarray(batch.segment)):
        fit_end = drawn(times.support, row)[-1] + pool.gap
        steps = observed[seg] & (np.arange(raw.shape[1]) <= fit_end)
        scale = raw[seg, steps, 0].mean()
        t_c, y_raw = np.asarray(pool.t_c[seg]), np.asarray(pool.y_raw[seg])
        for part in (times.support, times.query):
            got = batch.support if part is times.support else batch.query
            want = y_raw[np.searchsorted(t_c, drawn(part, row))] / (pool.horizon_len * scale)
            np.testing.assert_allclose(got.y[row][np.asarray(got.mask[row]) > 0], want, rtol=1e-5)
        last = batch.support.x_local[row, N_SUPPORT - 1, :, 0]  # the most recent sample
        t_last = drawn(times.support, row)[-1]
        np.testing.assert_allclose(last, raw[seg, t_last - 5 : t_last + 1, 0] / scale, rtol=1e-5)
        moved += not np.isclose(scale, float(pool.scale[seg]), rtol=1e-3)
    assert moved > 0  # tasks cut away from the segment's own cut get another scale


def test_stratified_sampler_draws_each_stratum_s_share_as_its_processes_would(timed_pool):
    """Strata of the meta-training segments: each gives n_tasks / S tasks of its own segments;
    one process holding all S strata draws the union (in stratum order) of what S processes,
    each with the pool of its own stratum only, draw."""
    pool, split = timed_pool
    n_strata, n_tasks = 2, 8
    kw = dict(n_strata=n_strata, n_tasks=n_tasks, n_support=N_SUPPORT, n_query=N_QUERY)
    strata = distributed.Strata.split(len(split.train), n_strata)
    blocks = [split.train[b] for b in strata.local_slices()]
    key = jax.random.key(3)
    whole = sample_strata(key, pool, dict(enumerate(blocks)), **kw)
    for s, block in enumerate(blocks):
        share = np.asarray(whole.segment)[s * n_tasks // n_strata : (s + 1) * n_tasks // n_strata]
        assert set(share) <= set(block)
    parts = []
    for s, block in enumerate(blocks):  # process s: its stratum's pool rows only
        own = sample_strata(key, pool_rows(pool, block), {s: np.arange(len(block))}, **kw)
        parts.append(dataclasses.replace(own, segment=block[np.asarray(own.segment)]))
    union = jax.tree.map(lambda *a: np.concatenate(a), *parts)
    jax.tree.map(np.testing.assert_array_equal, union, whole)
    assert len(set(np.asarray(whole.segment))) > 2
    with pytest.raises(ValueError, match="divide"):
        sample_strata(key, pool, dict(enumerate(blocks)), **{**kw, "n_tasks": 7})
