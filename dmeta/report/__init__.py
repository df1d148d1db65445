"""Reports from data: a run's ``results.md`` and plots regenerated from its CSV files.

``render(run_dir)`` reads ``run_dir/results.csv`` and hands it to the renderer of its
experiment: the module ``dmeta.report.<experiment>`` when it exists (a function
``render(run_dir, results) -> str`` and optionally ``plots(run_dir, results) -> None``),
else the generic per-metric summary. Results READMEs include rendered runs between
markers, so no number in them is typed by hand::

    <!-- report: synthetic -->
    (replaced by the rendering of ./synthetic, without its title line)
    <!-- /report -->

A block whose path ends in ``.json`` holds a summary across runs instead
(``dmeta.report.glance``). ``regenerate(root)`` rewrites every run's ``results.md`` and
every marked README block under ``root``; ``regenerate(root, check=True)`` changes nothing
and lists what differs.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from types import ModuleType

import pandas as pd

from dmeta.report import convergence
from dmeta.report.tables import summary_markdown
from dmeta.train import harness
from dmeta.train.results import read_rows, summarize, validate_results

LINK = re.compile(r"\]\((?!https?:|/|#)([^)\s]+)\)")
BLOCK = re.compile(r"(<!-- report: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- /report -->)", re.S)


def read_results(run_dir: str | os.PathLike) -> pd.DataFrame:
    """``run_dir/results.csv``, validated (ids and groups kept as text); without it, the same
    rows rebuilt from the run's cells (``dmeta.train.harness.read_cells``)."""
    path = Path(run_dir) / "results.csv"
    if path.exists():
        return validate_results(read_rows(path))
    if (Path(run_dir) / harness.CELLS / harness.ORDER).exists():
        return harness.read_cells(run_dir)
    raise FileNotFoundError(f"{path}: no results.csv (is {run_dir} a run folder?)")


def run_dirs(root: Path) -> list[Path]:
    """The run folders under ``root``: those with a ``results.csv`` or a finished cell order."""
    found = {p.parent for p in root.rglob("results.csv")}
    for order in root.rglob(f"{harness.CELLS}/{harness.ORDER}"):
        done, total = harness.progress(order.parent.parent)
        if done == total:  # not a run in progress
            found.add(order.parent.parent)
    return sorted(found)


def _renderer(experiment: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"dmeta.report.{experiment}")
    except ModuleNotFoundError as err:
        if err.name != f"dmeta.report.{experiment}":
            raise
        return None


def generic(results: pd.DataFrame, title: str) -> str:
    """Title and one summary table (mean ± std over seeds) per experiment."""
    parts = [f"# {title}\n"]
    for experiment, part in summarize(results).groupby("experiment", sort=False):
        parts.append(f"## {experiment}\n\n{summary_markdown(part)}")
    return "\n".join(parts)


def _experiment(results: pd.DataFrame) -> str:
    return str(results["experiment"].iloc[0]) if len(results) else "results"


def _render(run_dir: Path, results: pd.DataFrame) -> str:
    experiment = _experiment(results)
    module = _renderer(experiment)
    if module is None:
        datasets = ", ".join(dict.fromkeys(results["dataset"].astype(str)))
        text = generic(results, f"{experiment} on {datasets}")
    else:
        text = module.render(run_dir, results)
    curves = convergence.section(run_dir, results["method"].unique())
    return f"{text.rstrip()}\n\n{curves}" if curves else text


def render(run_dir: str | os.PathLike) -> str:
    """The ``results.md`` text of a run folder, from its CSV files alone."""
    return _render(Path(run_dir), read_results(run_dir))


def interim(run_dir: str | os.PathLike) -> str:
    """The ``results.md`` text of a run in progress, from the cells it has written so far
    (nothing is written); the line under its title says how many of the run's cells that is."""
    done, total = harness.progress(run_dir)
    if done == 0:
        return f"Interim: 0 of {total} cells of {run_dir} written; nothing to report yet.\n"
    text = _render(Path(run_dir), harness.read_cells(run_dir, finished=True))
    title, _, body = text.partition("\n")
    note = (f"Interim: {done} of {total} cells written; methods, settings and seeds still to "
            "run are missing from every table below.")  # fmt: skip
    return f"{title}\n\n{note}\n{body}"


def write(run_dir: str | os.PathLike, *, plots: bool = True) -> Path:
    """Writes ``run_dir/results.md`` (and the experiment's plots unless ``plots=False``)."""
    run_dir = Path(run_dir)
    results = read_results(run_dir)
    module = _renderer(_experiment(results))
    if plots and module is not None and hasattr(module, "plots"):
        module.plots(run_dir, results)
    path = run_dir / "results.md"
    path.write_text(_render(run_dir, results))
    return path


def _relink(markdown: str, prefix: str) -> str:
    """Prefixes relative link targets (``](file.png)``) with the run folder's path."""
    return LINK.sub(lambda m: f"]({prefix.rstrip('/')}/{m[1]})", markdown)


def _fill_readme(readme: Path) -> str:
    from dmeta.report import glance  # it reads runs through this module

    def block(match: re.Match) -> str:
        path = readme.parent / match["path"]
        if path.suffix == ".json":
            return f"{match[1]}{glance.render(path).rstrip()}\n{match[4]}"
        body = render(path).split("\n", 1)[1].lstrip("\n")
        return f"{match[1]}{_relink(body, match['path']).rstrip()}\n{match[4]}"

    return BLOCK.sub(block, readme.read_text())


def regenerate(root: str | os.PathLike, *, check: bool = False) -> list[str]:
    """Rewrites (or with ``check``, compares) every rendered file under ``root``.

    Returns:
      With ``check``: the files whose committed text differs from the regeneration.
      Otherwise: the files written.
    """
    root = Path(root)
    changed = []
    for run_dir in run_dirs(root):
        md = run_dir / "results.md"
        if not check:
            changed.append(str(write(run_dir)))
        elif not md.exists() or md.read_text() != render(run_dir):
            changed.append(str(md))
    for readme in sorted(root.rglob("README.md")):
        if not BLOCK.search(readme.read_text()):
            continue
        text = _fill_readme(readme)
        if text != readme.read_text():
            changed.append(str(readme))
            if not check:
                readme.write_text(text)
        elif not check:
            changed.append(str(readme))
    return changed
