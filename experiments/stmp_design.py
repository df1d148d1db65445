"""STMP design choices scored on the validation year only (never the test period).

Each variant is a list of ``--set`` overrides of the STMP config; every (variant, seed)
trains one method on the split that equal tuning scores (``dmeta.stmp.protocol.split``
with ``validation=True``: training ends a year before the test year, early stopping on
the ``val_days`` before that cutoff) and is scored on that validation year's regular and
festival days. Rows go to ``<out>/design.csv`` as they finish (a rerun skips the rows
already there and resumes a killed fit), each fit's validation curve to ``<out>/curves/``,
each region's MSE, target count and mean target per day kind to ``<out>/regions.csv`` (to
see where a variant gains or loses), the table of means and standard deviations over seeds
to ``<out>/design.md`` (rewritten from design.csv by every run, so rerunning a finished
command only regenerates it); ``<out>/command.txt`` keeps one line per distinct command
that wrote there. Processes may share an ``--out`` (the same variants in another
order, say): a fit another live process runs is skipped (``<out>/running/<fit>`` holds its
pid), and each reads design.csv again before it adds a row.

    python -m experiments.stmp_design --data favorita --seeds 2 \\
        --variant base= --variant mse=train.objective=mse \\
        --variant ema=train.ema=0.99,train.objective=mse --out experiments/results/stmp/design
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from dmeta import metrics
from dmeta.config import override
from dmeta.report.tables import markdown_table
from dmeta.stmp import protocol as P
from dmeta.stmp.config import get_config
from dmeta.train import loop
from dmeta.train.harness import write_atomic

COLUMNS = ["variant", "overrides", "method", "seed", "group", "mse", "n"]
REGION_COLUMNS = ["variant", "method", "seed", "region", "group", "mse", "n", "mean_y"]


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``"name=path=value,path=value"`` -> (name, ["path=value", ...]); ``"name="`` is the
    config as it is."""
    name, _, rest = text.partition("=")
    return name, [a for a in rest.split(",") if a]


def score_variant(data, sets: list[str], method: str, seed: int, folder: str, out: Path):
    """Validation-year MSE rows (regular, festival, all days) of one fit of ``method`` and
    its best early-stopping score (``es_window``: the MSE on the ``protocol.val_days`` before
    the cutoff, nearly all regular days); a killed fit resumes from ``out/ckpt/<folder>``,
    its curve goes to ``out/curves/<folder>``."""
    cfg = override(get_config(), [*sets, "protocol.one_week=false"])
    prep = P.split(data, cfg, "full", True)
    with loop.checkpoints(out / "ckpt" / folder, curves=out / "curves" / folder) as fits:
        pred = P.forecast(method, prep, cfg, seed)
    y, pred, fest = P.targets(prep, pred)
    groups = {"regular": ~fest, "festival": fest, "all": np.ones_like(fest)}
    rows = [
        dict(group=g, mse=float(metrics.mse(y[m], pred[m])), n=int(m.sum()))
        for g, m in groups.items()
    ]
    curve = pd.read_csv(out / "curves" / folder / f"{fits.names[-1]}.csv")
    rows.append(dict(group="es_window", mse=float(curve["val_mse"].min()),
                     n=int(prep.val.sum())))  # fmt: skip
    region = np.asarray(prep.data.regions)[np.nonzero(prep.test)[0]]
    frame = pd.DataFrame(dict(region=region, group=np.where(fest, "festival", "regular"),
                              se=np.square(y - pred), y=y))  # fmt: skip
    by_region = frame.groupby(["region", "group"], sort=False).agg(
        mse=("se", "mean"), n=("se", "size"), mean_y=("y", "mean")
    )
    return rows, by_region.reset_index().to_dict("records")


def main(argv: list[str] | None = None) -> None:
    """CLI: ``--data``, ``--variant NAME=SETS`` and ``--method`` (repeatable), ``--seeds``,
    ``--out``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="favorita", help="an STMP --data spec")
    ap.add_argument(
        "--variant",
        action="append",
        required=True,
        help="NAME=path=value,path=value (NAME= for the config as it is)",
    )
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--method", action="append",
                    help="an STMP method (ablation or baseline; repeatable; default STMP)")  # fmt: skip
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)  # fmt: skip
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _, data = P.load_panel(args.data, get_config().data)
    path = args.out / "design.csv"
    for method in args.method or ["STMP"]:
        for name, sets in map(parse_variant, args.variant):
            for seed in range(args.seeds):
                if not _has(read_rows(path), name, method, seed):
                    run_fit(data, name, sets, method, seed, args.out)
    table = summary(read_rows(path))
    write_atomic(args.out / "design.md", markdown_table(table, floatfmt=".0f") + "\n")
    record_command(args.out / "command.txt", " ".join(["python -m experiments.stmp_design",
                                                       *(argv or sys.argv[1:])]))  # fmt: skip
    print(table.to_string(index=False))


def record_command(path: Path, command: str) -> None:
    """Adds ``command`` as a line of ``path`` unless it is one already: every command that
    wrote into a shared ``--out`` stays on record, in the order they first finished."""
    lines = path.read_text().splitlines() if path.exists() else []
    if command not in lines:
        write_atomic(path, "\n".join([*lines, command]) + "\n")


@contextlib.contextmanager
def claimed(lock: Path):
    """Yields True while this process holds ``lock`` (a file with its pid, made atomically),
    False when a live process holds it; a lock left by a dead process is taken over."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    mine = lock.with_name(f"{lock.name}.{os.getpid()}")
    mine.write_text(str(os.getpid()))
    try:
        for _ in range(2):
            try:
                os.link(mine, lock)  # atomic, and the pid is in place before anyone reads it
            except FileExistsError:
                if _alive(int(lock.read_text())):
                    yield False
                    return
                lock.unlink(missing_ok=True)  # stale: its process died
                continue
            try:
                yield True
            finally:
                lock.unlink(missing_ok=True)
            return
        yield False
    finally:
        mine.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` (> 0) exists."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def run_fit(data, name: str, sets: list[str], method: str, seed: int, out: Path) -> None:
    """Scores one (variant, method, seed) unless another live process runs it, and adds its
    rows to ``design.csv`` and ``regions.csv``."""
    folder = f"{name}__{method}__seed{seed}"
    with claimed(out / "running" / folder) as mine:
        if not mine:
            return
        rows, by_region = score_variant(data, sets, method, seed, folder, out)
    keys = dict(variant=name, overrides=",".join(sets), method=method, seed=seed)
    regions = out / "regions.csv"
    old = pd.read_csv(regions) if regions.exists() else None
    new = pd.DataFrame([dict(keys, **r) for r in by_region])
    write_atomic(regions, pd.concat([old, new])[REGION_COLUMNS].to_csv(index=False))
    path = out / "design.csv"
    done = read_rows(path)  # again: another process may have added rows meanwhile
    done = pd.concat([done, pd.DataFrame([dict(keys, **r) for r in rows])])
    write_atomic(path, done[COLUMNS].to_csv(index=False))
    print(name, method, seed, {r["group"]: round(r["mse"]) for r in rows}, flush=True)


def read_rows(path: Path) -> pd.DataFrame:
    """The rows of ``design.csv`` so far (none when it does not exist yet)."""
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    rows = pd.read_csv(path, dtype={"overrides": object})
    return rows.fillna({"overrides": ""})  # the config as it is (read back as NaN)


def _has(rows: pd.DataFrame, variant: str, method: str, seed: int) -> bool:
    return bool(((rows.variant == variant) & (rows.seed == seed) & (rows.method == method)).any())


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of each (method, variant)'s validation-year MSE per day kind
    (and best early-stopping score, in rows that have it)."""
    stats = rows.groupby(["method", "variant", "overrides", "group"], sort=False)["mse"]
    table = stats.agg(["mean", "std", "count"]).reset_index()
    wide = table.pivot_table(index=["method", "variant", "overrides"], columns="group",
                             values=["mean", "std"], sort=False)  # fmt: skip
    wide.columns = [f"{group} {stat}" for stat, group in wide.columns]
    kinds = [g for g in ("all", "regular", "festival", "es_window") if g in set(rows["group"])]
    order = [f"{g} {s}" for g in kinds for s in ("mean", "std")]
    seeds = table.groupby(["method", "variant", "overrides"], sort=False)["count"].max()
    return wide.reindex(columns=order).assign(seeds=seeds).reset_index()  # std: NaN at 1 seed


if __name__ == "__main__":
    main()
