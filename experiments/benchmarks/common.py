"""Helpers shared by the side-by-side benchmarks: lazy peer imports, timing, report lines.

Report lines have the form ``name: value unit`` (one figure per line) so that tests and
READMEs can parse them with ``parse_report``.
"""

from __future__ import annotations

import importlib
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import jax
import jax.numpy as jnp

BENCH_HINT = "install the bench extra: `make bench` or `pip install -e '.[bench]'`"


def require(module: str) -> ModuleType:
    """Imports a peer library of the ``bench`` extra, exiting with a clear message if missing."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise SystemExit(f"this benchmark needs {module!r} ({err}); {BENCH_HINT}") from err


def format_line(name: str, value: float | str, unit: str = "") -> str:
    """One report line ``name: value unit``; floats get 4 significant digits."""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f"{name}: {text} {unit}".rstrip()


class Report:
    """Collects a benchmark's report: ``emit(name, value, unit)`` or ``emit(text)`` prints one
    line (``format_line``) and keeps it; ``save(path)`` writes them all (nothing for None)."""

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, *fields) -> None:
        line = format_line(*fields) if len(fields) > 1 else fields[0]
        self.lines.append(line)
        print(line, flush=True)

    def save(self, path: Path | None) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(self.lines) + "\n")


def parse_report(text: str) -> dict[str, tuple[float, str]]:
    """Parses ``name: value unit`` lines whose value is a number into ``{name: (value, unit)}``.

    Lines whose value is not a number (e.g. ``command: ...``) are skipped.
    """
    out = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(": ")
        if not sep or " " in name:
            continue
        value, _, unit = rest.partition(" ")
        try:
            out[name] = (float(value), unit)
        except ValueError:
            continue
    return out


def load_average() -> str:
    """The 1 / 5 / 15 minute load averages and the core count, e.g. ``1.2 0.9 0.7 (2 cores)``."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} cores)"


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int, *, warmup: int = 1
) -> dict[str, float]:
    """Median wall time in seconds of each zero-argument callable.

    The callables run round-robin (``a, b, c, a, b, c, ...``) so that a burst of load from
    other processes hits every contender alike; ``warmup`` untimed rounds come first. Each
    callable must block until its work is done (``jax.block_until_ready`` for JAX).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """This machine's f32 matmul rate: best of ``repeats`` jitted ``[n, n] @ [n, n]`` in GFLOP/s."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dot(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def compiled_flops(jitted: Callable, *args) -> float:
    """FLOPs XLA's cost analysis reports for ``jitted(*args)``.

    XLA counts a while loop's body once, not once per trip, so loops (``lax.scan``) must be
    unrolled in the function measured here for the count to be the real one.
    """
    cost = jitted.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def machine() -> str:
    """CPU model, core count and OS, e.g. ``Intel Xeon ... (2 cores), Linux x86_64``."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores), {platform.system()} {platform.machine()}"
