"""The ``dmeta`` command: ``dmeta demo`` and ``dmeta run EXPERIMENT``.

Experiments are the modules of the ``experiments`` package that define
``run(data, out, *, smoke, seeds, **options)``; an optional ``add_arguments(parser)``
adds their own flags and an optional ``demo(out) -> str`` returns a Markdown
section for ``dmeta demo``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import shlex
import sys
import time
from pathlib import Path
from types import ModuleType

import experiments


def discover() -> dict[str, ModuleType]:
    """Experiment modules by name (those defining ``run``), sorted."""
    found = {}
    for info in pkgutil.iter_modules(experiments.__path__):
        if info.ispkg:
            continue
        module = importlib.import_module(f"experiments.{info.name}")
        if callable(getattr(module, "run", None)):
            found[info.name] = module
    return dict(sorted(found.items()))


def build_parser(registry: dict[str, ModuleType]) -> argparse.ArgumentParser:
    """Top-level parser with one ``run`` sub-command per experiment."""
    parser = argparse.ArgumentParser(
        prog="dmeta", description="Demand forecasting and customer analytics under scarce data."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run every pipeline on embedded synthetic data")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    demo.add_argument("--smoke", action="store_true", help="smallest sizes (seconds per pipeline)")
    run = sub.add_parser("run", help="run one experiment")
    exps = run.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    for name, module in registry.items():
        doc = (module.__doc__ or name).strip().splitlines()[0]
        p = exps.add_parser(name, help=doc, description=module.__doc__)
        p.add_argument(
            "--data",
            default="synthetic",
            help="synthetic | NAME:PATH (e.g. table:my.csv, walmart:../shared/data/walmart_recruiting)",
        )
        p.add_argument("--out", type=Path, default=None, help="output folder (default runs/NAME)")
        p.add_argument(
            "--smoke", action="store_true", help="tiny sizes for a quick end-to-end check"
        )
        p.add_argument("--seeds", type=int, default=1, help="number of seeds (0..N-1)")
        if hasattr(module, "add_arguments"):
            module.add_arguments(p)
    return parser


def run_demo(registry: dict[str, ModuleType], out: Path, smoke: bool) -> Path:
    """Runs each experiment's ``demo`` and writes ``out/report.md``."""
    out.mkdir(parents=True, exist_ok=True)
    sections = ["# dmeta demo\n", f"Command: `dmeta demo{' --smoke' if smoke else ''}`\n"]
    for name, module in registry.items():
        if not hasattr(module, "demo"):
            continue
        start = time.perf_counter()
        section = module.demo(out / name, smoke=smoke)
        sections.append(f"{section.strip()}\n\n_{name}: {time.perf_counter() - start:.1f} s_\n")
    report = out / "report.md"
    report.write_text("\n".join(sections))
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dmeta`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    registry = discover()
    args = build_parser(registry).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    if args.command == "demo":
        print(f"wrote {run_demo(registry, args.out, args.smoke)}")
        return 0
    options = {k: v for k, v in vars(args).items() if k not in {"command", "experiment", "verbose"}}
    options["out"] = options["out"] or Path("runs") / args.experiment
    options["command"] = "dmeta " + shlex.join(argv)
    results = registry[args.experiment].run(**options)
    print(f"wrote {options['out'] / 'results.csv'} ({len(results)} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
