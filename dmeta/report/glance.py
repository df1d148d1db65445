"""README summary tables drawn from several runs, regenerated like every report block.

A results README's "At a glance" table compares methods across runs (say, STMP from a
second tuning round against MAML from the first). Its spec is a JSON file beside the
README, named in a block whose path ends in ``.json``::

    <!-- report: glance.json -->
    (replaced by the table the spec describes)
    <!-- /report -->

The spec names its experiment and rows; ``dmeta.report.<experiment>.glance(spec, base)``
renders it (``base``: the spec's folder, against which run paths are resolved). A row's
``runs`` are layered (``layered``): the first run's rows, then each later run's rows in place
of the methods it has.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from dmeta.report import read_results


def layered(runs: Sequence[Path]) -> pd.DataFrame:
    """The first run's rows with each later run's rows in place of the methods it has."""
    rows = read_results(runs[0])
    for run in runs[1:]:
        over = read_results(run)
        rows = pd.concat([rows[~rows["method"].isin(set(over["method"]))], over])
    return rows.reset_index(drop=True)


def render(spec_path: Path) -> str:
    """The markdown of the glance spec at ``spec_path`` (a ``.json`` file).

    Raises:
      ValueError: the spec lacks ``experiment`` or its experiment has no ``glance``.
    """
    spec = json.loads(spec_path.read_text())
    experiment = spec.get("experiment")
    module = importlib.import_module(f"dmeta.report.{experiment}") if experiment else None
    if module is None or not hasattr(module, "glance"):
        raise ValueError(f"{spec_path}: experiment {experiment!r} has no glance renderer")
    return module.glance(spec, spec_path.parent)
