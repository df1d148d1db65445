"""Conditional (multinomial) logit in JAX and the attribute-set search of C2M (eq. 12-13).

The model: in choice situation ``n`` with alternatives ``x[n, j]`` (attribute vectors),
``P(y_n = j) = exp(beta . x[n, j]) / sum_k exp(beta . x[n, k])`` (eq. 12). ``fit_logit``
maximizes the exact log-likelihood (optionally with an L2 penalty) by Newton's method with the
analytic gradient and Hessian and step halving, in float64; it is what
``statsmodels.discrete.conditional_models.ConditionalLogit`` and ``xlogit.MultinomialLogit``
estimate on the same data.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LogitFit:
    """A fitted conditional logit.

    Attributes:
      beta: f64[K] coefficients.
      std_err: f64[K] standard errors from the inverse observed information.
      loglik: maximized log-likelihood (without the penalty).
      n_iter: Newton iterations used.
      converged: whether the gradient norm fell below the tolerance.
    """

    beta: jax.Array
    std_err: jax.Array
    loglik: jax.Array
    n_iter: jax.Array
    converged: jax.Array


def _moments(beta, x, chosen, mask, weights):
    """Weighted log-likelihood, gradient and Hessian of the conditional logit.

    Args:
      beta: f[K]; x: f[N, J, K]; chosen: i[N]; mask: bool[N, J] (available alternatives);
      weights: f[N] per choice situation.
    """
    util = jnp.where(mask, x @ beta, -jnp.inf)
    logp = jax.nn.log_softmax(util, axis=-1)
    p = jnp.where(mask, jnp.exp(logp), 0.0) * weights[:, None]
    loglik = (weights * jnp.take_along_axis(logp, chosen[:, None], axis=1)[:, 0]).sum()
    xbar = jnp.einsum("nj,njk->nk", p, x)  # weighted: sum_j w p_j x_j
    x_chosen = jnp.take_along_axis(x, chosen[:, None, None], axis=1)[:, 0]
    grad = (weights[:, None] * x_chosen - xbar).sum(0)
    flat = x.reshape(-1, x.shape[-1])
    w_safe = jnp.where(weights > 0, weights, 1.0)[:, None]
    hess = -((p.reshape(-1, 1) * flat).T @ flat - (xbar / w_safe).T @ xbar)
    return loglik, grad, hess


def _loglik(beta, x, chosen, mask, weights):
    util = jnp.where(mask, x @ beta, -jnp.inf)
    logp = jax.nn.log_softmax(util, axis=-1)
    return (weights * jnp.take_along_axis(logp, chosen[:, None], axis=1)[:, 0]).sum()


def _newton(x, chosen, mask, weights, l2, max_iter, tol):
    k = x.shape[-1]
    eye = jnp.eye(k, dtype=x.dtype)

    def objective(beta):
        loglik, grad, hess = _moments(beta, x, chosen, mask, weights)
        return (
            loglik - 0.5 * l2 * beta @ beta,
            grad - l2 * beta,
            hess - l2 * eye,
            loglik,
        )

    def cond(carry):
        _, _, grad, _, it = carry
        return (it < max_iter) & (jnp.max(jnp.abs(grad)) > tol)

    def body(carry):
        beta, obj, grad, hess, it = carry
        step = jnp.linalg.solve(hess, -grad)

        def penalized(b):
            return _loglik(b, x, chosen, mask, weights) - 0.5 * l2 * b @ b

        def halve(c):
            t, _ = c
            return t * 0.5, penalized(beta + t * 0.5 * step)

        def worse(c):
            t, new_obj = c
            return (t > 1e-6) & ~(new_obj >= obj - 1e-12 * jnp.abs(obj))

        t, _ = jax.lax.while_loop(worse, halve, (1.0, penalized(beta + step)))
        beta = beta + t * step
        new_obj, grad, hess, _ = objective(beta)
        return beta, new_obj, grad, hess, it + 1

    beta0 = jnp.zeros(k, x.dtype)
    obj, grad, hess, _ = objective(beta0)
    beta, _, grad, hess, it = jax.lax.while_loop(cond, body, (beta0, obj, grad, hess, 0))
    _, _, _, loglik = objective(beta)
    std_err = jnp.sqrt(jnp.diag(jnp.linalg.inv(-hess)))
    return LogitFit(beta, std_err, loglik, it, jnp.max(jnp.abs(grad)) <= tol)


_newton_jit = jax.jit(_newton)
_newton_vmap = jax.jit(jax.vmap(_newton, in_axes=(0, 0, 0, 0, None, None, None)))


def _validate(x, chosen, mask, weights):
    x = np.asarray(x, dtype=np.float64)
    chosen = np.asarray(chosen, dtype=np.int64)
    if x.ndim < 3 or chosen.shape != x.shape[:-2]:
        raise ValueError(
            f"x must be [..., N, J, K] and chosen [..., N]; got {x.shape} and {chosen.shape}"
        )
    mask = np.ones(x.shape[:-1], bool) if mask is None else np.asarray(mask, dtype=bool)
    weights = np.ones(chosen.shape) if weights is None else np.asarray(weights, np.float64)
    j = x.shape[-2]
    if chosen.min(initial=0) < 0 or chosen.max(initial=0) >= j:
        raise ValueError(f"chosen must lie in [0, {j}); got {chosen.min()}..{chosen.max()}")
    ok = np.take_along_axis(mask, chosen[..., None], axis=-1)[..., 0]
    bad = np.argwhere(~ok)
    if len(bad):
        raise ValueError(
            f"choice situation {tuple(bad[0].tolist())}: the chosen alternative is masked out"
        )
    return x, chosen, mask, weights


def fit_logit(
    x: np.ndarray,
    chosen: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    l2: float = 0.0,
    max_iter: int = 100,
    tol: float = 1e-9,
) -> LogitFit:
    """Fits a conditional logit by Newton's method on the exact log-likelihood (float64).

    Args:
      x: f[N, J, K] attributes of the J alternatives of each of N choice situations.
      chosen: i[N] index of the chosen alternative.
      mask: bool[N, J] available alternatives (all if None); the chosen one must be available.
      weights: f[N] weight of each choice situation in the log-likelihood (all 1 if None).
      l2: ridge penalty ``0.5 * l2 * |beta|^2`` (0 for the plain maximum likelihood).
      max_iter: Newton iterations at most.
      tol: stop when the largest absolute gradient entry is below this.

    Returns:
      A ``LogitFit`` with float64 arrays.
    """
    x, chosen, mask, weights = _validate(x, chosen, mask, weights)
    if x.ndim != 3:
        raise ValueError(f"x must be [N, J, K]; got {x.shape} (use fit_logit_batched)")
    with jax.enable_x64(True):
        return _newton_jit(*map(jnp.asarray, (x, chosen, mask, weights)), l2, max_iter, tol)


def fit_logit_batched(
    x: np.ndarray,
    chosen: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    l2: float = 0.0,
    max_iter: int = 100,
    tol: float = 1e-9,
) -> LogitFit:
    """``fit_logit`` for G independent models at once (vmapped), e.g. one per user.

    Args:
      x: f[G, N, J, K]; chosen: i[G, N]; mask: bool[G, N, J]; weights: f[G, N] (0 pads
        groups with fewer than N situations).

    Returns:
      A ``LogitFit`` whose fields have a leading G axis.
    """
    x, chosen, mask, weights = _validate(x, chosen, mask, weights)
    if x.ndim != 4:
        raise ValueError(f"x must be [G, N, J, K]; got {x.shape}")
    with jax.enable_x64(True):
        return _newton_vmap(*map(jnp.asarray, (x, chosen, mask, weights)), l2, max_iter, tol)


def choice_probabilities(beta: jax.Array, x: jax.Array) -> jax.Array:
    """Eq. 12: ``P(y = j)`` over the last-but-one axis. ``beta: f[K]``, ``x: f[..., J, K]``."""
    return jax.nn.softmax(x @ beta, axis=-1)


def attribute_set_search(
    beta: np.ndarray, fields: Sequence[Sequence[int]]
) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """Eq. 13: the attribute combination with the highest choice probability.

    Every combination takes one candidate column per attribute field (e.g. one colour and one
    size) and is an alternative whose attribute vector is the indicator of its columns; the
    choice probability is the logit over all combinations.

    Args:
      beta: f[K] fitted coefficients over K one-hot attribute columns.
      fields: per attribute field, its candidate column indices.

    Returns:
      (best combination as column indices, all combinations i64[C, F], probabilities f[C]).
    """
    if not fields or any(len(f) == 0 for f in fields):
        raise ValueError("every attribute field needs at least one candidate column")
    combos = np.array(list(itertools.product(*fields)), dtype=np.int64).reshape(-1, len(fields))
    util = np.asarray(beta, dtype=np.float64)[combos].sum(axis=1)
    prob = np.exp(util - util.max())
    prob /= prob.sum()
    return tuple(int(c) for c in combos[np.argmax(prob)]), combos, prob
