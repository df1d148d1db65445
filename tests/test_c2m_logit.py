"""Conditional logit against statsmodels / xlogit, and the attribute-set search (eq. 13)."""

import numpy as np
import pytest

from dmeta.mining.logit import (
    attribute_set_search,
    choice_probabilities,
    fit_logit,
    fit_logit_batched,
)


def simulate(n=400, j=5, k=4, seed=0):
    rng = np.random.default_rng(seed)
    beta = np.array([1.0, -0.5, 0.3, 0.0])[:k]
    x = rng.normal(size=(n, j, k))
    chosen = (x @ beta + rng.gumbel(size=(n, j))).argmax(1)
    return x, chosen, beta


def test_matches_statsmodels_conditional_logit():
    cm = pytest.importorskip("statsmodels.discrete.conditional_models")
    x, chosen, _ = simulate()
    n, j, k = x.shape
    y = np.zeros((n, j))
    y[np.arange(n), chosen] = 1
    ref = cm.ConditionalLogit(y.ravel(), x.reshape(-1, k), groups=np.repeat(np.arange(n), j))
    ref = ref.fit(disp=0, method="newton", maxiter=100)
    fit = fit_logit(x, chosen)
    assert bool(fit.converged)
    np.testing.assert_allclose(fit.beta, ref.params, atol=1e-4)
    np.testing.assert_allclose(fit.std_err, ref.bse, atol=1e-4)
    np.testing.assert_allclose(fit.loglik, ref.llf, atol=1e-6)


def test_matches_xlogit():
    xlogit = pytest.importorskip("xlogit")
    x, chosen, _ = simulate(seed=1)
    n, j, k = x.shape
    y = np.zeros((n, j), bool)
    y[np.arange(n), chosen] = True
    ref = xlogit.MultinomialLogit()
    ref.fit(
        X=x.reshape(-1, k),
        y=y.ravel(),
        varnames=[f"a{i}" for i in range(k)],
        ids=np.repeat(np.arange(n), j),
        alts=np.tile(np.arange(j), n),
        verbose=0,
    )
    np.testing.assert_allclose(fit_logit(x, chosen).beta, ref.coeff_, atol=1e-4)


def test_recovers_planted_coefficients_and_handles_masks():
    x, chosen, beta = simulate(n=3000, seed=2)
    mask = np.ones(chosen.shape + (5,), bool)
    mask[np.arange(len(chosen)), (chosen + 1) % 5] = False  # one unavailable alternative each
    x_masked = np.where(mask[..., None], x, 1e3)  # masked values must not matter
    fit = fit_logit(x_masked, chosen, mask=mask)
    assert np.abs(np.asarray(fit.beta) - beta).max() < 0.1
    p = choice_probabilities(fit.beta, x[:3])
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)


def test_ridge_shrinks_and_bad_input_is_named():
    x, chosen, _ = simulate()
    assert np.linalg.norm(fit_logit(x, chosen, l2=50.0).beta) < np.linalg.norm(
        fit_logit(x, chosen).beta
    )
    with pytest.raises(ValueError, match=r"choice situation \(0,\)"):
        fit_logit(x, chosen, mask=np.arange(5)[None, :] != chosen[:, None])


def test_attribute_set_search_picks_highest_utility_combination():
    beta = np.array([0.1, 0.9, -0.2, 0.4, 0.3])  # field 0: cols 0-1; field 1: cols 2-4
    best, combos, prob = attribute_set_search(beta, [[0, 1], [2, 3, 4]])
    assert best == (1, 3)
    assert combos.shape == (6, 2)
    np.testing.assert_allclose(prob.sum(), 1.0)
    assert prob[np.flatnonzero((combos == [1, 3]).all(1))[0]] == prob.max()


def test_weights_and_batched_fit_match_separate_fits():
    x, chosen, _ = simulate()
    doubled = fit_logit(np.concatenate([x, x[:50]]), np.concatenate([chosen, chosen[:50]]))
    weights = np.ones(len(chosen))
    weights[:50] = 2.0
    np.testing.assert_allclose(fit_logit(x, chosen, weights=weights).beta, doubled.beta, atol=1e-8)
    # two groups, the second padded with zero-weight situations
    xs = np.stack([x, np.concatenate([x[:200], np.zeros_like(x[200:])])])
    cs = np.stack([chosen, np.concatenate([chosen[:200], np.zeros_like(chosen[200:])])])
    ws = np.stack([np.ones(400), (np.arange(400) < 200).astype(float)])
    batched = fit_logit_batched(xs, cs, weights=ws, l2=0.5)
    np.testing.assert_allclose(batched.beta[0], fit_logit(x, chosen, l2=0.5).beta, atol=1e-8)
    np.testing.assert_allclose(
        batched.beta[1], fit_logit(x[:200], chosen[:200], l2=0.5).beta, atol=1e-8
    )
