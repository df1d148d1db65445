"""The ``dmeta`` command: run, configure, report and demo the experiments.

    dmeta run EXPERIMENT [--data SPEC] [--out DIR] [--smoke] [--size cpu|paper] [--seeds N]
                         [--methods A,B] [--data-parallel] [--host-devices N]
                         [--set PATH=VALUE ...] [--fresh] [--workers N]
    dmeta config EXPERIMENT [--smoke] [--size paper]    every field as PATH = VALUE
    dmeta report DIR [--check]                          results.md and READMEs from results.csv
    dmeta report RUN_DIR --interim                      print the tables of a run in progress
    dmeta validate --data SPEC                          load and check a dataset, print a summary
    dmeta demo [--smoke] [--out runs/demo]

A multi-process run starts the same command once per process with ``--coordinator HOST:PORT
--num-processes N --process-id I`` (or the environment JAX reads on a cluster:
``dmeta.distributed``); the data-parallel mesh then spans every process's devices, and only
process 0 writes the run folder. ``--workers N`` instead runs the cells in N independent
processes on this machine, each pinned to its share of the cores; they share the run folder
through the harness's cell claims (``dmeta.train.harness``), and the results are those of
one process.

An experiment is a module of the ``experiments`` package with ``get_config(smoke=,
size=)`` (a nested frozen dataclass whose ``train.data_parallel`` is ``--data-parallel``),
``METHODS``, ``run(cfg, *, data, out, seeds, methods, fresh, command)`` and
``demo(out, *, smoke) -> str`` (a Markdown section of ``dmeta demo``). Bad input ends
with one line ``error: ...`` and exit status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import pkgutil
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np

import experiments
from dmeta import datasets, distributed, parallel, report
from dmeta.config import ConfigError, format_config, override
from dmeta.data.frames import DataError
from dmeta.train import harness
from dmeta.train.harness import RunError

USER_ERRORS = (DataError, ConfigError, RunError, FileNotFoundError)

logger = logging.getLogger(__name__)

CPUS_ENV = "DMETA_CPUS"  # "0,1": the cores a worker of ``--workers`` pins itself to


def discover() -> dict[str, ModuleType]:
    """Experiment modules by name (those defining ``run`` and ``get_config``), sorted.

    An experiment that needs a third-party package missing here is left out with a warning
    naming the package, so the others still run (e.g. on a machine with a bare image).
    """
    found = {}
    for info in pkgutil.iter_modules(experiments.__path__):
        if info.ispkg or info.name == "cli":
            continue
        try:
            module = importlib.import_module(f"experiments.{info.name}")
        except ModuleNotFoundError as err:
            if (err.name or "").partition(".")[0] in ("dmeta", "experiments"):
                raise
            logger.warning(
                "experiment %s left out: it needs %s, which is not installed", info.name, err.name
            )
            continue
        if callable(getattr(module, "run", None)) and callable(getattr(module, "get_config", None)):
            found[info.name] = module
    return dict(sorted(found.items()))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _experiment_parser(sub, name: str, module: ModuleType, command: str) -> argparse.ArgumentParser:
    doc = (module.__doc__ or name).strip()
    p = sub.add_parser(name, help=doc.splitlines()[0], description=doc)
    p.add_argument("--smoke", action="store_true", help="tiny sizes for a quick end-to-end check")
    p.add_argument(
        "--size", default="cpu", choices=("cpu", "paper"), help="paper: the paper's sizes"
    )
    if command == "config":
        return p
    p.add_argument(
        "--data",
        default="synthetic",
        help="synthetic | NAME:PATH (e.g. table:my.csv) | NAME (reads ../shared/data or $DMETA_DATA)",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/NAME)")
    p.add_argument("--seeds", type=_positive, default=1, help="number of seeds (0..N-1)")
    p.add_argument(
        "--methods", default=None, help=f"comma-separated subset of {', '.join(module.METHODS)}"
    )
    p.add_argument(
        "--data-parallel", action="store_true", help="split the batches over all visible devices"
    )
    p.add_argument(
        "--host-devices",
        type=_positive,
        default=None,
        metavar="N",
        help="on a CPU: N simulated devices (e.g. one per core) for --data-parallel",
    )
    p.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override any config field (see `dmeta config NAME`); repeatable",
    )
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming --out")
    p.add_argument(
        "--workers",
        type=_positive,
        default=1,
        metavar="N",
        help="run the cells in N processes sharing --out, each on its share of the cores",
    )
    p.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help="multi-process run: process 0's address",
    )
    p.add_argument(
        "--num-processes", type=_positive, default=None, help="multi-process run: processes in all"
    )
    p.add_argument(
        "--process-id", type=int, default=None, help="multi-process run: this process (0..N-1)"
    )
    return p


def build_parser(registry: dict[str, ModuleType]) -> argparse.ArgumentParser:
    """Top-level parser: ``run`` / ``config`` with a sub-command per experiment, ``report``, ``demo``."""
    parser = argparse.ArgumentParser(
        prog="dmeta", description="Demand forecasting and customer analytics under scarce data."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--debug", action="store_true", help="tracebacks instead of one-line errors"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run every pipeline on embedded synthetic data")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    demo.add_argument("--smoke", action="store_true", help="smallest sizes (seconds per pipeline)")
    val = sub.add_parser("validate", help="load and check a dataset without running anything")
    val.add_argument("--data", required=True, help="NAME:PATH or NAME (see `dmeta run X --help`)")
    rep = sub.add_parser("report", help="regenerate results.md and README tables from results.csv")
    rep.add_argument("dir", type=Path, help="a run folder or a folder of runs")
    rep.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if any file differs"
    )
    rep.add_argument(
        "--interim",
        action="store_true",
        help="print (write nothing) the report of a run in progress from its finished cells",
    )
    for command, help_text in (
        ("run", "run one experiment"),
        ("config", "print every config field"),
    ):
        cmd = sub.add_parser(command, help=help_text)
        exps = cmd.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
        for name, module in registry.items():
            _experiment_parser(exps, name, module, command)
    return parser


def run_demo(registry: dict[str, ModuleType], out: Path, smoke: bool) -> Path:
    """Runs each experiment's ``demo`` and writes ``out/report.md``."""
    out.mkdir(parents=True, exist_ok=True)
    sections = ["# dmeta demo\n", f"Command: `dmeta demo{' --smoke' if smoke else ''}`\n"]
    for name, module in registry.items():
        start = time.perf_counter()
        section = module.demo(out / name, smoke=smoke)
        sections.append(f"{section.strip()}\n\n_{name}: {time.perf_counter() - start:.1f} s_\n")
    path = out / "report.md"
    path.write_text("\n".join(sections))
    return path


def configure(module: ModuleType, args: argparse.Namespace):
    """The experiment's config for ``args``: size, then ``--data-parallel``, then ``--set``s."""
    cfg = module.get_config(smoke=args.smoke, size=args.size)
    flags = ["train.data_parallel=true"] if getattr(args, "data_parallel", False) else []
    return override(cfg, [*flags, *getattr(args, "assignments", [])])


def _methods(module: ModuleType, text: str | None) -> tuple[str, ...]:
    if not text:
        return tuple(module.METHODS)
    chosen = tuple(m.strip() for m in text.split(","))
    unknown = [m for m in chosen if m not in module.METHODS]
    if unknown:
        raise ConfigError(f"--methods: unknown {unknown}; choose from {list(module.METHODS)}")
    return chosen


def dispatch(registry: dict[str, ModuleType], args: argparse.Namespace, argv: list[str]) -> int:
    """Carries out the parsed command."""
    if args.command == "demo":
        print(f"wrote {run_demo(registry, args.out, args.smoke)}")
        return 0
    if args.command == "validate":
        print(datasets.validate(args.data))
        return 0
    if args.command == "report" and args.interim:
        print(report.interim(args.dir), end="")
        return 0
    if args.command == "report":
        changed = report.regenerate(args.dir, check=args.check)
        if args.check:
            for path in changed:
                print(f"differs from its regeneration: {path}")
            return 1 if changed else 0
        print(f"wrote {len(changed)} files")
        return 0
    module = registry[args.experiment]
    cfg = configure(module, args)
    if args.command == "config":
        print(format_config(cfg))
        return 0
    out = args.out or Path("runs") / args.experiment
    if args.workers > 1:
        return run_workers(argv, args.workers, out, fresh=args.fresh, multi=args.coordinator)
    if args.host_devices:
        parallel.use_host_devices(args.host_devices)
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    results = module.run(
        cfg,
        data=args.data,
        out=out,
        seeds=args.seeds,
        methods=_methods(module, args.methods),
        fresh=args.fresh,
        command=recorded_command(argv),
    )
    print(f"wrote {out / 'results.csv'} ({len(results)} rows)")
    return 0


def recorded_command(argv: list[str]) -> str:
    """The ``command.txt`` line of a run: its command without ``--fresh``, so the recorded
    command resumes the folder instead of wiping it, and without ``--workers N``, which does
    not change the results."""
    return "dmeta " + shlex.join(a for a in _without_workers(argv) if a != "--fresh")


def _without_workers(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for a in argv:
        if skip or a.startswith("--workers="):
            skip = False
            continue
        skip = a == "--workers"
        if not skip:
            kept.append(a)
    return kept


def run_workers(argv: list[str], workers: int, out: Path, *, fresh: bool, multi: str | None) -> int:
    """Runs ``argv`` (a ``dmeta run``) in ``workers`` processes that share ``out``, each
    pinned to a contiguous share of this process's cores (``DMETA_CPUS``; one share per
    core when they match, with XLA's CPU thread pool off). Logs the cells written every
    30 s; each process's log is ``out/workers/<i>.log``. Returns the largest exit status.

    Raises:
      ConfigError: with ``--fresh`` (each process would wipe the folder: start over once
        without ``--workers``), with ``--coordinator``, or more workers than cores.
    """
    if fresh or multi:
        flag = "--fresh" if fresh else "--coordinator"
        raise ConfigError(f"--workers cannot be combined with {flag}")
    cores = sorted(os.sched_getaffinity(0))
    if workers > len(cores):
        raise ConfigError(f"--workers {workers}: this process may use {len(cores)} cores")
    logs = out / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "experiments.cli", *_without_workers(argv)]
    shares = [tuple(int(c) for c in share) for share in np.array_split(cores, workers)]
    procs = []
    for i, share in enumerate(shares):
        env = dict(os.environ, OMP_NUM_THREADS=str(len(share)))
        env[CPUS_ENV] = ",".join(map(str, share))
        if len(share) == 1:
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen=false"
        with open(logs / f"{i}.log", "w") as log:
            procs.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
        logger.info("worker %d: pid %d on cores %s, log %s", i, procs[-1].pid, share,
                    logs / f"{i}.log")  # fmt: skip
    last, first = time.monotonic(), None  # first: (time, cells written) when first read
    while any(p.poll() is None for p in procs):
        time.sleep(1)
        if time.monotonic() - last >= 30:
            last = time.monotonic()
            with contextlib.suppress(FileNotFoundError):  # no cell order yet: loading data
                done, total = harness.progress(out)
                first = first or (last, done)
                rate = (done - first[1]) / max(last - first[0], 1e-9)  # cells per second
                left = f", about {(total - done) / rate / 3600:.1f} h left" if rate > 0 else ""
                logger.info("%s: %d of %d cells written%s", out, done, total, left)
    codes = [p.returncode for p in procs]
    if any(codes):
        print(f"error: worker exit statuses {codes}; see {logs}", file=sys.stderr)
    return max(codes)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dmeta`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if os.environ.get(CPUS_ENV):  # a worker of --workers: before JAX sizes its thread pools
        os.sched_setaffinity(0, {int(c) for c in os.environ[CPUS_ENV].split(",")})
    registry = discover()
    args = build_parser(registry).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    try:
        return dispatch(registry, args, argv)
    except USER_ERRORS as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
