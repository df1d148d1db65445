"""RMLDP meta-training throughput: segments per second of the full meta-step vs meta-batch size.

The step is the library's Algorithm 1 step, ``dmeta.rmldp.model.make_train_step`` jitted with
the state donated: per segment the MPFN_s encoder and its reconstruction loss (eq. 9-10), the
knowledge-graph layer q_g, the modulation M(q) * theta_0 (eq. 11-12), one second-order inner
step, the query loss (eq. 13), then one Adam update of every meta-parameter. Shapes are Table 1
of the paper (``dmeta/rmldp/config.py``, ``size="paper"``: |T_c| = 30, 48 features, GRUs
of 128, q_d 32, q_g 16, 16 support + 16 query samples per segment); the meta-batch runs over
8..4096 segments, segments ``vmap``-ed, ``lax.map``-ed, or ``lax.map``-ed over a
``jax.checkpoint``-ed task loss (``map_remat``: one segment's residuals at a time; the step's
``strategy``). A fixed Gaussian batch is passed in, so task sampling is not timed.

Each (size, mode) is traced and compiled once (traces and XLA backend compilations are
counted; the run fails otherwise); the modes of a size are timed interleaved and the median
is reported with the load average, because the CPU is shared. Peak memory is XLA's buffer
assignment for the compiled step (arguments + outputs - donated aliases + temporaries), and the
device's ``peak_bytes_in_use`` where the backend reports memory stats (GPU). A size whose step
time or memory, extrapolated linearly from the previous size, exceeds ``--max-seconds`` or the
memory budget ``--max-mib`` (or whose compiled memory exceeds the budget) is skipped and listed:
at Table 1 shapes ``vmap`` needs about 40 MiB per segment, 20 GiB at 512, ``map`` about 25.
The last lines are ``per_segment_cost_ratio_<largest>_vs_<smallest>_<mode>: X`` (< 1: the
per-segment cost falls as the batch grows).

    .venv/bin/python experiments/benchmarks/rmldp_segments.py \
        --out experiments/results/benchmarks/rmldp_segments.txt
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dmeta.rmldp.config import RMLDPConfig, get_config
from dmeta.rmldp.model import init_rmldp, make_train_step
from dmeta.train.state import init_train_state
from dmeta.types import Split, TaskBatch
from experiments.benchmarks.common import (
    Report,
    interleaved_medians,
    load_average,
    machine,
)

FEATURES = 48  # Table 1 "feature dimension"
QUICK_FEATURES = 3
SIZES = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
QUICK_SIZES = (2, 4)
MODES = ("vmap", "map", "map_remat")


@dataclasses.dataclass(frozen=True)
class Row:
    """One measured (size, mode): median step seconds, compile seconds, counts, memory."""

    segments: int
    mode: str
    seconds: float
    compile_seconds: float
    traces: int
    compiles: int
    xla_mib: float
    device_peak_mib: float | None

    @property
    def per_segment_ms(self) -> float:
        return 1e3 * self.seconds / self.segments


class CompileCounter:
    """Counts XLA backend compilations (``jax.monitoring`` events) from its creation on."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration: float, **kwargs) -> None:
        del duration, kwargs
        if event == self.EVENT:
            self.count += 1


def make_batch(key, cfg: RMLDPConfig, n_features: int, n_tasks: int) -> TaskBatch:
    """Gaussian segments: support / query f32[T, N, S, F]; odd segments have one padded sample."""

    def split(k, n):
        k1, k2, k3 = jax.random.split(k, 3)
        x = (n_tasks, n, cfg.protocol.seq_len, n_features)
        mask = np.ones((n_tasks, n), np.float32)
        mask[1::2, -1] = 0.0
        return Split(
            jax.random.normal(k1, x),
            jax.random.normal(k2, x),
            jax.random.normal(k3, (n_tasks, n)),
            jnp.asarray(mask),
        )

    ks, kq = jax.random.split(key)
    return TaskBatch(
        split(ks, cfg.train.n_support),
        split(kq, cfg.train.n_query),
        jnp.arange(n_tasks, dtype=jnp.int32),
    )


class Runner:
    """The compiled RMLDP meta-step of one (size, mode) and the state it advances."""

    def __init__(self, cfg, n_features, graph_emb, n_tasks, mode, counter, *, seed, remat=False):
        model, meta_params = init_rmldp(
            jax.random.key(seed),
            n_features=n_features,
            seq_len=cfg.protocol.seq_len,
            hidden=cfg.model.hidden,
            encoder_hidden=cfg.model.encoder_hidden,
            q_d_dim=cfg.model.q_d_dim,
            q_g_dim=cfg.model.q_g_dim,
            graph_dim=cfg.model.graph_dim,
            step_size=cfg.tuning.meta.inner_lr[0],
        )
        optimizer = optax.adam(cfg.tuning.meta.meta_lr[0])
        self.state = init_train_state(meta_params, optimizer, jax.random.key(seed))
        self.batch = make_batch(jax.random.key(seed + 1), cfg, n_features, n_tasks)
        self.key = jax.random.key(seed + 2)
        step = make_train_step(
            model,
            graph_emb,
            optimizer,
            lam=cfg.train.lam,
            steps=cfg.tuning.meta.inner_steps[0],
            step_size=cfg.tuning.meta.inner_lr[0],
            strategy=mode,
            remat=remat,
        )
        self.traces = 0

        def counted(state, batch, key):
            self.traces += 1
            return step(state, batch, key)

        jitted = jax.jit(counted, donate_argnums=0)
        compiles_before = counter.count
        start = time.perf_counter()
        self.step = jitted.lower(self.state, self.batch, self.key).compile()
        self.compile_seconds = time.perf_counter() - start
        self.compiles = counter.count - compiles_before
        mem = self.step.memory_analysis()
        self.xla_mib = (
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            - mem.alias_size_in_bytes
            + mem.temp_size_in_bytes
        ) / 2**20

    def __call__(self):
        self.state, metrics = self.step(self.state, self.batch, self.key)
        return jax.block_until_ready(metrics)


def memory_budget_mib() -> float:
    """90% of the accelerator's memory limit, or 70% of the host's available memory (CPU)."""
    stats = jax.devices()[0].memory_stats()
    if stats and "bytes_limit" in stats:
        return 0.9 * stats["bytes_limit"] / 2**20
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return 0.7 * int(line.split()[1]) / 2**10
    raise SystemExit("cannot read the available memory; pass --max-mib")


def device_peak_mib() -> float | None:
    """The default device's ``peak_bytes_in_use`` in MiB, None where not reported (CPU)."""
    stats = jax.devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / 2**20


def markdown_table(rows: list[Row]) -> list[str]:
    """The results as Markdown table lines."""
    lines = [
        "| segments | mode | step time (s) | segments/s | ms per segment | compile (s) "
        "| traces | compiles | XLA peak (MiB) | device peak (MiB) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        peak = "n/a" if r.device_peak_mib is None else f"{r.device_peak_mib:.0f}"
        lines.append(
            f"| {r.segments} | {r.mode} | {r.seconds:.4g} | {r.segments / r.seconds:.4g} "
            f"| {r.per_segment_ms:.4g} | {r.compile_seconds:.3g} | {r.traces} | {r.compiles} "
            f"| {r.xla_mib:.4g} | {peak} |"
        )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of ``main``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes 2, 4 and smoke shapes (tests)")
    parser.add_argument("--sizes", type=str, default=None, help="comma-separated segment counts")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per (size, mode)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=60.0,
        help="skip a size whose step time, extrapolated from the previous size, exceeds this",
    )
    parser.add_argument(
        "--max-mib",
        type=float,
        default=None,
        help="skip a size whose XLA peak memory (extrapolated, then compiled) exceeds this "
        "(default: 0.7 x available host memory, or 0.9 x the accelerator's memory)",
    )
    parser.add_argument(
        "--modes", type=str, default=",".join(MODES), help=f"comma-separated subset of {MODES}"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    return parser.parse_args(argv)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run measures: config, feature count, sizes, modes and timed repeats."""

    cfg: RMLDPConfig
    n_features: int
    sizes: tuple[int, ...]
    modes: tuple[str, ...]
    repeats: int


def make_plan(args: argparse.Namespace) -> Plan:
    """The ``Plan`` of the parsed command line."""
    sizes = QUICK_SIZES if args.quick else SIZES
    if args.sizes:
        sizes = tuple(sorted(int(s) for s in args.sizes.split(",")))
    return Plan(
        cfg=get_config(smoke=args.quick, size="paper"),
        n_features=QUICK_FEATURES if args.quick else FEATURES,
        sizes=sizes,
        modes=tuple(m for m in MODES if m in args.modes.split(",")),
        repeats=args.repeats or (2 if args.quick else 3),
    )


def emit_header(emit: Report, args: argparse.Namespace, plan: Plan) -> None:
    """The report's first lines: command, shape, machine, versions, memory notes, load."""
    cfg, meta = plan.cfg, plan.cfg.tuning.meta
    emit("command: " + " ".join(["python", *sys.argv]))
    emit(
        f"shape: S={cfg.protocol.seq_len}, F={plan.n_features}, H={cfg.model.hidden}, encoder H={cfg.model.encoder_hidden}, "
        f"q_d={cfg.model.q_d_dim}, q_g={cfg.model.q_g_dim}, u_g={cfg.model.graph_dim}, "
        f"{cfg.train.n_support}+{cfg.train.n_query} samples, {meta.inner_steps[0]} inner step(s) of "
        f"alpha={meta.inner_lr[0]:g}, lambda={cfg.train.lam}, adam beta={meta.meta_lr[0]:g}, second order; "
        f"sizes={list(plan.sizes)}, repeats={plan.repeats}, max_seconds={args.max_seconds:g}, "
        f"max_mib={args.max_mib or 'auto'}"
    )
    emit(f"machine: {machine()}; jax devices: {[str(d) for d in jax.devices()]}")
    emit(
        f"versions: jax {jax.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}"
    )
    emit(
        "memory: XLA peak = compiled step's buffer assignment (arguments + outputs - donated "
        "+ temporaries); device peak = memory_stats()['peak_bytes_in_use'] since start "
        "(n/a on CPU)"
    )
    emit("load_avg_start", load_average())


class Sweep:
    """The sweep over meta-batch sizes: the modes still measured, the skipped, the rows.

    Args:
      args: the parsed command line.
      plan: what to measure.
      emit: the report.
    """

    def __init__(self, args: argparse.Namespace, plan: Plan, emit: Report):
        self.args, self.plan, self.emit = args, plan, emit
        self.graph_emb = jax.random.normal(
            jax.random.key(args.seed + 3), (max(plan.sizes), plan.cfg.model.graph_dim)
        )
        self.counter = CompileCounter()
        self.rows: list[Row] = []
        self.skipped: list[str] = []
        self.active = list(plan.modes)
        self.previous: dict[str, Row] = {}

    def run(self) -> None:
        """Measures every size in turn until no mode is left."""
        for size in self.plan.sizes:
            max_mib = self.args.max_mib or memory_budget_mib()
            self.skip_predicted(size, max_mib)
            runners = self.compile(size, max_mib)
            if not runners:
                break
            self.measure(size, runners)
            del runners  # free this size's buffers before the next one compiles

    def skip(self, mode: str, size: int, reason: str) -> None:
        """Drops ``mode`` from this size on, with ``reason``."""
        self.active.remove(mode)
        self.skipped.append(f"{mode} sizes {[s for s in self.plan.sizes if s >= size]} ({reason})")

    def skip_predicted(self, size: int, max_mib: float) -> None:
        """Skips the modes whose time or memory, extrapolated from the last size, is too much."""
        for mode in list(self.active):
            last = self.previous.get(mode)
            if last is None:
                continue
            seconds = last.seconds * size / last.segments
            mib = last.xla_mib * size / last.segments
            if seconds > self.args.max_seconds:
                self.skip(mode, size, f"predicted {seconds:.3g} s per step > --max-seconds")
            elif mib > max_mib:
                self.skip(mode, size, f"predicted {mib:.4g} MiB > budget {max_mib:.4g} MiB")

    def compile(self, size: int, max_mib: float) -> dict[str, Runner]:
        """The compiled step of every active mode at ``size`` that fits the memory budget."""
        runners = {}
        for mode in list(self.active):
            runner = Runner(
                self.plan.cfg,
                self.plan.n_features,
                self.graph_emb,
                size,
                mode,
                self.counter,
                seed=self.args.seed,
            )
            if runner.xla_mib > max_mib:
                self.skip(
                    mode, size, f"compiled {runner.xla_mib:.4g} MiB > budget {max_mib:.4g} MiB"
                )
            else:
                runners[mode] = runner
        return runners

    def measure(self, size: int, runners: dict[str, Runner]) -> None:
        """Times the modes of ``size`` interleaved, checks the compile counts, emits the rates
        and each mode's first loss against ``map``'s."""
        emit, before = self.emit, self.counter.count
        first = {mode: runner() for mode, runner in runners.items()}
        medians = interleaved_medians(runners, self.plan.repeats, warmup=0)
        late_compiles = self.counter.count - before
        peak = device_peak_mib()
        for mode, r in runners.items():
            if r.traces != 1 or r.compiles != 1 or late_compiles:
                raise SystemExit(
                    f"{mode} at {size} segments: {r.traces} traces, {r.compiles} "
                    f"compilations, {late_compiles} more while running (expected 1, 1, 0)"
                )
            row = Row(
                size, mode, medians[mode], r.compile_seconds, r.traces, r.compiles, r.xla_mib, peak
            )
            self.rows.append(row)
            self.previous[mode] = row
            emit(f"{mode}_T{size}_segments_per_s", size / row.seconds, "segments/s")
            emit(f"{mode}_T{size}_ms_per_segment", row.per_segment_ms, "ms")
        for mode in sorted(first.keys() - {"map"}):
            if "map" in first:
                a, b = float(first[mode]["loss"]), float(first["map"]["loss"])
                emit(f"T{size}_{mode}_vs_map_loss_rel_diff", abs(a / b - 1.0))


def emit_summary(emit: Report, sweep: Sweep) -> None:
    """The Markdown table, the skipped sizes, and each mode's per-segment cost ratio (last)."""
    emit("")
    for line in markdown_table(sweep.rows):
        emit(line)
    emit("")
    emit("skipped: " + ("; ".join(sweep.skipped) if sweep.skipped else "none"))
    emit("load_avg_end", load_average())
    for mode in sweep.plan.modes:
        measured = [r for r in sweep.rows if r.mode == mode]
        if len(measured) >= 2:
            small, large = measured[0], measured[-1]
            emit(
                f"per_segment_cost_ratio_{large.segments}_vs_{small.segments}_{mode}",
                large.per_segment_ms / small.per_segment_ms,
                "(ms per segment, largest over smallest batch; < 1: falls as the batch grows)",
            )


def main(argv: list[str] | None = None) -> None:
    """Runs the sweep over meta-batch sizes and prints the report."""
    args = parse_args(argv)
    plan = make_plan(args)
    emit = Report()
    emit_header(emit, args, plan)
    sweep = Sweep(args, plan, emit)
    sweep.run()
    emit_summary(emit, sweep)
    emit.save(args.out)


if __name__ == "__main__":
    main()
