"""Conditional logit fitting: ``dmeta.mining.logit.fit_logit`` against xlogit (and statsmodels).

Both fit the same simulated choice data in this process; the script reports times, the largest
coefficient difference and ``speedup_vs_xlogit: X``. statsmodels' ConditionalLogit is far slower
at this size, so it runs only with ``--statsmodels``.

    .venv/bin/python experiments/benchmarks/logit_fit.py \
        --out experiments/results/benchmarks/logit_fit.txt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

from dmeta.mining.logit import fit_logit


def simulate_choices(
    n_situations: int, n_alternatives: int, n_attributes: int, *, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gumbel-utility choices. Returns (x f64[N, J, K], chosen i64[N], true beta f64[K])."""
    rng = np.random.default_rng(seed)
    beta = rng.normal(0.0, 0.5, n_attributes)
    x = rng.normal(size=(n_situations, n_alternatives, n_attributes))
    chosen = (x @ beta + rng.gumbel(size=(n_situations, n_alternatives))).argmax(axis=1)
    return x, chosen, beta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--situations", type=int, default=100_000)
    parser.add_argument("--alternatives", type=int, default=10)
    parser.add_argument("--attributes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--statsmodels", action="store_true", help="also fit statsmodels")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    n, j, k = args.situations, args.alternatives, args.attributes
    x, chosen, _ = simulate_choices(n, j, k, seed=args.seed)
    lines = [
        "command: " + " ".join([Path(sys.executable).name, *sys.argv]),
        f"data: {n} choice situations x {j} alternatives x {k} attributes",
    ]

    start = time.perf_counter()
    fit = jax.block_until_ready(fit_logit(x, chosen))
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(fit_logit(x, chosen))
    t_warm = time.perf_counter() - start
    ours = np.asarray(fit.beta)
    lines.append(
        f"dmeta fit_logit (Newton, float64): {t_ours:.2f} s first call incl. compile, "
        f"{t_warm:.2f} s warm, {int(fit.n_iter)} iterations, loglik {float(fit.loglik):.4f}"
    )

    from xlogit import MultinomialLogit

    y = np.zeros((n, j), dtype=bool)
    y[np.arange(n), chosen] = True
    model = MultinomialLogit()
    start = time.perf_counter()
    model.fit(
        X=x.reshape(-1, k),
        y=y.ravel(),
        varnames=[f"a{i}" for i in range(k)],
        ids=np.repeat(np.arange(n), j),
        alts=np.tile(np.arange(j), n),
        verbose=0,
    )
    t_xlogit = time.perf_counter() - start
    lines.append(
        f"xlogit MultinomialLogit: {t_xlogit:.2f} s, loglik {model.loglikelihood:.4f}, "
        f"max |beta diff| {np.abs(ours - model.coeff_).max():.2e}"
    )
    if args.statsmodels:
        from statsmodels.discrete.conditional_models import ConditionalLogit

        start = time.perf_counter()
        sm = ConditionalLogit(
            y.ravel().astype(float), x.reshape(-1, k), groups=np.repeat(np.arange(n), j)
        )
        result = sm.fit(disp=0, method="newton", maxiter=100)
        t_sm = time.perf_counter() - start
        lines.append(
            f"statsmodels ConditionalLogit (newton): {t_sm:.2f} s, "
            f"max |beta diff| {np.abs(ours - result.params).max():.2e}"
        )
    lines.append(
        f"speedup_vs_xlogit: {t_xlogit / t_warm:.1f} (warm), {t_xlogit / t_ours:.1f} (cold)"
    )
    report = "\n".join(lines)
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
