"""Multi-process MAML meta-train throughput: 1 process x 1 CPU device, 1 x 2, 2 processes x 1.

Data-parallel second-order MAML meta-train steps of the dmeta engine (``make_meta_train_step``
of ``make_maml_task_loss`` over an MPFN with its default fused GRU, jitted by
``dmeta.parallel.data_parallel`` with the state donated) at ``maml_throughput.py``'s shape
(MPFN: 32 tasks, 16 + 16 samples, windows of 30 steps with 48 features, GRU hidden 128, one
inner SGD step, Adam outer step), the same global meta-batch in three configurations:

- ``1proc_1dev``: one process, one CPU device;
- ``1proc_2dev``: one process, two simulated CPU devices (the task axis split over both);
- ``2proc_1dev``: two processes of one CPU device each on JAX's distributed runtime (localhost
  coordinator on a free port, Gloo collectives), each feeding only its
  ``dmeta.distributed.process_shard`` of the tasks (``dmeta.distributed.global_batch``).

Each configuration runs as subprocesses of ``_multiprocess.py`` (``JAX_PLATFORMS=cpu``,
``XLA_FLAGS=--xla_force_host_platform_device_count=D``), one configuration after the other
(each process's XLA runtime uses every core, so two configurations at once would compete).
A timed step includes assembling the global batch from the process's host rows. Per
configuration: ``_warmup_s`` (model build, compile and first step, the slowest process's) and
the median over ``--repeats`` timed steps (the slowest process's median). The contenders must
compute the same thing: the meta-loss of the first ``--check-steps`` steps must agree with
``1proc_1dev``'s within ``--loss-rtol`` (``loss_max_rel_diff``). One line per figure
(``name: value unit``); the last are ``steps_per_s_<config>`` and ``speedup_2proc_vs_1proc``
(2 processes x 1 device over 1 process x 1 device).

    .venv/bin/python experiments/benchmarks/multiprocess_throughput.py \
        --out experiments/results/benchmarks/multiprocess_throughput.txt
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

import jax
import jaxlib

from experiments.benchmarks import _multiprocess
from experiments.benchmarks.common import Report, load_average, machine
from experiments.benchmarks.maml_throughput import QUICK, Shape

WORKER = Path(_multiprocess.__file__)


@dataclasses.dataclass(frozen=True)
class Config:
    """``processes`` processes of ``devices`` CPU devices each."""

    processes: int
    devices: int

    @property
    def name(self) -> str:
        return f"{self.processes}proc_{self.devices}dev"


CONFIGS = (Config(1, 1), Config(1, 2), Config(2, 1))
REFERENCE = CONFIGS[0]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of ``main``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=None, help="global meta-batch (T, even)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per configuration")
    parser.add_argument("--quick", action="store_true", help="tiny shape, for tests")
    parser.add_argument("--gru", choices=("fused", "scan"), default="fused", help="MPFN's GRU")
    parser.add_argument(
        "--check-steps", type=int, default=3, help="first steps whose meta-losses must agree"
    )
    parser.add_argument("--loss-rtol", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if args.tasks is not None and args.tasks % 2:
        parser.error(f"--tasks {args.tasks}: the meta-batch must split over 2 devices")
    return args


def run_config(config: Config, shape: Shape, args: argparse.Namespace) -> list[dict]:
    """Runs ``config``'s processes; each one's JSON line (``_multiprocess.benchmark_worker``).

    Raises:
      RuntimeError: the processes did not form the configuration, or their shards do not
        partition the meta-batch in order.
    """
    argv = [f"--{f.name}={getattr(shape, f.name)}" for f in dataclasses.fields(Shape)]
    argv += [f"--repeats={args.repeats}", f"--gru={args.gru}", f"--seed={args.seed}"]
    workers = _multiprocess.launch_group(WORKER, argv, config.processes, config.devices)
    results = sorted(_multiprocess.finish(workers, args.timeout), key=lambda r: r["process_index"])
    formed = [(r["process_count"], r["global_devices"]) for r in results]
    rows = [r["rows"] for r in results]
    bounds = [0, *(stop for _, stop in rows)]
    if formed != [(config.processes, config.processes * config.devices)] * config.processes or (
        rows != [[a, b] for a, b in zip(bounds, bounds[1:])] or bounds[-1] != shape.tasks
    ):
        raise RuntimeError(f"{config.name}: processes {formed}, rows {rows}")
    return results


def loss_max_rel_diff(losses: dict[str, list[float]], steps: int) -> float:
    """Largest ``|loss / reference - 1|`` over the first ``steps`` steps of every process of
    every configuration (``losses`` keyed ``<config>_p<process>``) against ``REFERENCE``'s."""
    reference = losses[f"{REFERENCE.name}_p0"][:steps]
    return max(
        abs(loss / ref - 1.0)
        for run in losses.values()
        for loss, ref in zip(run[:steps], reference, strict=True)
    )


def emit_header(emit: Report, shape: Shape, args: argparse.Namespace) -> None:
    """The report's first lines: command, shape, machine, versions, load."""
    emit("command: " + " ".join(["python", *sys.argv]))
    emit(
        f"shape: T={shape.tasks} tasks (global meta-batch), {shape.support}+{shape.query} "
        f"samples, S={shape.seq}, F={shape.features}, H={shape.hidden}, 1 inner step, second "
        f"order, adam; MPFN GRU {args.gru}; repeats={args.repeats}"
    )
    emit(f"machine: {machine()}")
    emit(f"versions: jax {jax.__version__}, jaxlib {jaxlib.__version__}")
    emit("load_avg_start", load_average())


def main(argv: list[str] | None = None) -> None:
    """Runs every configuration, checks that their losses agree, prints the report."""
    args = parse_args(argv)
    shape = QUICK if args.quick else Shape()
    if args.tasks is not None:
        shape = dataclasses.replace(shape, tasks=args.tasks)
    args.repeats = args.repeats or (2 if args.quick else 7)
    emit = Report()
    emit_header(emit, shape, args)
    medians, losses = {}, {}
    for config in CONFIGS:
        results = run_config(config, shape, args)
        emit(
            f"config_{config.name}: {config.processes} process(es) x {config.devices} CPU "
            f"device(s), {shape.tasks // config.processes} tasks fed per process"
        )
        emit(f"{config.name}_warmup_s", max(r["warmup_s"] for r in results), "s")
        medians[config.name] = max(statistics.median(r["step_s"]) for r in results)
        for r in results:
            losses[f"{config.name}_p{r['process_index']}"] = r["losses"]
        first = ", ".join(f"{x:.7g}" for x in results[0]["losses"][: args.check_steps])
        emit(f"{config.name}_first_losses: {first}")
    steps = min(args.check_steps, 1 + args.repeats)
    diff = loss_max_rel_diff(losses, steps)
    emit("loss_check_steps", steps)
    emit("loss_rtol", args.loss_rtol)
    emit("loss_max_rel_diff", diff)
    if not diff <= args.loss_rtol:
        raise ValueError(f"the configurations' meta-losses differ by {diff:.3g}")
    emit("load_avg_end", load_average())
    for name, seconds in medians.items():
        emit(f"steps_per_s_{name}", 1.0 / seconds, "steps/s")
    emit("speedup_2proc_vs_1proc", medians[REFERENCE.name] / medians[CONFIGS[2].name])
    emit.save(args.out)


if __name__ == "__main__":
    main()
