"""Wall time of the README's RMLDP experiment with the scan GRU, the fused GRU, and the fused
GRU split over two host devices.

Issue #18 asks whether the meta-step speed-up carries over to the experiment. This runs
``dmeta run rmldp --data synthetic`` (the README command, default config) once per
contender, one after the other, each in a fresh output folder under ``--work``:
``scan`` (``--set model.gru_impl=scan``, autodiff of a ``lax.scan``, the GRU before the
fused kernel), ``fused`` (``dmeta.nn.fused_gru``, the default) and ``fused_2dev`` (the
default with ``--data-parallel --host-devices 2``: every batch split over two simulated CPU
devices, one per core, the fastest meta-step of ``maml_throughput``). Per contender: the
wall time of the whole command (``wall_s_<name>``, process start to exit) and the seconds
its meta-learning cells report (MAML, Meta-SGD and the RMLDP variants,
``meta_cells_s_<name>``). The contenders must compute the same thing: every metric of
``results.csv`` but the timings agrees with the first contender's within ``--rtol``
(``results_max_rel_diff``). The last lines are ``speedup_<name>_vs_<first>`` (the first
contender's wall time over each other's).

    .venv/bin/python experiments/benchmarks/rmldp_wall_time.py \
        --out experiments/results/benchmarks/rmldp_wall_time.txt
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.benchmarks.common import Report, load_average, machine

ROOT = Path(__file__).resolve().parents[2]
# contender name -> its command-line additions
CONTENDERS = {
    "scan": ["--set", "model.gru_impl=scan"],
    "fused": ["--set", "model.gru_impl=fused"],
    "fused_2dev": ["--set", "model.gru_impl=fused", "--data-parallel", "--host-devices", "2"],
}
META = ("MAML", "Meta-SGD", "RMLDP")  # method-name prefixes of the meta-learning cells


def run(name: str, out: Path, extra: list[str]) -> tuple[float, pd.DataFrame]:
    """Runs the experiment as contender ``name`` into a fresh ``out``; returns its wall time
    in seconds and its results."""
    shutil.rmtree(out, ignore_errors=True)
    dmeta = Path(sys.executable).with_name("dmeta")
    cmd = [str(dmeta), "run", "rmldp", "--data", "synthetic", "--out", str(out)]
    cmd += [*CONTENDERS[name], *extra]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start, pd.read_csv(out / "results.csv")


def max_rel_diff(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """Largest relative difference of the non-timing metric values of two runs."""
    keys = ["method", "seed", "group", "metric"]
    both = a.merge(b, on=keys, suffixes=("_a", "_b"), validate="one_to_one")
    both = both[both["metric"] != "seconds"]
    x, y = both["value_a"].to_numpy(float), both["value_b"].to_numpy(float)
    ok = np.isfinite(x) & np.isfinite(y)
    assert (np.isfinite(x) == np.isfinite(y)).all(), "the runs differ in which metrics are NaN"
    return float(np.max(np.abs(x[ok] - y[ok]) / np.maximum(np.abs(y[ok]), 1e-12)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/dmeta_rmldp_wall_time"))
    parser.add_argument("--rtol", type=float, default=1e-3, help="results agreement")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="--smoke runs of MAML and RMLDP, one seed, no sweep (tests)",
    )
    parser.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"comma-separated, the first is the reference; among {','.join(CONTENDERS)}",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    names = args.contenders.split(",")
    if len(names) < 2 or not set(names) <= set(CONTENDERS):
        parser.error(f"--contenders {args.contenders}: two or more of {','.join(CONTENDERS)}")
    report = Report()
    given = sys.argv[1:] if argv is None else argv
    report("command", " ".join(["python", "experiments/benchmarks/rmldp_wall_time.py", *given]))
    report("machine", machine())
    report("load_average_before", load_average())
    quick = ["--smoke", "--seeds", "1", "--methods", "MAML,RMLDP", "--set", "protocol.sweep=false"]
    extra = quick if args.quick else []
    walls, results = {}, {}
    for name in names:
        walls[name], results[name] = run(name, args.work / name, extra)
    report("load_average_after", load_average())
    for name in names:
        r = results[name]
        meta = r[(r["metric"] == "seconds") & r["method"].str.startswith(META)]
        report(f"wall_s_{name}", walls[name], "s")
        report(f"meta_cells_s_{name}", float(meta["value"].sum()), "s")
    first, others = names[0], names[1:]
    diff = max(max_rel_diff(results[name], results[first]) for name in others)
    report("results_max_rel_diff", diff)
    for name in others:
        report(f"speedup_{name}_vs_{first}", walls[first] / walls[name])
    report.save(args.out)
    return int(diff > args.rtol)


if __name__ == "__main__":
    sys.exit(main())
