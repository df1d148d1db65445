"""GPU table: MAML and Sales CNN throughput, JAX on the GPU against PyTorch CUDA, in one script.

Runs, each as a subprocess with a time cap inside one overall budget (default 540 s, so the
whole script ends within one 10-minute device call; the MAML run at 32 tasks may take 360 s
of it, since its ``torch.compile`` peer, compiled for real since 2026-11-29, took 203 s to
compile on a 2-core CPU):

1. ``maml_throughput.py`` at the benchmark shape (32 tasks, 16 + 16 samples, S 30, F 48,
   H 128, one inner step, second order): dmeta variants ``engine_vmap_prec_highest`` and
   ``engine_scan_vmap_prec_highest`` (full f32, like torch's default; built first, so their
   warm-up is a cold compile, and the only ones ranked against torch), then ``engine_vmap`` and
   ``engine_scan_vmap`` (JAX's default matmul precision, TF32 on recent GPUs); torch peers task loop (``nn.GRU``, cuDNN off:
   its RNN has no double backward), cell loop, ``torch.func`` and ``torch.func`` +
   ``torch.compile``;
2. ``sales_cnn_throughput.py`` at paper size (dmeta f32 and bf16, torch eager and compiled);
3. ``maml_throughput.py`` at the paper's meta-batch of 128 tasks (cell loop dropped; the compiled
   peer dropped when the budget left cannot hold its compile, as measured at 32 tasks).

Every contender runs with ``--keep-going``: one that fails is a row with its error, the rest of
the table stands. Writes a Markdown table (device names from ``torch.cuda.get_device_name`` and
``jax.devices()``, versions, per contender steady-state steps/s, warm-up seconds, time to 200
steps and ratios to the best torch peer) to ``--out``, with each run's raw output appended and
also saved beside it (``<out stem>_<run>.txt``).

    PYTHONPATH=. python3 experiments/benchmarks/gpu_table.py --out $OUT/gpu_table.md

``--device cpu --quick`` runs the same at tiny shapes on the CPU (a check of the script only).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments.benchmarks.common import parse_report  # noqa: E402

MAML_VARIANTS = (
    "engine_vmap_prec_highest,engine_scan_vmap_prec_highest,engine_vmap,engine_scan_vmap"
)
PROBE = """
import importlib.metadata as md, json, platform
info = {"python": platform.python_version()}
for dist in ("torch", "jax", "jaxlib", "flax", "optax", "numpy"):
    try:
        info[dist] = md.version(dist)
    except Exception as err:
        info[dist] = f"? ({err})"
try:
    import torch
    info["torch_cuda"] = str(torch.version.cuda)
    info["cudnn"] = str(torch.backends.cudnn.version())
    info["torch_device"] = (
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    )
except Exception as err:
    info["torch_device"] = f"error: {err!r}"
try:
    import jax
    info["jax_devices"] = [f"{d} ({d.device_kind})" for d in jax.devices()]
except Exception as err:
    info["jax_devices"] = f"error: {err!r}"
print(json.dumps(info))
"""


@dataclasses.dataclass
class Run:
    """One benchmark subprocess: its command, cap, and what came of it."""

    name: str
    title: str
    args: list[str]
    cap: float
    note: str = ""
    seconds: float = 0.0
    status: str = "not run"
    text: str = ""
    stderr: str = ""


def run(r: Run, *, deadline: float, out_dir: Path, stem: str, env: dict) -> None:
    """Runs ``r`` (killing its process group at its cap or at the deadline); fills its fields."""
    limit = min(r.cap, deadline - time.monotonic())
    if limit < 20:
        r.status = "skipped: no time left in the budget"
        return
    out, err = out_dir / f"{stem}_{r.name}.txt", out_dir / f"{stem}_{r.name}.stderr.txt"
    command = [sys.executable, *r.args]
    print(f"[gpu_table] {' '.join(command)} (cap {limit:.0f} s)", flush=True)
    start = time.monotonic()
    with out.open("w") as fo, err.open("w") as fe:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=fo, stderr=fe, start_new_session=True
        )
        try:
            code = proc.wait(timeout=limit)
            r.status = "ok" if code == 0 else f"exit {code}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            r.status = f"killed at its cap of {limit:.0f} s (partial output)"
    r.seconds = time.monotonic() - start
    r.text, r.stderr = out.read_text(), err.read_text()
    if r.status != "ok":
        tail = [line for line in r.stderr.strip().splitlines() if line.strip()][-1:]
        r.status += f": {tail[0][:300]}" if tail else ""
    print(r.text, flush=True)
    print(f"[gpu_table] {r.name}: {r.status} in {r.seconds:.0f} s", flush=True)


def probe(env: dict) -> dict:
    """Versions and device names, from a subprocess (this process holds no GPU)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", PROBE],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except Exception as err:  # the table is written anyway
        return {"error": repr(err)}


def _fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def rows(r: Run) -> list[str]:
    """The table rows of one run: one per contender (errors included)."""
    report = parse_report(r.text)
    rates = {
        k.removesuffix("_steps_per_s"): v
        for k, (v, unit) in report.items()
        if unit == "steps/s" and (k.startswith("dmeta") or k.startswith("torch"))
    }
    torch_rates = {k: v for k, v in rates.items() if k.startswith("torch")}
    t200 = {k: report.get(f"{k}_time_to_200_s", (None,))[0] for k in rates}
    best_rate = max(torch_rates.values(), default=None)
    torch_t200 = [t200[k] for k in torch_rates if t200[k] is not None]
    best_t200 = min(torch_t200, default=None)
    out = []
    for name, rate in rates.items():
        kind = name.removeprefix("torch_second_order_")
        check = report.get(f"meta_grad_max_rel_diff_{kind}") or report.get(
            "torch_compile_forward_max_rel_diff" if name.startswith("torch_compile") else ""
        )
        if check is None and name.startswith("torch"):
            check = report.get("forward_max_rel_diff")
        cells = [
            r.title,
            f"`{name}`",
            _fmt(rate),
            _fmt(report.get(f"{name}_warmup_s", (None,))[0], 3),
            _fmt(t200[name], 4),
            _fmt(rate / best_rate if best_rate else None, 3),
            _fmt(best_t200 / t200[name] if best_t200 and t200[name] else None, 3),
            "" if check is None else f"{check[0]:.1e}",
        ]
        out.append("| " + " | ".join(cells) + " |")
    for line in r.text.splitlines():
        name, sep, message = line.partition("_error: ")
        if sep and " " not in name:
            out.append(f"| {r.title} | `{name}` | failed | | | | | {message.replace('|', '/')} |")
    if r.status != "ok":
        out.append(f"| {r.title} | (run) | {r.status.replace('|', '/')} | | | | | |")
    return out


def summary(r: Run) -> str:
    """The run's ratio lines, e.g. ``speedup_vs_best_torch 1.2, time_to_200_vs_best_torch 3``."""
    report = parse_report(r.text)
    names = (
        "speedup_vs_best_torch",
        "time_to_200_vs_best_torch",
        "speedup_vs_torch_loop",
        "speedup_vs_torch",
        "speedup_bf16_vs_best_torch",
        "meta_grad_second_vs_first_order_rel_diff",
    )
    found = [f"{n} {report[n][0]:.3g}" for n in names if n in report]
    extra = [
        line for line in r.text.splitlines() if line.startswith(("best_", "precision: ", "shape: "))
    ]
    text = ", ".join(found) or "no ratios (see the raw output)"
    return f"- **{r.title}** ({r.status}, {r.seconds:.0f} s{'; ' + r.note if r.note else ''}): " + (
        text + "".join(f"; {e}" for e in extra)
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line of ``main``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the Markdown table")
    parser.add_argument("--budget", type=float, default=540, help="seconds for all runs")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="torch device")
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a check of the script)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile peers")
    parser.add_argument("--maml-variants", default=MAML_VARIANTS, help="dmeta variants")
    parser.add_argument("--threads", type=int, default=4, help="torch threads in the benchmarks")
    return parser.parse_args(argv)


def subprocess_env(device: str) -> dict:
    """The environment of the benchmark subprocesses (this checkout on ``PYTHONPATH``)."""
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
        XLA_PYTHON_CLIENT_PREALLOCATE="false",  # JAX and torch share the GPU's memory
    )
    if device == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
    return env


def plan_runs(args: argparse.Namespace) -> list[Run]:
    """The three benchmark runs (MAML at 32 tasks, Sales CNN, MAML at 128 tasks)."""
    common = ["--device", args.device, "--keep-going", "--threads", str(args.threads)]
    common += ["--quick"] if args.quick else []
    compile_flag = ["--no-compile"] if args.no_compile else []
    maml = [
        "experiments/benchmarks/maml_throughput.py",
        *common,
        "--variants",
        args.maml_variants,
        "--no-first-order",
        "--no-flops",
    ]
    runs = [
        Run(
            "maml_T32",
            "MAML, 32 tasks",
            [*maml, "--tasks", "32", "--repeats", "5", *compile_flag],
            cap=360,
        ),
        Run(
            "sales_cnn",
            "Sales CNN, paper size",
            ["experiments/benchmarks/sales_cnn_throughput.py", *common, "--repeats", "20"]
            + compile_flag,
            cap=120,
        ),
        Run(
            "maml_T128",
            "MAML, 128 tasks",
            [*maml, "--tasks", "128", "--repeats", "3", "--peers", "loop,func,func_compile"]
            + compile_flag,
            cap=400,
        ),
    ]
    if args.quick:  # a check of the script on a shared CPU: only the overall budget
        for r in runs:
            r.cap = args.budget
    return runs


def drop_compile_if_late(r: Run, first: Run, deadline: float) -> None:
    """Adds ``--no-compile`` to ``r`` unless the compiled peer's compile (as measured in
    ``first``, plus half) fits the time left before ``deadline``."""
    measured = parse_report(first.text).get("torch_second_order_func_compile_warmup_s")
    left = deadline - time.monotonic()
    need = 1.5 * (measured[0] if measured else 120) + 90
    if left < need:
        r.args.append("--no-compile")
        r.note = f"torch.compile peer skipped: {left:.0f} s left, its compile needs ~{need:.0f}"


def header(args, argv, info: dict, date: datetime.datetime, seconds: float) -> list[str]:
    """The table's title, command, date, devices, versions and notes, and its head."""
    return [
        "# GPU benchmarks: dmeta (JAX) against PyTorch on one GPU",
        "",
        f"- command: `PYTHONPATH=. python3 experiments/benchmarks/gpu_table.py "
        f"{' '.join(sys.argv[1:] if argv is None else argv)}`",
        f"- date: {date:%Y-%m-%d %H:%M} UTC; wall time {seconds:.0f} s",
        f"- torch device: {info.get('torch_device', '?')} (torch {info.get('torch', '?')}, "
        f"CUDA {info.get('torch_cuda', '?')}, cuDNN {info.get('cudnn', '?')}; torch on "
        f"`{args.device}`)",
        f"- jax devices: {info.get('jax_devices', '?')} (jax {info.get('jax', '?')}, jaxlib "
        f"{info.get('jaxlib', '?')}, flax {info.get('flax', '?')}, optax {info.get('optax', '?')})",
        f"- python {info.get('python', '?')}, numpy {info.get('numpy', '?')}"
        + (f"; probe error: {info['error']}" if "error" in info else ""),
        "- steps/s: median of interleaved repeats after one warm-up round; warm-up: build, "
        "compile and first step; time to 200: warm-up + 199 steady-state steps; vs best torch: "
        "steps/s over the fastest torch peer's, and the best torch time to 200 over this "
        "contender's (above 1: ahead); check: relative difference of the first meta-gradient "
        "(MAML) or eval-mode output (Sales CNN) from dmeta's, at full f32 precision.",
        "- precision: JAX's default matmul precision on a GPU may use TF32 "
        "(`_prec_highest`: full f32); torch's matmuls are f32 unless allowed (see each run's "
        "`precision:` line); Sales CNN's cuDNN convolutions may use TF32 (torch's default).",
        "",
        "| benchmark | contender | steps/s | warm-up s | time to 200 s | steps/s vs best torch "
        "| time-to-200 vs best torch | check |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]


def body(runs: list[Run]) -> list[str]:
    """The table's rows, the ratios and each run's raw output (stderr too where it failed)."""
    lines = []
    for r in runs:
        lines += rows(r)
    lines += ["", "## Ratios", "", *(summary(r) for r in runs), "", "## Raw outputs"]
    for r in runs:
        lines += ["", f"### {r.title} (`{r.name}`)", "", f"`python {' '.join(r.args)}`", ""]
        lines += ["```", r.text.rstrip() or "(no output)", "```"]
        if r.status != "ok" and r.stderr.strip():
            lines += ["", "stderr (last 40 lines):", "", "```"]
            lines += [*r.stderr.strip().splitlines()[-40:], "```"]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmarks within the budget and writes the table; 1 if any run failed."""
    args = parse_args(argv)
    started = time.monotonic()
    deadline = started + args.budget
    date = datetime.datetime.now(datetime.UTC)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    env = subprocess_env(args.device)
    info = probe(env)
    print(f"[gpu_table] {json.dumps(info)}", flush=True)
    runs = plan_runs(args)
    for r in runs:
        if r.name == "maml_T128" and not args.no_compile:
            drop_compile_if_late(r, runs[0], deadline)
        run(r, deadline=deadline, out_dir=args.out.parent, stem=args.out.stem, env=env)
    lines = header(args, argv, info, date, time.monotonic() - started) + body(runs)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[: lines.index("## Raw outputs")]), flush=True)
    return 0 if all(r.status == "ok" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
