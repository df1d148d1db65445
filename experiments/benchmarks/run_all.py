"""Every side-by-side benchmark in one go, summarized in one Markdown table.

Each benchmark runs as a subprocess of this script (CPU only, ``JAX_PLATFORMS=cpu``); its full
output goes to ``<out dir>/benchmarks/<name>.txt`` and its figures are read back with
``parse_report``. The table at ``--out`` gives the machine, library versions, the date, the load
averages before and after, one row per comparison (dmeta's figure, the peer's, their ratio and
the target where issue 8 or the method's issue states one) and the exact commands. When JAX sees
a GPU, the benchmarks that run JAX code run a second time with JAX on the GPU (peers stay on
the CPU) and fill a second table; their outputs go to ``<name>_gpu.txt``.

    .venv/bin/python experiments/benchmarks/run_all.py --out experiments/results/benchmarks.md
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from experiments.benchmarks.common import load_average, machine, parse_report

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
VERSIONS = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "torch",
    "scikit-learn",
    "gensim",
    "xgboost",
    "prefixspan",
    "xlogit",
)
Report = dict[str, tuple[float, str]]


@dataclasses.dataclass(frozen=True)
class Row:
    """One table row: dmeta's figure and the peer's (text with unit), their ratio (None where
    there is no peer), a note."""

    dmeta: str
    peer_figure: str
    ratio: float | None
    note: str = ""


def _number(pattern: str, text: str) -> float:
    """The number captured by ``pattern`` in a benchmark's free-text line."""
    match = re.search(pattern, text)
    if match is None:
        raise ValueError(f"no match for {pattern!r} in the benchmark output")
    return float(match.group(1))


def _named(text: str, name: str) -> str:
    """The text value of a ``name: value`` line (e.g. ``best_torch_second_order: func``)."""
    match = re.search(rf"^{name}: (\S+)$", text, re.MULTILINE)
    if match is None:
        raise ValueError(f"no {name!r} line in the benchmark output")
    return match.group(1)


def _maml(report: Report, text: str, gpu: bool) -> Row:
    """The best full-f32 engine variant against the best second-order torch peer."""
    best, peer = _named(text, "best_dmeta_second_order"), _named(text, "best_torch_second_order")
    ours, theirs = report[f"dmeta_second_order_{best}"][0], report[f"torch_second_order_{peer}"][0]
    note = (
        f"{best} vs torch {peer}; time to 200 steps {report['time_to_200_vs_best_torch'][0]:.3g}x;"
        f" {report['dmeta_share_of_matmul'][0]:.3g}% of the matmul rate; meta-grad rel. diff "
        f"{report['meta_grad_max_rel_diff'][0]:.1e}"
    )
    return Row(f"{ours:.3g} steps/s", f"{theirs:.3g} steps/s", report["speedup_vs_best_torch"][0],
               note)  # fmt: skip


def _sales_cnn(report: Report, text: str, gpu: bool) -> Row:
    """dmeta against the faster of eager and compiled torch."""
    dmeta = report["dmeta_gpu_samples_per_s" if gpu else "dmeta_cpu_samples_per_s"][0]
    peer = _named(text, "best_torch")
    torch = report[f"{peer}_cpu_samples_per_s"][0]
    note = f"torch peer {peer}; forward rel. diff {report['forward_max_rel_diff'][0]:.1e}"
    return Row(f"{dmeta:.4g} samples/s", f"{torch:.4g} samples/s", dmeta / torch, note)


def _prefixspan(report: Report, text: str, gpu: bool) -> Row:
    ours = report["dmeta.mining.prefixspan"][0]
    theirs = _number(r"prefixspan \(PyPI[^)]*\): ([\d.]+) s", text)
    note = re.search(r"identical patterns and supports: (\w+)", text).group(0)
    return Row(f"{ours:.3g} s", f"{theirs:.3g} s", theirs / ours, note)


def _logit(report: Report, text: str, gpu: bool) -> Row:
    warm = _number(r"([\d.]+) s warm", text)
    theirs = _number(r"xlogit MultinomialLogit: ([\d.]+) s", text)
    note = "max |beta diff| " + re.search(r"max \|beta diff\| (\S+)", text).group(1)
    return Row(f"{warm:.3g} s (warm)", f"{theirs:.3g} s", theirs / warm, note)


def _kmeans(report: Report, text: str, gpu: bool) -> Row:
    ours, theirs = report["dmeta_fit_s"][0], report["sklearn_fit_s"][0]
    note = f"inertia ratio {report['inertia_ratio_vs_sklearn'][0]:.4f}"
    return Row(f"{ours:.3g} s/fit", f"{theirs:.3g} s/fit", theirs / ours, note)


def _deepwalk(report: Report, text: str, gpu: bool) -> Row:
    ours, theirs = report["dmeta_train_s"][0], report["gensim_train_s"][0]
    note = (
        f"community accuracy {report['dmeta_community_accuracy'][0]:.3f} vs "
        f"{report['gensim_community_accuracy'][0]:.3f}"
    )
    return Row(f"{ours:.3g} s", f"{theirs:.3g} s", theirs / ours, note)


def _size(report: Report, pattern: str, pick=max) -> int:
    """The largest (``pick=max``) size captured by ``pattern``'s group among the report's names."""
    return pick(int(m.group(1)) for k in report if (m := re.fullmatch(pattern, k)))


def _rmldp_segments(report: Report, text: str, gpu: bool) -> Row:
    """No peer: the largest meta-batch's segments/s, ``vmap`` against ``lax.map``."""
    sizes = r"vmap_T(\d+)_segments_per_s"
    t, smallest = _size(report, sizes), _size(report, sizes, min)
    vmap, lmap = report[f"vmap_T{t}_segments_per_s"][0], report[f"map_T{t}_segments_per_s"][0]
    cost = {k.rpartition("_")[2]: v for k, (v, _) in report.items() if "per_segment_cost" in k}
    note = (
        f"T={t}; ms per segment at T={t} over T={smallest}: vmap {cost['vmap']:.3g}, "
        f"map {cost['map']:.3g}"
    )
    return Row(f"{vmap:.4g} segments/s (vmap)", f"{lmap:.4g} segments/s", vmap / lmap, note)


def _memory(report: Report, text: str, gpu: bool) -> Row:
    """No peer: peak memory of the meta-step at the most inner steps, remat against plain."""
    n = _size(report, r"steps(\d+)_remat_xla_peak_mib")
    remat, plain = (
        report[f"steps{n}_remat_xla_peak_mib"][0],
        report[f"steps{n}_plain_xla_peak_mib"][0],
    )
    seconds = report[f"steps{n}_remat_step_s"][0] / report[f"steps{n}_plain_step_s"][0]
    note = f"{n} inner steps; remat step time / plain {seconds:.3g}"
    return Row(f"{remat:.4g} MiB (remat)", f"{plain:.4g} MiB", plain / remat, note)


def _scale(report: Report, text: str, gpu: bool) -> Row:
    """No peer: the largest C2M and frame-building sizes' throughput and peak memory."""
    users = _size(report, r"c2m_(\d+)_peak_rss_mib")
    pairs = _size(report, r"frames_(\d+)_peak_rss_mib")
    c2m = f"c2m_{users}_"
    dmeta = (
        f"{report[c2m + 'encode_sequences_per_s'][0]:.3g} sequences/s encoded at {users:,} users; "
        f"{report[f'frames_{pairs}_frames_per_s'][0]:.3g} frames/s at {pairs:,} pairs"
    )
    note = (
        f"peak RSS {report[c2m + 'peak_rss_mib'][0]:.0f} MiB (C2M), "
        f"{report[f'frames_{pairs}_peak_rss_mib'][0]:.0f} MiB (frames); table below"
    )
    return Row(dmeta, "", None, note)


def _multiprocess(report: Report, text: str, gpu: bool) -> Row:
    """No peer: 2 processes x 1 CPU device against 1 process x 1 device, same meta-batch."""
    two, one = report["steps_per_s_2proc_1dev"][0], report["steps_per_s_1proc_1dev"][0]
    note = (
        f"1 process x 2 devices {report['steps_per_s_1proc_2dev'][0]:.3g} steps/s; "
        f"meta-loss rel. diff {report['loss_max_rel_diff'][0]:.1e}"
    )
    ratio = report["speedup_2proc_vs_1proc"][0]
    return Row(f"{two:.3g} steps/s (2 processes)", f"{one:.3g} steps/s", ratio, note)


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A benchmark script and how to read its report.

    Attributes:
      name: script stem in ``experiments/benchmarks``.
      peer: the library compared against.
      ratio: what the ratio column holds (the benchmark's own ratio line where it has one).
      read: ``(report, text, gpu) -> Row``.
      quick: arguments for ``--quick`` (tiny shapes).
      target: the target the issues state, or "".
      met: ``Row -> bool`` for the target, or None.
      uses_jax: whether a GPU run means anything.
      detail: copy the report's own Markdown tables into the summary.
      cpu_args: arguments of a CPU run (not of the GPU one).
    """

    name: str
    peer: str
    ratio: str
    read: Callable[[Report, str, bool], Row]
    quick: tuple[str, ...] = ("--quick",)
    target: str = ""
    met: Callable[[Row], bool] | None = None
    uses_jax: bool = True
    detail: bool = False
    cpu_args: tuple[str, ...] = ()


BENCHMARKS = (
    Benchmark(
        "maml_throughput",
        "best PyTorch peer (task loop, torch.func, torch.func + torch.compile)",
        "speedup_vs_best_torch",
        _maml,
        ("--quick", "--repeats", "1"),
        ">= 1.5x",
        lambda r: r.ratio >= 1.5,
        cpu_args=("--host-devices", str(os.cpu_count() or 1)),
    ),
    Benchmark(
        "sales_cnn_throughput",
        "best PyTorch peer (eager, torch.compile)",
        "speedup_vs_best_torch",
        _sales_cnn,
        ("--quick", "--repeats", "1"),
        ">= 1.2x",
        lambda r: r.ratio >= 1.2,
    ),
    Benchmark(
        "prefixspan_throughput",
        "prefixspan (PyPI)",
        "speedup_vs_prefixspan",
        _prefixspan,
        ("--sequences", "3000", "--length", "10", "--symbols", "50", "--support", "0.02"),
        ">= 10x",
        lambda r: r.ratio >= 10,
        uses_jax=False,
    ),
    Benchmark(
        "logit_fit",
        "xlogit",
        "speedup_vs_xlogit",
        _logit,
        ("--situations", "20000", "--alternatives", "5", "--attributes", "5"),
        "dmeta ~1 s",
        lambda r: float(r.dmeta.split()[0]) <= 1.0,
    ),
    Benchmark("kmeans_vs_sklearn", "scikit-learn KMeans", "speedup_vs_sklearn", _kmeans),
    Benchmark("deepwalk_vs_gensim", "gensim Word2Vec", "speedup_vs_gensim", _deepwalk),
    Benchmark(
        "rmldp_segments",
        "dmeta with lax.map (no peer)",
        "vmap over map",
        _rmldp_segments,
        detail=True,
    ),
    Benchmark(
        "memory_inner_steps", "dmeta without remat (no peer)", "memory saved", _memory, detail=True
    ),
    Benchmark("scale_throughput", "(no peer)", "", _scale, detail=True),
    Benchmark(
        "multiprocess_throughput",
        "dmeta, 1 process x 1 CPU device (no peer)",
        "2 processes over 1 process",
        _multiprocess,
        uses_jax=False,  # its processes run on the CPU whatever JAX sees
    ),
)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One benchmark run: its command, output file, and row (or why there is none)."""

    bench: Benchmark
    command: list[str]
    path: Path
    row: Row | None
    error: str = ""


def reused(bench: Benchmark, path: Path) -> Outcome:
    """The row of an output saved by an earlier run of ``bench`` (``--reuse``); its command is
    the output's own ``command:`` line."""
    text = path.read_text()
    match = re.search(r"^command: python (.+)$", text, re.MULTILINE)
    command = [sys.executable, *(match.group(1).split() if match else [f"{bench.name}.py"])]
    row = bench.read(parse_report(text), text, False)
    note = f"{row.note}; not rerun here: the linked output of an earlier run"
    return Outcome(bench, command, path, dataclasses.replace(row, note=note))


def run_one(bench: Benchmark, *, quick: bool, gpu: bool, out_dir: Path, timeout: float) -> Outcome:
    """Runs one benchmark script, saves its output and reads its row."""
    script = HERE / f"{bench.name}.py"
    command = [sys.executable, str(script.relative_to(ROOT)), *(bench.quick if quick else ())]
    command += [] if gpu else list(bench.cpu_args)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if not gpu:
        env["JAX_PLATFORMS"] = "cpu"
    path = out_dir / f"{bench.name}{'_gpu' if gpu else ''}.txt"
    print(f"running {' '.join(command)}{' (JAX on GPU)' if gpu else ''}", flush=True)
    try:
        proc = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as err:
        partial = err.stdout or ""
        path.write_text(partial.decode() if isinstance(partial, bytes) else partial)
        return Outcome(bench, command, path, None, f"timed out after {timeout:.0f} s")
    path.write_text(proc.stdout + (f"\n--- stderr ---\n{proc.stderr}" if proc.returncode else ""))
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no stderr"])[-1]
        return Outcome(bench, command, path, None, f"exit {proc.returncode}: {last}")
    try:
        row = bench.read(parse_report(proc.stdout), proc.stdout, gpu)
    except (KeyError, ValueError, AttributeError, ZeroDivisionError) as err:
        return Outcome(bench, command, path, None, f"unreadable report ({err!r})")
    return Outcome(bench, command, path, row)


def probe_jax_device() -> str:
    """JAX's default platform and device kind, probed in a subprocess (so that this process
    holds no GPU memory), e.g. ``cpu cpu`` or ``gpu NVIDIA H100 80GB HBM3``."""
    code = "import jax; d = jax.devices()[0]; print(d.platform, d.device_kind)"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return proc.stdout.strip()


def machine_with_ram() -> str:
    """CPU model, core count and OS (``sales_cnn_throughput.machine``) and the RAM."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{machine()}, {ram:.1f} GiB RAM"


def versions() -> str:
    """Installed versions of Python and of dmeta's and the peers' libraries."""
    found = [f"python {platform.python_version()}"]
    for dist in VERSIONS:
        try:
            found.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{dist} (not installed)")
    return ", ".join(found)


GPU_TABLE = ROOT / "experiments/results/benchmarks/gpu/gpu_table.md"


def table(outcomes: list[Outcome], out: Path, *, quick: bool) -> list[str]:
    """Markdown table rows, one per benchmark; targets are judged only at full size."""
    lines = [
        "| benchmark | dmeta | peer | peer figure | ratio | value | target | met | notes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        b = o.bench
        cells = [f"[{b.name}]({o.path.relative_to(out.parent).as_posix()})"]
        if o.row is None:
            cells += ["failed", b.peer, "", b.ratio, "", b.target, "", o.error]
        else:
            met = "" if b.met is None or quick else ("yes" if b.met(o.row) else "no")
            ratio = "" if o.row.ratio is None else f"{o.row.ratio:.3g}"
            cells += [o.row.dmeta, b.peer, o.row.peer_figure, b.ratio, ratio]
            cells += [b.target, met, o.row.note]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def detail_tables(outcomes: list[Outcome]) -> list[str]:
    """The Markdown tables of the benchmarks marked ``detail``, each under its name."""
    lines = []
    for o in outcomes:
        if o.bench.detail and o.row is not None:
            lines += ["", f"### {o.bench.name}"]
            previous = ""
            for line in o.path.read_text().splitlines():
                if line.startswith("|"):
                    lines += [""] if not previous.startswith("|") else []
                    lines.append(line)
                previous = line
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, for tests")
    parser.add_argument("--only", default=None, help="comma-separated benchmark names")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments/results/benchmarks.md")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark")
    parser.add_argument(
        "--reuse",
        default="",
        help="comma-separated benchmarks whose saved CPU output (<out dir>/benchmarks/<name>.txt, "
        "from their own later run) is read instead of rerun; the table says so",
    )
    args = parser.parse_args(argv)
    known = [b.name for b in BENCHMARKS]
    args.names = known if args.only is None else args.only.split(",")
    unknown = sorted(set(args.names) - set(known))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; known: {sorted(known)}")
    args.reuse = set(filter(None, args.reuse.split(",")))
    return args


def header(command: str, started, device: str, loads: tuple, reuse: set[str]) -> list[str]:
    """The report's title and run facts (command, date, machine, versions, load)."""
    return [
        "# Side-by-side benchmarks",
        "",
        f"- command: `{command}`",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine_with_ram()}; JAX default device: {device}",
        f"- versions: {versions()}",
        f"- load average (1/5/15 min) before: {loads[0]}; after: {loads[1]}",
        *(
            [
                f"- not rerun (--reuse): {', '.join(sorted(reuse))}: rows read from their saved "
                "outputs, each with its own date, machine load and versions"
            ]
            if reuse
            else []
        ),  # fmt: skip
        "- ratio: dmeta's rate over the peer's, or the peer's time over dmeta's (above 1: dmeta "
        "is faster); each benchmark's full output is linked from its name.",
    ]


def gpu_sections(gpu: list, device: str, out: Path, quick: bool) -> list[str]:
    """The GPU table of this run (if it ran on one) and the link to ``gpu_table.md``."""
    lines = []
    if gpu:
        lines += [
            "",
            f"## GPU ({device}; dmeta's JAX code on the GPU, peers on the CPU)",
            "",
            *table(gpu, out, quick=quick),
        ]
    if GPU_TABLE.exists():
        lines += [
            "",
            "## GPU, JAX and PyTorch both on the GPU",
            "",
            f"[{GPU_TABLE.relative_to(ROOT).as_posix()}]"
            f"({Path(os.path.relpath(GPU_TABLE, out.resolve().parent)).as_posix()}), written by "
            "`experiments/benchmarks/gpu_table.py` on a GPU machine (its own command, device and "
            "versions at its top).",
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    known = {b.name: b for b in BENCHMARKS}
    selected, notes = [], []
    for name in args.names:
        if (HERE / f"{name}.py").exists():
            selected.append(known[name])
        else:
            notes.append(f"- `{name}`: skipped, experiments/benchmarks/{name}.py does not exist.")
    out_dir = args.out.parent / "benchmarks"
    out_dir.mkdir(parents=True, exist_ok=True)
    device = probe_jax_device()
    start_load, started = load_average(), datetime.datetime.now(datetime.UTC)
    run = dict(quick=args.quick, out_dir=out_dir, timeout=args.timeout)
    cpu = [
        reused(b, out_dir / f"{b.name}.txt")
        if b.name in args.reuse
        else run_one(b, gpu=False, **run)
        for b in selected
    ]
    on_gpu = device.split()[0] == "gpu"
    gpu = [run_one(b, gpu=True, **run) for b in selected if b.uses_jax] if on_gpu else []
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python", str(Path(__file__).resolve().relative_to(ROOT)), *given])
    lines = [
        *header(command, started, device, (start_load, load_average()), args.reuse),
        "",
        "## CPU",
        "",
        *table(cpu, args.out, quick=args.quick),
        *detail_tables(cpu),
        *gpu_sections(gpu, device, args.out, args.quick),
        "",
        "## Commands (run by the command above, `JAX_PLATFORMS=cpu` for the CPU table)",
        "",
        *(f"- `python {' '.join(o.command[1:])}`" for o in cpu),
    ]
    if notes:
        lines += ["", "## Notes", "", *notes]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return int(any(o.row is None for o in cpu + gpu))


if __name__ == "__main__":
    sys.exit(main())
