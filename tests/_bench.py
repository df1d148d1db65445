"""Shared by the benchmark tests: the repository root and a ``--quick`` benchmark runner."""

import subprocess
import sys
from pathlib import Path

from experiments.benchmarks.common import parse_report

ROOT = Path(__file__).resolve().parents[1]


def run_quick(script: str, tmp_path: Path, *extra: str) -> tuple[str, dict[str, tuple[float, str]]]:
    """Runs ``experiments/benchmarks/SCRIPT --quick [EXTRA...]``; checks that it succeeds and
    that ``--out`` holds what it printed; returns its output and parsed report."""
    out = tmp_path / "report.txt"
    proc = subprocess.run(
        [sys.executable, f"experiments/benchmarks/{script}", "--quick", *extra, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert out.read_text() == proc.stdout
    assert proc.stdout.splitlines()[0].startswith("command: ")
    return proc.stdout, parse_report(proc.stdout)
