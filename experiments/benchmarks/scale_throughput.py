"""Throughput at scale: C2M for 10^4..10^6 synthetic users and Data Frames for 10^5 item-regions.

Each size runs in its own subprocess so that its peak resident memory (``ru_maxrss``) is its
own. Figures per size:

- **C2M** (``--part c2m``): a synthetic event log (10-50 events per user, zipf items, 500
  categories) -> ``build_sequences`` (L = 100, vectorized) in users/s; the autoencoder of
  ``dmeta/c2m/config.py`` (CPU size) encoding every user (``encode_all``, batches of
  1024) in sequences/s; one pretraining epoch (Adam, batch 256) over the first 20k users in
  sequences/s; k-means++ with outlier removal (k = 6, 4 restarts) on all latents in points/s.
- **Frames** (``--part frames``): a synthetic sales panel of P item-region pairs (5 regions,
  P / 5 items, 60 weekly periods, 5 indicators) -> ``build_frames`` (the item, brand,
  category and region matrices of eq. 2-6, T = 26, the last 4 end points of every pair) in
  frames/s, with XLA's buffer assignment for the jitted builder.

Every line is ``name: value unit``; a Markdown table per part closes the report.

    .venv/bin/python experiments/benchmarks/scale_throughput.py \
        --out experiments/results/benchmarks/scale_throughput.txt
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import resource
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from experiments.benchmarks.common import Report, format_line, load_average, machine, parse_report

ROOT = Path(__file__).resolve().parents[2]
C2M_USERS = (10_000, 100_000, 1_000_000)
FRAME_PAIRS = (1_000, 10_000, 100_000)
QUICK = {"c2m": (500, 1_000), "frames": (50, 100)}
C2M_MAX_LEN = 100
TRAIN_USERS = 20_000
FRAME_ENDS = 4


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_events(n_users: int, seed: int) -> pd.DataFrame:
    """Canonical C2M event frame: 10-50 events per user, zipf items over 50k, 500 categories."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(10, 51, n_users)
    user = np.repeat(np.arange(n_users), counts)
    item = np.minimum(rng.zipf(1.3, len(user)), 50_000)
    behavior = rng.choice(["view", "cart", "fav", "buy"], len(user), p=[0.8, 0.1, 0.05, 0.05])
    return pd.DataFrame(
        {
            "user_id": user,
            "item_id": item,
            "category_id": item % 500,
            "behavior": behavior,
            "timestamp": rng.integers(0, 10**7, len(user)),
        }
    )


def timed(fn):
    """(result, seconds) of ``fn()``, blocking on JAX results."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start


def child_c2m(n_users: int, quick: bool, emit) -> None:
    """One C2M size: sequences, encoding, a training epoch, k-means; see the module docstring."""
    from dmeta.c2m.config import get_config
    from dmeta.c2m.sequences import BEHAVIOR_VOCAB, build_sequences, build_vocabulary
    from dmeta.c2m.train import encode_all, init_autoencoder, pretrain
    from dmeta.cluster.kmeans import kmeans

    cfg = get_config(smoke=quick)
    events = synthetic_events(n_users, seed=0)
    emit("events", len(events))
    items = build_vocabulary(events["item_id"].to_numpy(), max_size=cfg.data.item_vocab)
    cats = build_vocabulary(events["category_id"].to_numpy())
    max_len = cfg.data.max_len if quick else C2M_MAX_LEN
    build = functools.partial(build_sequences, max_len=max_len, items=items, categories=cats)
    seqs, seconds = timed(functools.partial(build, events))
    del events, build
    emit("sequences_users_per_s", n_users / seconds, "users/s")
    x, mask = seqs.features(), seqs.mask
    ae = init_autoencoder(
        jax.random.key(0),
        n_behaviors=BEHAVIOR_VOCAB.size,
        n_items=items.size,
        n_categories=cats.size,
        **dataclasses.asdict(cfg.model),
    )
    encode_all(ae, ae.params, x[:1024], mask[:1024], batch_size=1024)  # compile
    latent, seconds = timed(lambda: encode_all(ae, ae.params, x, mask, batch_size=1024))
    emit("encode_sequences_per_s", n_users / seconds, "sequences/s")
    n_train = min(n_users, TRAIN_USERS)
    train = dict(epochs=1, batch_size=256, learning_rate=1e-3, key=jax.random.key(1))
    pretrain(ae, ae.params, x[:256], mask[:256], **train)  # compile
    _, seconds = timed(lambda: pretrain(ae, ae.params, x[:n_train], mask[:n_train], **train)[1])
    emit("train_sequences_per_s", n_train / seconds, "sequences/s")
    points = jnp.asarray(latent)
    fit = dict(k=cfg.segmentation.n_segments, n_init=4, outlier_z=2.0)
    kmeans(jax.random.key(2), points, **fit)  # compile
    _, seconds = timed(lambda: kmeans(jax.random.key(2), points, **fit).centroids)
    emit("kmeans_points_per_s", n_users / seconds, "points/s")


def child_frames(n_pairs: int, quick: bool, emit) -> None:
    """One frame-building size: build_frames for ``n_pairs`` item-region pairs."""
    from dmeta.sales_cnn.frames import build_frames
    from dmeta.sales_cnn.synthetic import synthetic_panel

    regions = 5
    length = 8 if quick else 26
    panel, _ = synthetic_panel(0, n_regions=regions, n_items=n_pairs // regions, n_periods=60)
    ends = jnp.arange(60 - 1 - FRAME_ENDS, 60 - 1, dtype=jnp.int32)
    opts = dict(length=length, horizon=1, target=panel.target)
    args = (jnp.asarray(panel.x), jnp.asarray(panel.brand), jnp.asarray(panel.category), ends)
    compiled = build_frames.lower(*args, **opts).compile()
    mem = compiled.memory_analysis()
    xla = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
    emit("xla_peak_mib", xla / 2**20, "MiB")
    (frames, _), seconds = timed(lambda: compiled(*args))
    emit("frames_bytes_mib", frames.nbytes / 2**20, "MiB")
    emit("frames_per_s", n_pairs * FRAME_ENDS / seconds, "frames/s")


PARTS = {
    "c2m": (
        child_c2m,
        C2M_USERS,
        "users",
        (
            "sequences_users_per_s",
            "encode_sequences_per_s",
            "train_sequences_per_s",
            "kmeans_points_per_s",
        ),
    ),
    "frames": (child_frames, FRAME_PAIRS, "item-region pairs", ("frames_per_s", "xla_peak_mib")),
}


def run_child(part: str, size: int, quick: bool) -> tuple[dict[str, tuple[float, str]], str]:
    """Runs one (part, size) in a subprocess; returns its parsed report and raw output."""
    command = [sys.executable, str(Path(__file__).relative_to(ROOT)), "--child", part, str(size)]
    proc = subprocess.run(
        command + (["--quick"] if quick else []), cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"{part} at {size}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return parse_report(proc.stdout), proc.stdout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (tests)")
    parser.add_argument("--parts", default="c2m,frames", help="comma-separated: c2m, frames")
    parser.add_argument("--child", nargs=2, metavar=("PART", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)

    def child_emit(*fields):
        print(format_line(*fields), flush=True)

    if args.child:
        part, size = args.child[0], int(args.child[1])
        PARTS[part][0](size, args.quick, child_emit)
        child_emit("peak_rss_mib", peak_rss_mib(), "MiB")
        return

    emit = Report()

    emit("command: " + " ".join(["python", *sys.argv]))
    emit(f"machine: {machine()}; jax devices: {[str(d) for d in jax.devices()]}")
    emit(f"versions: jax {jax.__version__}, numpy {np.__version__}, pandas {pd.__version__}")
    emit("memory: peak_rss = the size's subprocess peak resident memory (host)")
    emit("load_avg_start", load_average())
    tables: list[str] = []
    for part in args.parts.split(","):
        _, sizes, unit, columns = PARTS[part]
        sizes = QUICK[part] if args.quick else sizes
        tables += [
            "",
            f"| {unit} | " + " | ".join(columns) + " | peak RSS (MiB) |",
            "|---:|" + "---:|" * (len(columns) + 1),
        ]
        for size in sizes:
            report, _ = run_child(part, size, args.quick)
            for name, (value, unit_) in report.items():
                emit(f"{part}_{size}_{name}", value, unit_)
            cells = [f"{report[c][0]:.4g}" for c in (*columns, "peak_rss_mib")]
            tables.append(f"| {size} | " + " | ".join(cells) + " |")
    for line in tables:
        emit(line)
    emit("")
    emit("load_avg_end", load_average())
    emit.save(args.out)


if __name__ == "__main__":
    main()
