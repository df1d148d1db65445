"""Scaling out preprocessing: 10^6..10^8 events to C2M sequences and RMLDP panels, Polars vs pandas.

A synthetic UserBehavior-like log (10-50 events per user, zipf items over 10^6, 1000
categories, 90 days; typed Parquet columns: the ids become text, the time stays an integer) is
written once per size under ``--data`` (default ``/tmp/dmeta_scale_out``, never the
repository). Per size and path, a subprocess preprocesses it to the last-100 behaviour
sequences of every user and the per-category daily panel of purchases, and reports each
stage's time (``<stage>_s``) and the peak resident memory up to its end
(``<stage>_peak_rss_gb``), its wall time and its peak resident memory:

- ``polars``: ``dmeta.outofcore`` (one streaming pass validating and splitting the log into
  user buckets of about 1.5M events, then per bucket: vocabularies, sequence and panel
  Parquet shards);
- ``pandas``: the in-memory path, the checks of ``dmeta.datasets.events`` on the whole log
  (ids as text), ``build_vocabulary`` / ``build_sequences`` and the panel through
  ``validate_long``; skipped where its estimated peak exceeds ``--pandas-max-gb``.

The last lines give the largest polars size's peak and throughput, and the ratio of the
smallest polars size's throughput to it (linear scaling: about 1).

    .venv/bin/python experiments/benchmarks/scale_out.py \
        --out experiments/results/benchmarks/scale_out.txt
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from experiments.benchmarks.common import Report, format_line, load_average, machine, parse_report

ROOT = Path(__file__).resolve().parents[2]
SIZES = (10**6, 10**7, 10**8)
MAX_LEN = 100
MAX_ITEMS = 50_000
PANDAS_GB_PER_1E6 = 0.75  # measured peak at 10^6 events, scaled linearly for the skip rule
EVENTS_PER_BUCKET = 1_500_000


def write_log(path: Path, n: int, seed: int = 0, chunk: int = 2_000_000) -> None:
    """A synthetic event log of ``n`` events in row groups of ``chunk`` (never all in memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    writer, first_user, t0 = None, 0, 1_511_539_200
    tmp = path.with_suffix(".tmp")
    names = np.array(["pv", "cart", "fav", "buy"])
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        counts = rng.integers(10, 51, m // 10 + 2)
        k = int(np.searchsorted(np.cumsum(counts), m)) + 1
        user = (first_user + np.repeat(np.arange(k), counts[:k]))[:m]
        first_user += k
        item = np.minimum(rng.zipf(1.3, m), 1_000_000)
        table = pa.table(
            {
                "user_id": user,
                "item_id": item,
                "category_id": item % 1000,
                "behavior": names[rng.choice(4, m, p=[0.85, 0.06, 0.04, 0.05])],
                "timestamp": t0 + rng.integers(0, 90 * 86_400, m),
            }
        )
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table)
    writer.close()
    tmp.rename(path)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def stage_timer(emit):
    """``done(name)`` emits the seconds since the previous call as ``name_s`` and the peak
    resident memory so far as ``name_peak_rss_gb``."""
    last = [time.perf_counter()]

    def done(name: str) -> None:
        now = time.perf_counter()
        emit(f"{name}_s", now - last[0], "s")
        emit(f"{name}_peak_rss_gb", peak_rss_gb(), "GB")
        last[0] = now

    return done


def run_polars(path: Path, work: Path, n: int, emit) -> None:
    from dmeta import outofcore

    n_buckets = max(4, round(n / EVENTS_PER_BUCKET))
    start = time.perf_counter()
    done = stage_timer(emit)
    buckets = outofcore.partition_events(
        path, work / "buckets", fmt="userbehavior", n_buckets=n_buckets
    )
    done("partition")
    vocab = outofcore.build_vocabularies(buckets, max_items=MAX_ITEMS)
    done("vocab")
    seqs = outofcore.sequence_shards(buckets, vocab, work / "sequences", max_len=MAX_LEN)
    done("sequences")
    panels = outofcore.panel_shards(buckets, work / "panels", n_shards=4)
    done("panels")
    emit("wall_s", time.perf_counter() - start, "s")
    emit("buckets", n_buckets)
    emit("users", vocab.n_users)
    emit("sequence_shards", len(seqs))
    emit("panel_rows", sum(outofcore.pl.read_parquet(p).height for p in panels))


def run_pandas(path: Path, work: Path, n: int, emit) -> None:
    import pandas as pd

    from dmeta import outofcore
    from dmeta.datasets import events as ev

    start = time.perf_counter()
    done = stage_timer(emit)
    raw = pd.read_parquet(path).astype(str)  # ids read as strings, as the CSV loaders do
    raw = raw.rename(columns={"behavior": "type"}).assign(_line=np.arange(len(raw)) + 1)
    mapping = {"pv": "view", "cart": "cart", "fav": "fav", "buy": "buy"}
    raw = ev.behaviors(raw, path, "type", mapping)
    raw = ev.seconds(ev.ids(raw, path), path, "timestamp", unix=True)
    events = outofcore.by_user_and_time(ev.finish([raw], path))
    del raw
    done("load")
    _, _, seqs = outofcore.pandas_sequences(events, max_len=MAX_LEN, max_items=MAX_ITEMS)
    done("sequences")
    panel = outofcore.pandas_daily_panel(events)
    done("panels")
    emit("wall_s", time.perf_counter() - start, "s")
    emit("users", len(seqs.users))
    emit("panel_rows", len(panel))


PATHS = {"polars": run_polars, "pandas": run_pandas}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    parser.add_argument("--paths", default="polars,pandas")
    parser.add_argument("--data", type=Path, default=Path("/tmp/dmeta_scale_out"))
    parser.add_argument("--pandas-max-gb", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", nargs=2, metavar=("PATH", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",")]

    def log_path(n: int) -> Path:
        return args.data / f"events_{n:.0e}.parquet".replace("+", "")

    if args.child:
        name, n = args.child[0], int(args.child[1])
        work = args.data / f"work_{name}_{n}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        PATHS[name](log_path(n), work, n, lambda *f: print(format_line(*f), flush=True))
        print(format_line("peak_rss_gb", peak_rss_gb(), "GB"), flush=True)
        shutil.rmtree(work, ignore_errors=True)
        return

    emit = Report()
    emit("command: " + " ".join(["python", *sys.argv]))
    emit(f"machine: {machine()}")
    import pandas as pd
    import polars as pl

    emit(f"versions: polars {pl.__version__}, pandas {pd.__version__}, numpy {np.__version__}")
    emit("memory: peak_rss = the (size, path) subprocess's peak resident memory")
    emit("load_avg_start", load_average())
    args.data.mkdir(parents=True, exist_ok=True)
    rows, results = [], {}
    for n in sizes:
        if not log_path(n).exists():
            start = time.perf_counter()
            write_log(log_path(n), n)
            emit(f"generate_{n:.0e}_s", time.perf_counter() - start, "s")
        for name in args.paths.split(","):
            if name == "pandas" and n / 1e6 * PANDAS_GB_PER_1E6 > args.pandas_max_gb:
                emit(f"{name}_{n:.0e}: skipped (estimated peak above {args.pandas_max_gb} GB)")
                rows.append(f"| {n:.0e} | {name} | skipped | | |")
                continue
            command = [sys.executable, str(Path(__file__).relative_to(ROOT)), "--data",
                       str(args.data), "--child", name, str(n)]  # fmt: skip
            proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{name} at {n}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
            report = parse_report(proc.stdout)
            for key, (value, unit) in report.items():
                emit(f"{name}_{n:.0e}_{key}", value, unit)
            wall, rss = report["wall_s"][0], report["peak_rss_gb"][0]
            results[(name, n)] = (wall, rss)
            emit(f"{name}_{n:.0e}_events_per_s", n / wall, "events/s")
            rows.append(f"| {n:.0e} | {name} | {wall:.1f} | {n / wall:.3g} | {rss:.2f} |")
    emit("")
    emit("| events | path | wall (s) | events/s | peak RSS (GB) |")
    emit("|---:|---|---:|---:|---:|")
    for row in rows:
        emit(row)
    emit("")
    emit("load_avg_end", load_average())
    big = max(n for _, n in results if _ == "polars") if results else None
    if big is not None:
        wall, rss = results[("polars", big)]
        tag = f"{big:.0e}".replace("+0", "").replace("+", "")
        emit(f"peak_rss_{tag}_events_gb", rss)
        emit(f"events_per_second_{tag}", big / wall)
        small = min(n for _, n in results if _ == "polars")
        emit(
            "throughput_ratio_smallest_to_largest",
            small / results[("polars", small)][0] / (big / wall),
        )
    emit.save(args.out)


if __name__ == "__main__":
    main()
