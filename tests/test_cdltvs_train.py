"""CDLtvS two-stage training at smoke size: single trace per step, finite predictions."""

import functools

import chex
import numpy as np

from dmeta.ltv.data import apply_sparsity, make_synthetic, split_customers
from dmeta.ltv.train import fit_stage1, fit_stage2

ARCH = dict(hidden=8, align=4, k=4, tcn_levels=2)
FIT = dict(batch_size=32, max_epochs=3, patience=2, drop_epoch=1)


def test_two_stage_fit_traces_each_step_once_and_predicts():
    d = apply_sparsity(make_synthetic(120, n_periods=6, horizon=2, seed=0), 0.5, seed=0)
    train, val, test = split_customers(d, seed=0)
    chex.clear_trace_counter()
    # chex counts traces per wrapping call site: stage 1 wraps two steps (one per domain)
    # there, so two traces in all means each was traced exactly once over all its epochs.
    once_per_domain = functools.partial(chex.assert_max_traces, n=2)
    stage1 = fit_stage1(train, val, seed=0, step_wrapper=once_per_domain, **ARCH, **FIT)
    assert set(stage1.histories) == {"stage1_source", "stage1_target"}
    assert len(stage1.histories["stage1_target"]) >= 2  # lambda drop did not retrace
    pred, expert = stage1.predict_ltvs(test)
    assert pred.shape == (test.n,) and np.isfinite(pred).all() and (pred >= 0).all()
    assert expert.min() >= 0 and expert.max() < 4
    once = functools.partial(chex.assert_max_traces, n=1)
    fit = fit_stage2(stage1, train, val, seed=0, step_wrapper=once, **FIT)
    pred2, expert2 = fit.predict(test)
    assert pred2.shape == (test.n,) and np.isfinite(pred2).all()
    assert expert2.shape == (test.n,)
    for key in ("ltv", "ap", "at"):
        assert np.isfinite(fit.histories["stage2"][0][key])
