"""Sales CNN: wide convolution, pooling, shapes, weight decay, vmapped transfer, training,
early stopping."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dmeta.sales_cnn import train
from dmeta.sales_cnn.frames import build_frames
from dmeta.sales_cnn.model import SalesCNN, conv_relu_pool, max_pool, output_length, wide_conv
from dmeta.sales_cnn.synthetic import synthetic_panel
from dmeta.sales_cnn.train import (
    Samples,
    apply_model,
    broadcast_params,
    fit,
    fit_regions,
    fit_scaler,
    make_train_step,
    sample_weights,
    split_model,
    stack_params,
    stack_samples,
    validation_loss,
    weighted_mse,
)
from dmeta.train import loop
from dmeta.train.state import init_train_state


def test_wide_conv_matches_numpy_convolve():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(2, 1, 5, 2))  # [D, B, S, K_in]
    kernel = rng.normal(size=(2, 3, 2, 1))  # [D, m, K_in, K_out]
    bias = np.array([[0.5], [-1.0]])
    out = np.asarray(wide_conv(jnp.asarray(s), jnp.asarray(kernel), jnp.asarray(bias)))
    assert out.shape == (2, 1, 5 + 3 - 1, 1)
    for d in range(2):
        # c_j = f^T s_{j-m+1:j}: numpy.convolve flips the filter, so flip it back
        want = sum(np.convolve(s[d, 0, :, k], kernel[d, ::-1, k, 0]) for k in range(2))
        np.testing.assert_allclose(out[d, 0, :, 0], want + bias[d, 0], rtol=1e-5, atol=1e-5)


def test_wide_conv_shorter_than_filter_and_pool_ceil():
    out = wide_conv(jnp.ones((1, 1, 2, 1)), jnp.ones((1, 7, 1, 1)), jnp.zeros((1, 1)))
    assert out.shape == (1, 1, 8, 1)  # |s| + m - 1 even when |s| < m
    x = jnp.arange(10.0).reshape(1, 1, 10, 1)
    np.testing.assert_array_equal(np.asarray(max_pool(x, 4))[0, 0, :, 0], [3.0, 7.0, 9.0])
    assert output_length(84, ((7, 7), (4, 4), (3, 3))) == 2
    np.testing.assert_array_equal(np.asarray(max_pool(x[:, :, :3], 4))[0, 0, :, 0], [2.0])


def test_pooling_before_bias_and_relu_equals_the_paper_order():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(3, 2, 11, 4)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 4, 4, 5)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)  # mixed signs: ReLU clips some maps
    want = max_pool(jax.nn.relu(wide_conv(x, kernel, bias)), 4)
    np.testing.assert_allclose(conv_relu_pool(x, kernel, bias, 4), want, rtol=1e-6, atol=1e-6)


def test_model_shapes_distinct_banks_per_matrix():
    model = SalesCNN(5, 12, maps=6, hidden=8, rngs=nnx.Rngs(0))
    graphdef, params = split_model(model)
    assert params["convs"][0]["kernel"].shape == (5, 7, 4, 6)  # [D, m, 4 matrices, K]
    assert params["convs"][1]["kernel"].shape == (5, 4, 6, 6)
    flat = 6 * 5 * output_length(12, ((7, 7), (4, 4), (3, 3)))
    assert params["dense"]["kernel"].shape == (flat, 8)
    x = jnp.ones((3, 4, 5, 12))
    forward = jax.jit(apply_model, static_argnums=0)
    y = forward(graphdef, params, x)
    assert y.shape == (3,)
    y_drop = forward(graphdef, params, x, jax.random.key(1))
    assert not np.allclose(np.asarray(y), np.asarray(y_drop))  # dropout is active with a key


def test_sample_weights_and_weighted_mse():
    w = np.asarray(sample_weights(np.array([10, 19]), sp=22, horizon=2, beta=0.02))
    np.testing.assert_allclose(w, np.exp(0.02 * np.array([-10.0, -1.0])), rtol=1e-6)
    # beta is per day: on weekly periods 0.02 / day is 0.14 / week
    weekly = sample_weights(np.array([10, 19]), sp=22, horizon=2, beta=0.02, period_days=7)
    np.testing.assert_allclose(weekly, np.exp(0.14 * np.array([-10.0, -1.0])), rtol=1e-6)
    loss = weighted_mse(jnp.array([1.0, 2.0]), jnp.array([0.0, 0.0]), jnp.array([1.0, 3.0]))
    np.testing.assert_allclose(float(loss), (1.0 + 3.0 * 4.0) / 4.0, rtol=1e-6)


def _tiny_data(n_regions=2):
    panel, _ = synthetic_panel(0, n_regions=n_regions, n_items=6, n_periods=30)
    ends = np.arange(7, 27)
    frames, y = build_frames(
        panel.x, panel.brand, panel.category, ends, length=8, horizon=2, target=0
    )
    scaler = fit_scaler(frames, y)
    frames, y = scaler.x(frames), scaler.y(y)
    w = sample_weights(ends, sp=29, horizon=2, beta=0.05)
    per_region = []
    for r in range(n_regions):
        n = 6 * len(ends) - 5 * r  # unequal sizes exercise the padding
        per_region.append(
            Samples(
                x=frames[r].reshape(-1, 4, 5, 8)[:n],
                y=y[r].reshape(-1)[:n],
                w=jnp.broadcast_to(w, (6, len(ends))).reshape(-1)[:n],
                n=jnp.asarray(n),
            )
        )
    return per_region


def test_vmapped_transfer_equals_loop_over_regions():
    regions = _tiny_data()
    graphdef, params = split_model(SalesCNN(5, 8, maps=3, hidden=8, rngs=nnx.Rngs(0)))
    stacked = stack_samples(regions)
    opts = dict(learning_rate=1e-2, batch_size=16, n_steps=5, eval_every=1)
    key = jax.random.key(3)
    res = fit_regions(graphdef, broadcast_params(params, 2), stacked, key, **opts)
    got = res.state.params
    assert [row["step"] for row in res.history] == [1, 2, 3, 4, 5]
    keys = jax.random.split(key, 2)
    # the loop runs each region's padded slice: one compile, and padding must be ignored
    runs = [fit(graphdef, params, jax.tree.map(lambda a: a[r], stacked), keys[r], **opts)
            for r in range(2)]  # fmt: skip
    chex.assert_trees_all_close(got, stack_params([r.state.params for r in runs]), rtol=1e-4,
                                atol=1e-5)  # fmt: skip
    # the train loss of a row is the mean over regions
    want = np.mean([[row["loss"] for row in r.history] for r in runs], axis=0)
    np.testing.assert_allclose([row["loss"] for row in res.history], want, rtol=1e-4)
    # the regions really diverge from the shared start
    assert not np.allclose(got["dense"]["kernel"][0], got["dense"]["kernel"][1])


def test_loss_decreases_chunks_are_exact_and_learning_rates_share_a_program():
    data = _tiny_data(1)[0]
    graphdef, params = split_model(SalesCNN(5, 8, maps=4, hidden=16, rngs=nnx.Rngs(1)))
    opts = dict(learning_rate=3e-3, batch_size=32, n_steps=100)
    res = fit(graphdef, params, data, jax.random.key(0), eval_every=20, **opts)
    losses = [row["loss"] for row in res.history]  # means over 20 steps
    assert len(losses) == 5 and losses[-1] < 0.7 * losses[0]
    # chunks of 1 step (gcd(100, 7)) or of all 100 compute exactly the same run
    for every in (7, 100):
        other = fit(graphdef, params, data, jax.random.key(0), eval_every=every, **opts)
        chex.assert_trees_all_equal(other.state.params, res.state.params)
    # the learning rate lives in the optimizer state: another rate reuses the program
    program, built = train._program(graphdef, 32, 20, False, False), train._program.cache_info()
    fit(graphdef, params, data, jax.random.key(0), **dict(opts, learning_rate=1e-2), eval_every=20)
    assert train._program.cache_info().misses == built.misses and program._cache_size() == 1

    optimizer = optax.adamax(1e-3)
    step = jax.jit(chex.assert_max_traces(make_train_step(graphdef, optimizer, batch_size=8), n=1))
    state = init_train_state(params, optimizer, jax.random.key(0))
    for _ in range(3):
        state, loss = step(state, data)
    assert int(state.step) == 3 and np.isfinite(float(loss))


def _negated(samples: Samples) -> Samples:
    """Validation samples whose targets are the negated training ones: the better a model
    fits the training data, the worse its validation loss."""
    return dataclasses.replace(samples, y=-samples.y)


def test_early_stopping_returns_the_best_state():
    data = _tiny_data(1)[0]
    graphdef, params = split_model(SalesCNN(5, 8, maps=4, hidden=16, rngs=nnx.Rngs(1)))
    opts = dict(learning_rate=1e-2, batch_size=32, eval_every=5)
    key = jax.random.key(0)
    res = fit(graphdef, params, data, key, n_steps=200, val=_negated(data), patience=2, **opts)
    vals = [row["val_loss"] for row in res.history]
    assert int(res.state.step) < 200 and res.best_step < int(res.state.step)  # stopped early
    assert res.best_step == res.history[int(np.argmin(vals))]["step"]
    replay = fit(graphdef, params, data, key, n_steps=res.best_step, **opts)
    chex.assert_trees_all_equal(res.best_state.params, replay.state.params)


def test_regions_early_stop_on_the_mean_validation_loss():
    stacked = stack_samples(_tiny_data())
    graphdef, params = split_model(SalesCNN(5, 8, maps=3, hidden=8, rngs=nnx.Rngs(0)))
    start, key, val = broadcast_params(params, 2), jax.random.key(3), _negated(stacked)
    opts = dict(learning_rate=1e-2, batch_size=16, eval_every=5, per_region=False)
    res = fit_regions(graphdef, start, stacked, key, n_steps=200, val=val, patience=2, **opts)
    assert int(res.state.step) < 200 and 0 < res.best_step < int(res.state.step)
    best = res.history[[row["step"] for row in res.history].index(res.best_step)]
    per_region = [
        float(
            validation_loss(
                graphdef,
                jax.tree.map(lambda a: a[r], res.best_state.params),
                jax.tree.map(lambda a: a[r], val),
            )
        )  # fmt: skip
        for r in range(2)
    ]
    np.testing.assert_allclose(best["val_loss"], np.mean(per_region), rtol=1e-5)
    replay = fit_regions(graphdef, start, stacked, key, n_steps=res.best_step, **opts)
    chex.assert_trees_all_equal(res.best_state.params, replay.state.params)


def test_regions_early_stop_each_on_its_own_like_separate_fits():
    regions = _tiny_data()
    stacked = stack_samples(regions)
    graphdef, params = split_model(SalesCNN(5, 8, maps=3, hidden=8, rngs=nnx.Rngs(0)))
    # region 0's validation set punishes fitting (it stops early), region 1's rewards it
    val = stack_samples([_negated(regions[0]), regions[1]])
    start, key = broadcast_params(params, 2), jax.random.key(3)
    opts = dict(learning_rate=1e-2, batch_size=16, eval_every=5, patience=2)
    res = fit_regions(graphdef, start, stacked, key, n_steps=150, val=val, **opts)
    keys = jax.random.split(key, 2)
    row_of = lambda tree, r: jax.tree.map(lambda a: a[r], tree)  # noqa: E731
    alone = [
        fit(graphdef, params, row_of(stacked, r), keys[r], n_steps=150, val=row_of(val, r),
            **opts)
        for r in range(2)
    ]  # fmt: skip
    assert alone[0].best_step < alone[1].best_step  # the regions' best steps differ
    chex.assert_trees_all_close(
        res.best_state.params, stack_params([a.best_state.params for a in alone]),
        rtol=1e-4, atol=1e-5,
    )  # fmt: skip
    assert res.best_step == alone[1].best_step
    assert int(res.state.step) == max(int(a.state.step) for a in alone)
    # the logged curve is the regions' mean, each region's own beside it
    row = res.history[0]
    np.testing.assert_allclose(row["val_loss"], (row["val_loss/0"] + row["val_loss/1"]) / 2)
    np.testing.assert_allclose(
        [row["val_loss/0"], row["val_loss/1"]],
        [a.history[0]["val_loss"] for a in alone],
        rtol=1e-4,
    )


def test_bf16_compute_keeps_float32_params_and_trains_like_float32():
    data = _tiny_data(1)[0]
    runs = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model = SalesCNN(5, 8, maps=4, hidden=16, dtype=dtype, rngs=nnx.Rngs(1))
        graphdef, params = split_model(model)
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
        out = apply_model(graphdef, params, data.x[:16])
        assert out.dtype == jnp.float32
        res = fit(graphdef, params, data, jax.random.key(0), learning_rate=3e-3, batch_size=32,
                  n_steps=100, eval_every=20)  # fmt: skip
        losses = [row["loss"] for row in res.history]  # means over 20 steps
        runs[dtype] = (out, losses, apply_model(graphdef, res.state.params, data.x))
    out32, _, pred32 = runs[jnp.float32]
    out16, loss16, pred16 = runs[jnp.bfloat16]
    # same initial function to bf16 precision (8 mantissa bits)
    np.testing.assert_allclose(out16, out32, rtol=0.05, atol=0.02 * float(jnp.abs(out32).max()))
    assert loss16[-1] < 0.7 * loss16[0]  # it learns
    # and ends where float32 ends: final training MSE within 10%
    mse = {k: float(jnp.mean((p - data.y) ** 2)) for k, p in (("f32", pred32), ("bf16", pred16))}
    assert abs(mse["bf16"] - mse["f32"]) < 0.1 * mse["f32"], mse


def test_fits_on_other_sample_weights_never_share_a_checkpoint(tmp_path):
    """Two weight-decay betas at one learning rate start from the same state: the sample
    weights join the checkpoint fingerprint, so neither restores the other's checkpoint."""
    data = _tiny_data(1)[0]
    graphdef, params = split_model(SalesCNN(5, 8, maps=2, hidden=4, rngs=nnx.Rngs(1)))
    opts = dict(learning_rate=1e-2, batch_size=16, n_steps=2, eval_every=2)
    names = []
    for w in (data.w, data.w, 2.0 * data.w):
        with loop.checkpoints(tmp_path / "ckpt") as block:
            fit(graphdef, params, dataclasses.replace(data, w=w), jax.random.key(0), **opts)
        names += block.names
    assert names[0] == names[1] != names[2]
