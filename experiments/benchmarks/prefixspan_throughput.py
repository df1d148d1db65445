"""PrefixSpan throughput: ``dmeta.mining.prefixspan`` against the ``prefixspan`` PyPI package.

Both run in this process on the same zipf-distributed database; the pattern sets and supports
are checked for equality and the script prints ``speedup_vs_prefixspan: X``.

    .venv/bin/python experiments/benchmarks/prefixspan_throughput.py \
        --out experiments/results/benchmarks/prefixspan_throughput.txt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from dmeta.mining.prefixspan import prefixspan


def zipf_database(
    n_sequences: int, *, mean_length: int, n_symbols: int, exponent: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sequences with Poisson lengths (at least 1) and i.i.d. symbols, P(rank r) ~ r^-exponent.

    Returns:
      (values i64[T], offsets i64[N + 1]).
    """
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_symbols + 1) ** exponent
    lengths = np.maximum(rng.poisson(mean_length, n_sequences), 1)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = rng.choice(n_symbols, size=int(offsets[-1]), p=p / p.sum())
    return values, offsets


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=50_000)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--exponent", type=float, default=1.0)
    parser.add_argument("--support", type=float, default=0.01, help="relative minimum support")
    parser.add_argument("--max-length", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-package", action="store_true", help="time dmeta only")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)

    values, offsets = zipf_database(
        args.sequences,
        mean_length=args.length,
        n_symbols=args.symbols,
        exponent=args.exponent,
        seed=args.seed,
    )
    min_support = max(1, int(np.ceil(args.support * args.sequences)))
    lines = [
        "command: " + " ".join([Path(sys.executable).name, *sys.argv]),
        f"database: {args.sequences} sequences, mean length {args.length}, {args.symbols} symbols, "
        f"zipf exponent {args.exponent}, {int(offsets[-1])} events",
        f"min_support: {min_support} ({args.support:.2%}), max_length: {args.max_length}",
    ]
    start = time.perf_counter()
    ours = prefixspan((values, offsets), min_support=min_support, max_length=args.max_length)
    t_ours = time.perf_counter() - start
    lines.append(f"dmeta.mining.prefixspan: {t_ours:.2f} s, {len(ours)} patterns")
    if not args.skip_package:
        from prefixspan import PrefixSpan

        db = [values[offsets[i] : offsets[i + 1]].tolist() for i in range(args.sequences)]
        start = time.perf_counter()
        miner = PrefixSpan(db)
        miner.maxlen = args.max_length
        reference = {tuple(p): s for s, p in miner.frequent(min_support)}
        t_ref = time.perf_counter() - start
        lines.append(f"prefixspan (PyPI 0.5.2): {t_ref:.2f} s, {len(reference)} patterns")
        lines.append(f"identical patterns and supports: {reference == ours}")
        lines.append(f"speedup_vs_prefixspan: {t_ref / t_ours:.1f}")
    report = "\n".join(lines)
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
