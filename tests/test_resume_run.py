"""A ``dmeta run`` killed mid-run (SIGKILL) and started again with the same command ends
with the same results as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

EXPERIMENT = "sales_cnn"  # a quick smoke run with several cells
OPTIONS = ["--methods", "Naive,ARIMA,CNN,CNN+WD", "--set", "protocol.sweeps=false"]


def _command(out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.cli",
        "run",
        EXPERIMENT,
        "--smoke",
        "--seeds",
        "2",
        "--out",
        str(out),
        *OPTIONS,
    ]


def _results(out: Path) -> pd.DataFrame:
    df = pd.read_csv(out / "results.csv", dtype={"group": str})
    return df[df["metric"] != "seconds"].reset_index(drop=True)


def test_killed_run_resumes_to_the_same_results(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_command(whole), check=True, env=env, capture_output=True)
    n_cells = len(list((whole / "cells").glob("*.csv")))
    assert n_cells >= 2
    proc = subprocess.Popen(
        _command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600
    while not list((killed / "cells").glob("*.csv")) and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before its first cell was written"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 1 <= len(list((killed / "cells").glob("*.csv"))) < n_cells
    assert not (killed / "results.csv").exists()
    subprocess.run(_command(killed), check=True, env=env, capture_output=True)
    pd.testing.assert_frame_equal(_results(killed), _results(whole))
