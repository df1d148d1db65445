"""CDLtvS two-stage training at smoke size: single trace per step (over epochs, the lambda
drop and learning rates), finite predictions, early stopping after the drop, learning."""

import functools

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from dmeta.ltv.data import apply_sparsity, make_synthetic, split_customers
from dmeta.ltv.train import _model, cdltvs_fns, fit, fit_stage1, fit_stage2, model_batch
from dmeta.nn.functional import split_params

ARCH = dict(hidden=8, align=4, k=4, tcn_levels=2)
FIT = dict(batch_size=32, max_epochs=3, patience=2, drop_epoch=1)


@pytest.fixture(scope="module")
def splits():
    d = apply_sparsity(make_synthetic(120, n_periods=6, horizon=2, seed=0), 0.5, seed=0)
    return split_customers(d, seed=0)


def test_two_stage_fit_traces_each_step_once_and_predicts(splits):
    train, val, test = splits
    chex.clear_trace_counter()
    # chex counts traces per wrapping call site: stage 1 wraps two steps (one per domain)
    # there, so two traces in all means each was traced exactly once over all its epochs.
    once_per_domain = functools.partial(chex.assert_max_traces, n=2)
    stage1 = fit_stage1(train, val, seed=0, step_wrapper=once_per_domain, **ARCH, **FIT)
    assert set(stage1.histories) == {"stage1_source", "stage1_target"}
    assert len(stage1.histories["stage1_target"]) >= 2  # lambda drop did not retrace
    pred, experts = stage1.predict_ltvs(test)
    assert pred.shape == (test.n,) and np.isfinite(pred).all() and (pred >= 0).all()
    assert set(experts) == {"t"} and experts["t"].min() >= 0 and experts["t"].max() < 4
    once = functools.partial(chex.assert_max_traces, n=1)
    fit = fit_stage2(stage1, train, val, seed=0, step_wrapper=once, **FIT)
    pred2, experts2 = fit.predict(test)
    assert pred2.shape == (test.n,) and np.isfinite(pred2).all()
    assert set(experts2) == {"s", "t"} and experts2["s"].shape == experts2["t"].shape == (test.n,)
    for key in ("ltv", "ap", "at"):
        assert np.isfinite(fit.histories["stage2"][0][key])


def test_learning_rates_share_one_compiled_step_and_patience_counts_from_the_drop(splits):
    """A tuning over learning rates traces the step once; with lr = 0 nothing improves after
    epoch 0, so the run stops ``patience`` epochs after the drop (epoch drop_epoch +
    patience - 1): the epochs before the drop do not count, however far back the best is;
    lr = 1e-2 beats the untrained model."""
    train, val, _ = splits
    chex.clear_trace_counter()
    once = functools.partial(chex.assert_max_traces, n=1)

    def stage1(lr, patience, drop_epoch, max_epochs=8):
        return fit_stage1(train, val, seed=0, domains=("t",), step_wrapper=once, lr=lr,
                          patience=patience, drop_epoch=drop_epoch, max_epochs=max_epochs,
                          batch_size=32, **ARCH)  # fmt: skip

    frozen = stage1(0.0, patience=1, drop_epoch=3)
    assert len(frozen.histories["stage1_target"]) == 4  # stopped after epoch 3 (the drop)
    assert len(stage1(0.0, patience=4, drop_epoch=1).histories["stage1_target"]) == 5
    assert len(stage1(0.0, patience=2, drop_epoch=3).histories["stage1_target"]) == 5
    untrained = fit_stage1(train, val, seed=0, domains=(), **ARCH).params["target"]
    chex.assert_trees_all_equal(frozen.params["target"], untrained)
    trained = stage1(1e-2, patience=2, drop_epoch=2)
    best = min(row["val_mae"] for row in trained.histories["stage1_target"])
    assert best < 0.85 * frozen.histories["stage1_target"][0]["val_mae"]  # fails if not learnt


def test_patience_counts_from_the_drop_only_for_a_loss_with_lambdas():
    """lr = 0, best epoch 0, patience 2, drop after epoch 3: a loss without lambdas (the
    baselines) stops after epoch 3, when the drop epoch is trained; with lambdas the two
    epochs of patience start at the drop, so the run trains epoch 4 too."""
    arrays = {"x": np.ones(64, np.float32), "y": np.full(64, 2.0, np.float32),
              "weight": np.ones(64, np.float32)}  # fmt: skip

    def loss_fn(params, batch, lambdas):
        loss = jnp.mean(batch["weight"] * (params["w"] * batch["x"] - batch["y"]) ** 2)
        return loss, {"loss": loss}

    def run(lambdas):
        res = fit(loss_fn, lambda p, b: p["w"] * b["x"], {"w": jnp.zeros(())}, arrays, arrays,
                  label="y", desc="toy", lr=0.0, batch_size=16, max_epochs=10, patience=2,
                  drop_epoch=3, lambdas=lambdas)  # fmt: skip
        return len(res.history)

    assert run(None) == 4
    assert run((1.0, 1.0, 1.0, 1.0)) == 5


def test_stage1_runs_each_domain_with_its_own_field_offsets(splits):
    """The synthetic source and target portraits have different field sizes, so the DeepFM
    embedding offsets differ: stage 1's source loss and predictions must use the source
    module (a source run through the target's graph read other rows of its table)."""
    train, _, test = splits
    assert train.s_cat_sizes != train.t_cat_sizes
    arch = (train.s_cat_sizes, train.s_num.shape[1], train.t_cat_sizes, train.t_num.shape[1],
            8, 4, 1, 2, True)  # fmt: skip
    model = _model(arch, 4, seed=0)
    _, params = split_params(model)
    fns = cdltvs_fns(arch, k=4, temperature=1.0, margin=0.1)
    batch = {key: jnp.asarray(v) for key, v in model_batch(test, 1.0, 1.0).items()}
    for domain, module in (("s", model.source), ("t", model.target)):
        name = {"s": "source", "t": "target"}[domain]
        got = fns.predict_ltvs[domain](params[name], batch)
        np.testing.assert_allclose(got, module(batch, domain).pred, rtol=1e-6, atol=1e-6)
