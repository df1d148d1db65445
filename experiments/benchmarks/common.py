"""Helpers shared by the side-by-side benchmarks: lazy peer imports, timing, report lines.

Report lines have the form ``name: value unit`` (one figure per line) so that tests and
READMEs can parse them with ``parse_report``.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import platform
import shutil
import statistics
import tempfile
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
    """The 1 / 5 / 15 minute load averages, the core count and the runnable threads now (this
    one included; a decaying average lags behind processes just paused), e.g.
    ``1.2 0.9 0.7 (2 cores, 1 runnable)``."""
    one, five, fifteen = os.getloadavg()
    runnable = Path("/proc/loadavg").read_text().split()[3].split("/")[0]
    return f"{one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} cores, {runnable} runnable)"


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


def report_step_speedup(
    report: Report, medians: dict[str, float], *, per_round: int, name: str, slow: str, fast: str
) -> None:
    """Reports ``<contender>_step_ms`` for each of ``medians`` (seconds per timed round of
    ``per_round`` steps, ``interleaved_medians``) and, last, ``name`` = ``slow``'s time over
    ``fast``'s."""
    for contender, seconds in medians.items():
        report(f"{contender}_step_ms", 1000.0 * seconds / per_round, "ms")
    report(name, medians[slow] / medians[fast])


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


def add_peer_args(parser: argparse.ArgumentParser, *, checked: str, rtol: str) -> None:
    """Adds the options every benchmark against PyTorch takes last.

    Args:
      parser: the benchmark's parser.
      checked: what of a contender is checked against dmeta's (for ``--keep-going``'s help).
      rtol: the option of the check's tolerance, e.g. ``"--grad-rtol"`` (default 1e-4).
    """
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help=f"a contender that fails (or whose {checked} disagrees) is reported and dropped",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument(
        "--warm-compile-cache",
        action="store_true",
        help="torch.compile reads Inductor's usual on-disk cache (default: a fresh one, so "
        "the compiled peer's warm-up is the cold compile a first run pays)",
    )
    parser.add_argument(rtol, type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")


def torch_compile_cache(warm: bool) -> str:
    """Unless ``warm``, points Inductor's on-disk cache (``TORCHINDUCTOR_CACHE_DIR``) at a
    fresh temporary folder, removed at exit: a hit on a cache an earlier run left would cut
    the compiled peer's warm-up from minutes to seconds and make its time to 200 steps
    depend on the machine's history. Call before torch compiles. Returns the report line."""
    if warm:
        where = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "Inductor's default folder")
        return f"torch_compile_cache: warm ({where})"
    folder = tempfile.mkdtemp(prefix="torchinductor_cold_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    return "torch_compile_cache: cold (a fresh TORCHINDUCTOR_CACHE_DIR)"


STEPS_TO = 200  # time_to_200: warm-up (build, compile, first step) + 199 steady-state steps


def torch_versions(torch: ModuleType) -> str:
    """The ``versions:`` line of a benchmark against PyTorch."""
    return (
        f"versions: jax {jax.__version__}, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}"
    )


def torch_precision(torch: ModuleType) -> str:
    """The ``precision:`` line (TF32 settings of torch on CUDA, JAX's matmul precision)."""
    return (
        "precision: torch matmul allow_tf32="
        f"{torch.backends.cuda.matmul.allow_tf32}, cudnn allow_tf32="
        f"{torch.backends.cudnn.allow_tf32}; jax default_matmul_precision="
        f"{getattr(jax.config, 'jax_default_matmul_precision', '?')}"
    )


def require_whole_graph(name: str) -> None:
    """Raises unless every ``torch.compile``-d call so far traced as whole graphs: a graph
    break or a frame Dynamo skips runs eagerly, and the peer would not be the compiled one.

    Reads Dynamo's process-wide counters, so call it after the compiled peer's first step.
    """
    from torch._dynamo.utils import counters

    reasons = sorted({*counters["graph_break"], *counters["unimplemented"]})
    if reasons:
        first = reasons[0].splitlines()[0]
        raise RuntimeError(f"{name}: torch.compile fell back to eager ({len(reasons)}): {first}")


class Contenders:
    """The timed contenders of a benchmark: zero-argument steps, each with its warm-up time.

    Args:
      emit: the report each ``{name}{suffix}_warmup_s`` (and ``{name}_error``) line goes to.
      keep_going: a contender whose build fails is reported as ``{name}_error: ...`` and
        dropped instead of ending the run.
      suffix: appended to a contender's name in its warm-up line (e.g. ``"_cpu"``).
    """

    def __init__(self, emit: Report, *, keep_going: bool, suffix: str = ""):
        self.emit, self.keep_going, self.suffix = emit, keep_going, suffix
        self.steps: dict[str, Callable[[], object]] = {}
        self.warmups: dict[str, float] = {}
        self.medians: dict[str, float] = {}

    def attempt(self, name: str, fn: Callable[[], object]) -> object:
        """``fn()``; with ``keep_going`` a failure is reported as ``name_error: ...``."""
        if not self.keep_going:
            return fn()
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - reported, the rest of the table goes on
            first = str(err).splitlines()[0][:300] if str(err) else ""
            self.emit(f"{name}_error: {type(err).__name__}: {first}")
            return None

    def add(self, name: str, build: Callable[[], Callable[[], object]], *, first_step=False):
        """Times ``build()`` (and its first step with ``first_step``) as ``name``'s warm-up.

        ``build`` returns the contender's zero-argument step, which must block until done;
        without ``first_step`` it must already have taken the first step. Run under
        ``attempt``: returns the step, or None where it failed with ``keep_going``.
        """

        def warm_up():
            start = time.perf_counter()
            step = build()
            if first_step:
                step()
            self.warmups[name] = time.perf_counter() - start
            self.steps[name] = step
            self.emit(f"{name}{self.suffix}_warmup_s", self.warmups[name], "s")
            return step

        return self.attempt(name, warm_up)

    def time(self, repeats: int) -> dict[str, float]:
        """Median seconds per step of every contender (``interleaved_medians``), kept."""
        self.medians = interleaved_medians(self.steps, repeats)
        return self.medians

    def time_to(self, steps: int = STEPS_TO) -> dict[str, float]:
        """Each timed contender's seconds to ``steps`` steps: warm-up + ``steps - 1`` medians."""
        return {n: self.warmups[n] + (steps - 1) * s for n, s in self.medians.items()}

    def emit_vs_best_torch(self, ours: list[str], peers: list[str], *, speedup_first: bool):
        """Emits ``speedup_vs_best_torch`` (the best of ``ours``' steps/s over the best of
        ``peers``') and ``time_to_200_vs_best_torch`` (the best peer's time to 200 steps over
        the best of ours'), in that order with ``speedup_first``, else the other way round."""
        lines = [
            ("speedup_vs_best_torch", vs_best_peer(self.medians, ours, peers)),
            (f"time_to_{STEPS_TO}_vs_best_torch", vs_best_peer(self.time_to(), ours, peers)),
        ]
        for name, value in lines if speedup_first else lines[::-1]:
            self.emit(name, value)


def vs_best_peer(seconds: dict[str, float], ours: list[str], peers: list[str]) -> float:
    """The best (least) of ``peers``' seconds over the best of ``ours``' (above 1: ahead)."""
    return min(seconds[n] for n in peers) / min(seconds[n] for n in ours)
