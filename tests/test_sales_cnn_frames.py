"""Data Frames (eq. 2-6), end-point splits and the synthetic panel."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmeta.sales_cnn.frames import (
    GroupTotals,
    SalesPanel,
    build_frames,
    indicator_matrices,
    split_ends,
)
from dmeta.sales_cnn.synthetic import synthetic_panel


def _slow_frames(x, brand, category, ends, length, horizon, target):
    """Loop reference: sums over items by brand / category / region, frame by frame."""
    r_n, i_n, _, d_n = x.shape
    frames = np.zeros((r_n, i_n, len(ends), 4, d_n, length))
    y = np.zeros((r_n, i_n, len(ends)))
    for r in range(r_n):
        for i in range(i_n):
            for e, end in enumerate(ends):
                for t in range(length):
                    period = end - length + 1 + t
                    for d in range(d_n):
                        frames[r, i, e, 0, d, t] = x[r, i, period, d]
                        frames[r, i, e, 1, d, t] = sum(
                            x[r, j, period, d] for j in range(i_n) if brand[j] == brand[i]
                        )
                        frames[r, i, e, 2, d, t] = sum(
                            x[r, j, period, d] for j in range(i_n) if category[j] == category[i]
                        )
                        frames[r, i, e, 3, d, t] = sum(x[r, j, period, d] for j in range(i_n))
                y[r, i, e] = sum(x[r, i, end + 1 + h, target] for h in range(horizon))
    return frames, y


def test_hand_computed_aggregates():
    # one region, three items: items 0 and 1 share brand 0, items 1 and 2 share category 1
    x = np.array([[[[1.0], [2.0]], [[10.0], [20.0]], [[100.0], [200.0]]]])  # [1, 3, 2, 1]
    m = np.asarray(indicator_matrices(x, np.array([0, 0, 1]), np.array([0, 1, 1])))
    np.testing.assert_allclose(m[0, 0, :, :, 0], [[1, 2], [11, 22], [1, 2], [111, 222]])
    np.testing.assert_allclose(m[0, 1, :, :, 0], [[10, 20], [11, 22], [110, 220], [111, 222]])
    np.testing.assert_allclose(m[0, 2, :, :, 0], [[100, 200], [100, 200], [110, 220], [111, 222]])


def test_frames_equal_loop_reference():
    rng = np.random.default_rng(0)
    x = rng.poisson(3.0, (2, 5, 12, 3)).astype(np.float32)
    brand, category = np.array([0, 1, 0, 2, 1]), np.array([1, 0, 0, 1, 1])
    ends = np.array([3, 5, 8])
    frames, y = build_frames(x, brand, category, ends, length=4, horizon=3, target=1)
    want_frames, want_y = _slow_frames(x, brand, category, ends, 4, 3, 1)
    assert frames.shape == (2, 5, 3, 4, 3, 4)
    np.testing.assert_allclose(np.asarray(frames), want_frames, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(y), want_y, rtol=1e-6)


@functools.partial(jax.jit, static_argnames=("length", "horizon", "target"))
def _item_sum_frames(x, brand, category, ends, *, length, horizon, target):
    """``build_frames`` as it was before ``GroupTotals`` (group rows sum the items)."""
    x = jnp.asarray(x)
    by_item = jnp.moveaxis(x, 1, 0)

    def group_sum(group):
        sums = jax.ops.segment_sum(by_item, group, num_segments=x.shape[1])
        return jnp.moveaxis(sums[group], 0, 1)

    region = jnp.broadcast_to(x.sum(axis=1, keepdims=True), x.shape)
    matrices = jnp.stack([x, group_sum(brand), group_sum(category), region], axis=2)
    window = ends[:, None] - length + 1 + jnp.arange(length)
    frames = jnp.transpose(matrices[:, :, :, window, :], (0, 1, 3, 2, 5, 4))
    y = x[:, :, ends[:, None] + 1 + jnp.arange(horizon), target].sum(-1)
    return frames, y


def _full_panel(seed=0):
    """A panel of 7 items with its group totals (f32 sums over all 7 items)."""
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 3.0, (2, 7, 12, 3)).astype(np.float32)
    brand, category = np.array([0, 1, 2, 1, 3, 0, 2]), np.array([1, 0, 2, 2, 1, 0, 1])

    def group(codes):
        return np.stack([x[:, codes == g].sum(1) for g in range(codes.max() + 1)], axis=1)

    totals = GroupTotals(brand=group(brand), category=group(category), region=x.sum(1))
    panel = SalesPanel(
        x=x,
        brand=brand.astype(np.int32),
        category=category.astype(np.int32),
        target=1,
        regions=("r0", "r1"),
        items=tuple(f"i{k}" for k in range(7)),
        indicators=("a", "b", "c"),
        dates=np.datetime64("2020-01-06") + 7 * np.arange(12).astype("timedelta64[D]"),
        totals=totals,
    )
    return panel


OPTS = dict(length=4, horizon=3, target=1)
ENDS = np.array([3, 5, 8])


def test_frames_without_totals_are_bit_identical_to_the_item_sums():
    rng = np.random.default_rng(3)
    x = rng.gamma(2.0, 3.0, (3, 9, 14, 4)).astype(np.float32)
    brand, category = rng.integers(0, 4, 9), rng.integers(0, 3, 9)
    frames, y = build_frames(x, brand, category, ENDS + 1, **OPTS)
    want_frames, want_y = _item_sum_frames(x, brand, category, ENDS + 1, **OPTS)
    np.testing.assert_array_equal(np.asarray(frames), np.asarray(want_frames))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(want_y))


def test_frames_with_totals_count_items_outside_the_panel():
    full = _full_panel()
    keep = np.array([0, 3, 4])  # brands 0, 1, 3 and categories 1, 2 also hold left-out items
    frames, y = build_frames(
        full.x[:, keep], full.brand[keep], full.category[keep], ENDS, full.totals, **OPTS
    )
    want_frames, want_y = _slow_frames(full.x, full.brand, full.category, ENDS, 4, 3, 1)
    np.testing.assert_allclose(np.asarray(frames), want_frames[:, keep], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(y), want_y[:, keep])
    sums, _ = build_frames(full.x[:, keep], full.brand[keep], full.category[keep], ENDS, **OPTS)
    assert (np.asarray(frames)[:, :, :, 1:] > np.asarray(sums)[:, :, :, 1:]).all()


def test_selections_keep_totals_consistent_with_the_recoded_groups():
    full = _full_panel()
    want_frames, want_y = _slow_frames(full.x, full.brand, full.category, ENDS, 4, 3, 1)
    keep = np.array([1, 2, 6])  # brands 1, 2, 2 -> 0, 1, 1; categories 0, 2, 1 -> 0, 2, 1
    panel = full.select_items(keep).select_regions(np.array([1]))
    assert list(panel.brand) == [0, 1, 1] and list(panel.category) == [0, 2, 1]
    assert panel.totals.brand.shape == (1, 2, 12, 3)
    frames, _ = build_frames(panel.x, panel.brand, panel.category, ENDS, panel.totals, **OPTS)
    np.testing.assert_allclose(np.asarray(frames), want_frames[1:, keep], rtol=1e-6)
    head = panel.first_periods(10)
    frames, y = build_frames(head.x, head.brand, head.category, ENDS[:2], head.totals, **OPTS)
    np.testing.assert_allclose(np.asarray(frames), want_frames[1:, keep, :2], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(y), want_y[1:, keep, :2])
    with pytest.raises(ValueError, match=r"GroupTotals.brand: shape \(2, "):
        dataclasses.replace(panel, totals=full.totals.take(regions=[0, 1]).take(brands=[0, 1]))


def test_split_ends_no_overlap():
    split = split_ends(30, length=6, horizon=3, n_test=2)
    assert list(split.test) == [25, 26]
    assert split.sp == 26
    assert split.train[0] == 5
    assert split.train.max() + 3 < split.sp  # training targets end before the test interval
    with pytest.raises(ValueError, match="too few"):
        split_ends(8, length=6, horizon=3)


def test_synthetic_ground_truth():
    panel, expected = synthetic_panel(0, n_regions=2, n_items=8, n_periods=60)
    assert panel.x.shape == (2, 8, 60, 5)
    assert panel.period_days == 7.0  # weekly periods (eq. 18's beta is per day)
    assert expected.shape == (2, 8, 60)
    sales = panel.sales
    # Poisson noise around the planted mean: relative error of the sums is small
    assert abs(sales.sum() / expected.sum() - 1) < 0.05
    assert np.corrcoef(sales.ravel(), expected.ravel())[0, 1] > 0.85
    # sales follow past page views, not future ones
    pv = panel.x[..., 1]
    lag = np.corrcoef(sales[..., 1:].ravel(), pv[..., :-1].ravel())[0, 1]
    lead = np.corrcoef(sales[..., :-1].ravel(), pv[..., 1:].ravel())[0, 1]
    assert lag > lead + 0.05
    assert set(np.unique(panel.x[..., 4])) <= {0.0, 1.0}
    assert panel.x[..., 4].mean() > 0.02
