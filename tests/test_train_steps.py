"""``fit`` with several updates per call (scanned chunks, epochs of minibatches), the
monitored metric and ``min_steps``, and the ``checkpoints`` block that resumes inside a
cell."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _resume_worker import W_TRUE, make_problem

from dmeta.train import loop
from dmeta.train.loop import epoch_step, fit, scan_steps
from dmeta.train.state import TrainState, init_train_state


def _same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


def test_scan_steps_equals_single_steps():
    step_fn, state, eval_fn = make_problem()
    single = fit(step_fn, state, n_steps=24, eval_fn=eval_fn, eval_every=8, progress=False)
    chunk = jax.jit(scan_steps(step_fn, 4))
    scanned = fit(chunk, state, n_steps=24, eval_fn=eval_fn, eval_every=8, steps_per_call=4,
                  progress=False)  # fmt: skip
    _same(scanned.state, single.state)
    assert [r["step"] for r in scanned.history] == [8, 16, 24]
    np.testing.assert_allclose([r["loss"] for r in scanned.history],
                               [r["loss"] for r in single.history], rtol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="multiples of steps_per_call=4"):
        fit(chunk, state, n_steps=26, steps_per_call=4, progress=False)


def _regression(n=37, noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x @ np.asarray(W_TRUE) + noise * rng.normal(size=n)).astype(np.float32)
    return {"x": x, "y": y, "weight": np.ones(n, np.float32), "row": np.arange(n)}


OPT = optax.adam(0.05)


@jax.jit
def _batch_step(state, batch, scale):
    def loss_fn(p):
        err = jnp.square(batch["x"] @ p["w"] - batch["y"])
        return scale * jnp.sum(batch["weight"] * err) / jnp.sum(batch["weight"])

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = OPT.update(grads, state.opt_state, state.params)
    new = TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1,
                     state.key)  # fmt: skip
    return new, {"loss": loss}


def _epochs(data, **kwargs):
    return epoch_step(_batch_step, data, batch_size=8, consts=lambda e: jnp.float32(1.0),
                      pad_weight="weight", **kwargs)  # fmt: skip


def _state(seed=0):
    return init_train_state({"w": jnp.zeros(3)}, OPT, jax.random.key(seed))


def test_epoch_step_visits_every_row_once_and_learns():
    data = _regression()
    seen = []

    def spy(state, batch, c):
        seen.append((batch["row"], batch["weight"]))
        return _batch_step(state, batch, c)

    step = epoch_step(spy, data, batch_size=8, consts=lambda e: 1.0, pad_weight="weight")
    assert step.steps == 5  # ceil(37 / 8)
    state, metrics = step(_state())
    rows = np.concatenate([r for r, _ in seen])
    weights = np.concatenate([w for _, w in seen])
    assert sorted(rows[weights > 0]) == list(range(37)) and weights[37:].sum() == 0
    assert int(state.step) == 5 and set(metrics) == {"loss"}

    def val(state):
        return {"val_mse": jnp.mean(jnp.square(data["x"] @ state.params["w"] - data["y"]))}

    step = _epochs(data)
    res = fit(step, _state(), n_steps=30 * step.steps, steps_per_call=step.steps,
              eval_every=step.steps, eval_fn=val, monitor="val_mse", progress=False)  # fmt: skip
    assert len(res.history) == 30
    assert res.history[-1]["val_mse"] < 0.05 * res.history[0]["val_mse"]  # fails if no learning


def test_min_steps_holds_early_stopping_back():
    def eval_fn(state):  # best at step 10, never better after
        return {"val": jnp.abs(state.step - 10.0)}

    step_fn, state, _ = make_problem()
    common = dict(n_steps=100, eval_fn=eval_fn, eval_every=5, patience=2, monitor="val",
                  progress=False)  # fmt: skip
    early = fit(step_fn, state, **common)
    held = fit(step_fn, state, **common, min_steps=40)
    assert int(early.state.step) == 20 and int(held.state.step) == 40
    assert early.best_step == held.best_step == 10


class _Crash(Exception):
    pass


def test_checkpoints_block_resumes_inside_the_cell(tmp_path):
    """Two fits in a block; a crash in the second; the rerun restores the first without a
    step and resumes the second: results and curves equal an uninterrupted block."""
    data = _regression()

    def cell(crash_at=None, calls=None):
        out = []
        for seed in (0, 1):
            step = _epochs(data)

            def counted(state, step=step):
                if calls is not None:
                    calls.append(int(state.step))
                if crash_at is not None and seed == 1 and int(state.step) == crash_at:
                    raise _Crash
                return step(state)

            counted.metric_shapes = step.metric_shapes
            res = fit(counted, _state(seed), n_steps=10 * step.steps, steps_per_call=step.steps,
                      eval_every=step.steps, ckpt_every=2 * step.steps, desc=f"seed {seed}",
                      progress=False)  # fmt: skip
            out.append(res)
        return out

    with loop.checkpoints(tmp_path / "ref_ckpt", curves=tmp_path / "ref_curves"):
        ref = cell()
    with pytest.raises(_Crash), loop.checkpoints(tmp_path / "ckpt", curves=tmp_path / "curves"):
        cell(crash_at=35)
    calls = []
    with loop.checkpoints(tmp_path / "ckpt", curves=tmp_path / "curves"):
        got = cell(calls=calls)
    assert calls == [30, 35, 40, 45]  # the first fit restored, the second from step 30
    for a, b in zip(got, ref):
        _same(a.state, b.state)
        assert a.history == b.history
    names = sorted(p.name for p in (tmp_path / "curves").glob("*.csv"))
    assert [n[:11] for n in names] == ["000-seed_0-", "001-seed_1-"]  # + the fingerprint
    for name in names:
        assert (tmp_path / "curves" / name).read_text() == (
            tmp_path / "ref_curves" / name
        ).read_text()
    swapped = []  # another fit in the first fit's place: started afresh, not restored
    with loop.checkpoints(tmp_path / "ckpt", curves=tmp_path / "curves"):
        step = _epochs(data)

        def spy(state):
            swapped.append(int(state.step))
            return step(state)

        spy.metric_shapes = step.metric_shapes
        fit(spy, _state(seed=5), n_steps=step.steps, steps_per_call=step.steps,
            eval_every=step.steps, desc="seed 0", progress=False)  # fmt: skip
    assert swapped[-1] == 0


def _spied():
    """An epoch step on the regression data, the same step recording the step count it
    starts from in ``calls``, and ``calls``."""
    step, calls = _epochs(_regression()), []

    def spy(state):
        calls.append(int(state.step))
        return step(state)

    spy.metric_shapes = step.metric_shapes
    return step, spy, calls


def test_checkpoints_block_finds_its_fits_after_an_extra_fit_shifts_them(tmp_path):
    """A resumed cell can run a fit its first try did not (a seed's memoized pretraining,
    say) before the others; their checkpoints and curves, saved under other numbers, are
    found by name and fingerprint and renamed, so the finished fits run no step again."""
    step, spy, calls = _spied()
    opts = dict(n_steps=4 * step.steps, steps_per_call=step.steps, eval_every=step.steps,
                ckpt_every=4 * step.steps, progress=False)  # fmt: skip
    block = dict(ckpt_root=tmp_path / "ckpt", curves=tmp_path / "curves")
    with loop.checkpoints(**block):
        first = [fit(spy, _state(seed), desc=f"seed {seed}", **opts) for seed in (0, 1)]
    curves = {p.name[4:]: p.read_text() for p in (tmp_path / "curves").glob("*")}
    calls.clear()
    with loop.checkpoints(**block) as fits:
        fit(step, _state(7), desc="extra", **opts)
        again = [fit(spy, _state(seed), desc=f"seed {seed}", **opts) for seed in (0, 1)]
    assert calls == []  # both restored from their moved checkpoints
    for a, b in zip(again, first):
        _same(a.state, b.state)
        assert a.history == b.history
    assert [n[:10] for n in fits.names] == ["000-extra-", "001-seed_0", "002-seed_1"]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == sorted(fits.names)
    for name in fits.names[1:]:
        for ext in (".csv", ".jsonl"):
            assert (tmp_path / "curves" / f"{name}{ext}").read_text() == curves[name[4:] + ext]


def test_fits_that_differ_only_in_settings_never_restore_each_other(tmp_path):
    """Same initial state and sizes, another static setting (a loss weight, say): with
    ``settings`` a fit in a finished fit's place runs its own steps instead of restoring the
    other's checkpoint. Data passed as a pytree of arrays counts by its values, and the
    stopping rule counts too; the same fit gets the same name in every block."""
    step, spy, calls = _spied()
    opts = dict(n_steps=2 * step.steps, steps_per_call=step.steps, eval_every=step.steps,
                ckpt_every=2 * step.steps, desc="fit", progress=False)  # fmt: skip
    block = dict(ckpt_root=tmp_path / "ckpt", curves=tmp_path / "curves")
    with loop.checkpoints(**block) as fits:
        fit(spy, _state(0), settings={"beta": 0.1}, **opts)
    with loop.checkpoints(**block) as again:
        fit(spy, _state(0), settings={"beta": 0.001}, **opts)
    assert calls == [0, step.steps, 0, step.steps]  # the second fit ran, not restored
    assert fits.names != again.names
    names = {}
    for key, kwargs in [
        ("plain", {}),
        ("plain again", {}),
        ("zeros", dict(settings={"data": {"x": np.zeros(3)}})),
        ("ones", dict(settings={"data": {"x": np.ones(3)}})),
        ("min_steps", dict(min_steps=step.steps)),
    ]:
        with loop.checkpoints(tmp_path / key) as block:
            fit(step, _state(0), **opts, **kwargs)
        names[key] = block.names[0]
    assert names["plain"] == names["plain again"]
    assert len({names[k] for k in ("plain", "zeros", "ones", "min_steps")}) == 4


def test_short_fits_in_a_block_save_nothing_long_ones_do(tmp_path):
    """Without its own ckpt_every a fit in a block saves by the clock: a fit shorter than
    min_seconds writes no checkpoint (redoing it is cheaper), its curve is still kept."""
    step_fn, state, eval_fn = make_problem()
    common = dict(n_steps=8, eval_fn=eval_fn, eval_every=4, desc="short", progress=False)
    with loop.checkpoints(tmp_path / "ckpt", curves=tmp_path / "curves"):
        fit(step_fn, state, **common)
    assert not (tmp_path / "ckpt").exists() and len(list((tmp_path / "curves").glob("*.csv"))) == 1
    with loop.checkpoints(tmp_path / "ckpt", min_seconds=0.0, every_seconds=0.0):
        fit(step_fn, state, **common)
    (folder,) = (tmp_path / "ckpt").iterdir()
    assert sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())[-1] == 8
