"""Out-of-core preprocessing of event logs with Polars (lazy scans, streaming engine).

The raw log is never held in memory: each file is read once by the streaming engine, which
validates it and writes its valid events into ``n_buckets`` Parquet buckets by a hash of the
user and its invalid rows into one more bucket for the report (``partition_events``).
Each bucket holds whole users, so everything per user (exact-duplicate removal, the time
order, the last L events) is done one bucket at a time with memory bounded by the largest
bucket, not by the log:

    info = partition_events("logs/", work / "buckets", fmt="userbehavior", n_buckets=64)
    vocab = build_vocabularies(info, max_items=50_000)          # one pass, small tables
    sequence_shards(info, vocab, work / "sequences", max_len=100)   # seq-00000.parquet ...
    panel_shards(info, work / "panels", n_shards=8)             # panel-00000.parquet ...

or ``preprocess(path, out, engine="auto")``, which picks pandas (the loaders of
``dmeta.datasets`` and ``dmeta.c2m.sequences.build_sequences``) for small inputs and this
path for large ones, writing the same shards either way.

Ids are text in both engines, stripped of surrounding blanks and otherwise kept as written:
``007`` and ``7`` are two users (items, segments), ``a-1`` and ``1.5`` are ids like any other,
and vocabulary ties and user order follow the text (a Parquet number column becomes its
text). The time stays integer seconds.

Outputs:
- sequence shards: ``user_id`` (str, sorted within a shard), ``length`` and the list columns
  ``behavior``, ``item``, ``category`` (i32 codes of ``BEHAVIOR_VOCAB`` and the item /
  category vocabularies, chronological, at most L); ``read_sequences`` pads them into a
  ``BehaviorSequences`` identical to ``build_sequences`` on the in-memory log.
- panel shards: per-segment daily demand ``unique_id`` (str, the category id), ``ds`` (date),
  ``y`` (f64, events of the panel behaviour that day), dense from each segment's first to last
  day with 0 for days without events (as ``validate_long(freq="D")`` fills them); segments
  are split over shards in sorted order (``dmeta.distributed.process_shard``), so process p of
  P reads shards p, p + P, ... or the block ``process_shard(n_shards)``.

Validation follows ``dmeta.datasets.events``: rows with an empty id, a missing or non-integer
time or an unknown behaviour are dropped and logged with the file, the column and the first
offending lines (rows for Parquet); a file with no valid row raises ``ValueError``; exact
duplicate events are dropped. Ties in time keep file order (files sorted by name, then line).

Engine choice (measured with ``experiments/benchmarks/scale_out.py``'s generator, 2 cores,
shared machine): building the last-100 sequences of 10^7 events took Polars 5.4 s of CPU at
1.32 GB peak and DuckDB 12.5 s at 1.53 GB (``threads=2, memory_limit=3GB``); daily panels
cost both about 0.5 s. Polars is the faster of the two for the per-user list work that
dominates and stays in-process with numpy / pyarrow, so it is the engine here.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl

from dmeta.c2m.data import BEHAVIORS, COLUMNS
from dmeta.c2m.sequences import BEHAVIOR_VOCAB, OOV, PAD, BehaviorSequences, Vocabulary

log = logging.getLogger(__name__)

ID_COLUMNS = ("user_id", "item_id", "category_id")
#: input formats: (file glob in a folder, header?, source behaviour column, behaviour mapping)
FORMATS = {
    "events": ("events*", True, "behavior", {b: b for b in BEHAVIORS}),
    "userbehavior": (
        "*",
        False,
        "type",
        {"pv": "view", "cart": "cart", "fav": "fav", "buy": "buy"},
    ),
}
HEADERLESS_NAMES = ("user_id", "item_id", "category_id", "type", "timestamp")
#: inputs at least this large (bytes, all files) go out of core under ``engine="auto"``
AUTO_THRESHOLD_BYTES = 256 * 2**20
_ROW_SHIFT = 40  # global row ordinal = file index << 40 | line: ties keep file order
SECONDS_PER_DAY = 86_400
_WORK_COMPRESSION = "lz4"  # bucket files: 11% less CPU than zstd in the split pass


# ---------------------------------------------------------------- scanning and validation


def input_files(path: str | Path, fmt: str = "events") -> list[Path]:
    """The CSV / Parquet files of ``path`` (a file or a folder), sorted by name."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    pattern = FORMATS[fmt][0]
    files = sorted(
        p for p in path.glob(pattern) if p.suffix in (".csv", ".parquet") and p.is_file()
    )
    if not files:
        raise FileNotFoundError(f"{path}: no .csv / .parquet file matches {pattern}")
    return files


def _scan(file: Path, fmt: str) -> tuple[pl.LazyFrame, str]:
    """The columns (CSV: strings; Parquet: as stored) plus ``_line`` (1-based CSV line, or
    Parquet row); the unit."""
    _, header, _, _ = FORMATS[fmt]
    if file.suffix == ".parquet":
        lf = pl.scan_parquet(file).with_row_index("_line", offset=1)
        if not header:
            lf = lf.rename(dict(zip(lf.collect_schema().names()[1:], HEADERLESS_NAMES)))
        return lf, "rows"
    lf = pl.scan_csv(
        file,
        has_header=header,
        new_columns=None if header else list(HEADERLESS_NAMES),
        infer_schema=False,  # ids always read as strings
        empty_string_is_null=False,
        row_index_name="_line",
        row_index_offset=2 if header else 1,
    )
    return lf, "lines"


def _text_id(column: str, dtype: pl.DataType) -> pl.Expr:
    """The stripped id text, null when empty (as ``dmeta.datasets.events.ids``); a number
    column (Parquet) as its text, which has nothing to strip."""
    if dtype != pl.String:
        return pl.col(column).cast(pl.String)
    text = pl.col(column).str.strip_chars()
    return pl.when(text != "").then(text)


def _seconds(column: str, dtype: pl.DataType) -> pl.Expr:
    """Integer seconds, null where missing or not an integer (as ``events.seconds``)."""
    if dtype.is_integer():
        return pl.col(column).cast(pl.Int64, strict=False)
    value = pl.col(column)
    if not dtype.is_float():
        value = value.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
    integer = value.is_finite() & (value == value.floor()) & (value.abs() <= 2.0**62)
    return pl.when(integer).then(value).cast(pl.Int64)


def _mapped(column: str, mapping: dict[str, str]) -> pl.Expr:
    """``mapping`` of the stripped text, null outside it (as ``events.behaviors``).

    A chain of ``when`` rather than ``replace_strict``, which the streaming engine runs in
    memory: on 3 * 10^7 events it alone held the whole log (4 GB).
    """
    code = pl.col(column).cast(pl.String).str.strip_chars()
    return pl.coalesce(*(pl.when(code == k).then(pl.lit(v)) for k, v in mapping.items()))


def _checks(fmt: str) -> list[tuple[str, pl.Expr, str]]:
    """(source column, invalid-row expression on ``_typed``'s columns, reason) per check."""
    source, mapping = FORMATS[fmt][2], FORMATS[fmt][3]
    checks = [(source, pl.col("_behavior").is_null(), f"a behaviour outside {sorted(mapping)}")]
    checks += [(c, pl.col(f"_{c}").is_null(), "a missing id") for c in ID_COLUMNS]
    return checks + [("timestamp", pl.col("_timestamp").is_null(), "a missing or non-integer time")]


def _typed(lf: pl.LazyFrame, fmt: str) -> pl.LazyFrame:
    """Adds the parsed columns (null where invalid) next to the raw ones."""
    _, _, source, mapping = FORMATS[fmt]
    schema = lf.collect_schema()
    return lf.with_columns(
        *(_text_id(c, schema[c]).alias(f"_{c}") for c in ID_COLUMNS),
        _mapped(source, mapping).alias("_behavior"),
        _seconds("timestamp", schema["timestamp"]).alias("_timestamp"),
    )


def _check_columns(lf: pl.LazyFrame, file: Path, fmt: str) -> None:
    names = lf.collect_schema().names()
    needed = [c for c in (*ID_COLUMNS, FORMATS[fmt][2], "timestamp") if c not in names]
    if needed:
        raise ValueError(f"{file}: missing columns {needed}")


# ---------------------------------------------------------------- buckets of whole users


@dataclasses.dataclass(frozen=True)
class Buckets:
    """Validated events split by user into ``n`` buckets under ``root``.

    Bucket ``k`` is the Parquet files ``root/file=I/bucket=K/*.parquet`` (one folder per
    input file ``I``) until ``clean_bucket`` replaces it by ``root/clean-K.parquet``;
    ``bucket=n`` holds the invalid rows.
    """

    root: Path
    n: int
    n_events: int

    def scan(self, k: int) -> pl.LazyFrame:
        files = sorted(self.root.glob(f"file=*/bucket={k}/*.parquet"))
        if not files:
            return pl.LazyFrame(schema=_CANONICAL)
        return pl.scan_parquet(files).drop("_failed")


_CANONICAL = {
    "user_id": pl.String,
    "item_id": pl.String,
    "category_id": pl.String,
    "behavior": pl.String,
    "timestamp": pl.Int64,
    "_row": pl.Int64,
}


def _split_file(file: Path, index: int, fmt: str, root: Path, n_buckets: int) -> int:
    """One streaming pass over ``file`` into ``root/file=index/bucket=K``: its valid events
    into the user buckets K < ``n_buckets``, its invalid rows into K = ``n_buckets`` with the
    bit mask of their failed checks (``_failed``); logs each dropped row class (column,
    reason, first lines) and returns the valid-row count.

    One sink on purpose: a second branch off the same scan (a rejects file, a count) made
    the streaming engine buffer the log for the slower bucket sink (3.4 GB at 10^8 events).

    Raises ``ValueError`` naming the file when it is malformed or has no valid row.
    """
    lf, unit = _scan(file, fmt)
    _check_columns(lf, file, fmt)
    checks = _checks(fmt)
    failed = pl.sum_horizontal(e.cast(pl.UInt8) * (1 << i) for i, (_, e, _) in enumerate(checks))
    user = pl.col("_user_id").hash(seed=0) % n_buckets
    events = _typed(lf, fmt).select(
        *(pl.col(f"_{c}").alias(c) for c in COLUMNS),
        (pl.lit(index << _ROW_SHIFT, pl.Int64) + pl.col("_line").cast(pl.Int64)).alias("_row"),
        failed.alias("_failed"),
        pl.when(failed == 0).then(user).otherwise(n_buckets).cast(pl.Int32).alias("bucket"),
    )
    folder = root / f"file={index}"
    try:
        events.sink_parquet(
            pl.PartitionBy(folder, key="bucket", include_key=False),
            mkdir=True, compression=_WORK_COMPRESSION, engine="streaming",
        )  # fmt: skip
    except (pl.exceptions.ComputeError, pl.exceptions.SchemaError) as err:
        raise ValueError(f"{file}: malformed input ({err})") from err
    rejects = sorted(folder.glob(f"bucket={n_buckets}/*.parquet"))
    if rejects:
        _log_rejects(file, unit, checks, pl.scan_parquet(rejects))
    kept = [p for k in range(n_buckets) for p in folder.glob(f"bucket={k}/*.parquet")]
    n_valid = pl.scan_parquet(kept).select(pl.len()).collect().item() if kept else 0
    if n_valid == 0:
        raise ValueError(f"{file}: no valid events")
    return n_valid


def _log_rejects(file: Path, unit: str, checks: list, rejects: pl.LazyFrame) -> None:
    """One warning per failed check: the file, the column, the reason, the first lines."""
    line = (pl.col("_row") & ((1 << _ROW_SHIFT) - 1)).alias("line")
    for i, (column, _, why) in enumerate(checks):
        hit = rejects.filter((pl.col("_failed") & (1 << i)) != 0)
        count = hit.select(pl.len()).collect().item()
        if count:
            lines = hit.select(line).sort("line").head(5).collect()["line"].to_list()
            log.warning(
                "%s: dropped %d rows with %s in column %r (%s %s...)",
                file, count, why, column, unit, lines,
            )  # fmt: skip


def partition_events(
    path: str | Path, out: str | Path, *, fmt: str = "events", n_buckets: int = 32
) -> Buckets:
    """Validates every file and streams its valid events into ``n_buckets`` user buckets.

    One streaming pass per file writes both the buckets and the validation report; ``out``
    is replaced.
    """
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    files = input_files(path, fmt)
    n_events = sum(_split_file(f, i, fmt, out, n_buckets) for i, f in enumerate(files))
    return Buckets(out, n_buckets, n_events)


def _first_copies(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` (sorted by user, time, file order) less the later copies of exact duplicates.

    Copies share (user, time), so only the rows in runs of equal (user, time) are hashed.
    """
    tie = (pl.col("user_id") == pl.col("user_id").shift()) & (
        pl.col("timestamp") == pl.col("timestamp").shift()
    )
    df = df.with_columns(tie.fill_null(False).alias("_tie")).with_row_index("_i")
    runs = df.filter(pl.col("_tie") | pl.col("_tie").shift(-1, fill_value=False))
    later = runs.filter(~pl.struct(COLUMNS).is_first_distinct())["_i"]
    return df.filter(~pl.col("_i").is_in(later.implode())).drop("_i", "_tie")


def clean_bucket(buckets: Buckets, k: int) -> pl.DataFrame:
    """Bucket ``k`` sorted by (user, time, file order) without exact duplicate events.

    Computed once and kept as ``root/clean-K.parquet``; later passes read that file.
    """
    path = buckets.root / f"clean-{k:05d}.parquet"
    if path.exists():
        return pl.read_parquet(path)
    df = _first_copies(buckets.scan(k).collect().sort("user_id", "timestamp", "_row"))
    df.write_parquet(path, compression=_WORK_COMPRESSION)
    for folder in buckets.root.glob(f"file=*/bucket={k}"):
        shutil.rmtree(folder)
    return df


# ---------------------------------------------------------------- vocabularies and sequences


def _top(counts: pl.DataFrame, max_size: int | None, min_count: int) -> Vocabulary:
    """``build_vocabulary`` on (id, count): most frequent first, ties by id."""
    ranked = counts.filter(pl.col("count") >= min_count).sort(
        ["count", "id"], descending=[True, False]
    )
    ids = ranked["id"].to_numpy()
    return Vocabulary(ids[:max_size] if max_size is not None else ids)


@dataclasses.dataclass(frozen=True)
class Vocabularies:
    items: Vocabulary
    categories: Vocabulary
    n_events: int  # after duplicate removal
    n_users: int


def build_vocabularies(
    buckets: Buckets, *, max_items: int | None = None, max_categories: int | None = None
) -> Vocabularies:
    """Item and category vocabularies over the de-duplicated log, one bucket at a time."""
    items, cats = [], []
    n_events = n_users = 0
    for k in range(buckets.n):
        df = clean_bucket(buckets, k)
        n_events += df.height
        n_users += df["user_id"].n_unique()
        items.append(df.group_by("item_id").len().rename({"item_id": "id", "len": "count"}))
        cats.append(df.group_by("category_id").len().rename({"category_id": "id", "len": "count"}))
        del df
    dropped = buckets.n_events - n_events
    if dropped:
        log.warning("%s: dropped %d exact duplicate events", buckets.root, dropped)

    def total(parts):
        return pl.concat(parts).group_by("id").agg(pl.col("count").sum())

    return Vocabularies(
        _top(total(items), max_items, 1), _top(total(cats), max_categories, 1), n_events, n_users
    )


def _codes(column: str, vocab: Vocabulary) -> pl.Expr:
    """``vocab.encode`` as an expression: 2 + rank for known ids, OOV otherwise."""
    ids = pl.Series(vocab.ids, dtype=pl.String)
    codes = pl.Series(np.arange(2, len(vocab.ids) + 2, dtype=np.int32))
    return pl.col(column).replace_strict(ids, codes, default=OOV, return_dtype=pl.Int32)


def _behavior_codes() -> pl.Expr:
    names = list(BEHAVIOR_VOCAB.ids)
    return pl.col("behavior").replace_strict(
        names, list(range(2, len(names) + 2)), default=OOV, return_dtype=pl.Int32
    )


def sequence_shards(
    buckets: Buckets, vocab: Vocabularies, out: str | Path, *, max_len: int
) -> list[Path]:
    """Per bucket, the last ``max_len`` events of every user as one Parquet shard."""
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    paths = []
    for k in range(buckets.n):
        seqs = (
            clean_bucket(buckets, k)
            .lazy()
            .select(
                "user_id",
                _behavior_codes().alias("behavior"),
                _codes("item_id", vocab.items).alias("item"),
                _codes("category_id", vocab.categories).alias("category"),
            )
            .group_by("user_id", maintain_order=True)
            .agg(pl.all().tail(max_len))
            .with_columns(pl.col("behavior").list.len().cast(pl.Int32).alias("length"))
            .collect()
        )
        path = out / f"seq-{k:05d}.parquet"
        seqs.write_parquet(path)
        paths.append(path)
    return paths


def pad_sequences(frame: pl.DataFrame, max_len: int) -> BehaviorSequences:
    """A sequence-shard frame (any subset of users) -> left-aligned ``BehaviorSequences``."""
    frame = frame.sort("user_id")
    lengths = frame["length"].to_numpy().astype(np.int64)
    row = np.repeat(np.arange(len(frame)), lengths)
    col = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out = {}
    for name in ("behavior", "item", "category"):
        grid = np.full((len(frame), max_len), PAD, np.int32)
        grid[row, col] = frame[name].explode().to_numpy()
        out[name] = grid
    mask = np.zeros((len(frame), max_len), bool)
    mask[row, col] = True
    return BehaviorSequences(users=frame["user_id"].to_numpy(), mask=mask, **out)


def read_sequences(paths: list[Path] | str | Path, max_len: int) -> BehaviorSequences:
    """All users of the given shards (a folder: all of them) as one ``BehaviorSequences``."""
    if isinstance(paths, (str, Path)):
        paths = sorted(Path(paths).glob("seq-*.parquet"))
    return pad_sequences(pl.read_parquet(paths), max_len)


# ---------------------------------------------------------------- per-segment daily panels


def daily_counts(buckets: Buckets, behavior: str = "buy") -> pl.DataFrame:
    """(category_id, day, y) event counts of ``behavior``, summed over the buckets."""
    parts = []
    for k in range(buckets.n):
        df = clean_bucket(buckets, k).filter(pl.col("behavior") == behavior)
        parts.append(
            df.group_by("category_id", (pl.col("timestamp") // SECONDS_PER_DAY).alias("day")).len()
        )
    return (
        pl.concat(parts)
        .group_by("category_id", "day")
        .agg(pl.col("len").sum().alias("y"))
        .sort("category_id", "day")
    )


def dense_panel(counts: pl.DataFrame) -> pl.DataFrame:
    """(unique_id, ds, y) dense daily from each segment's first to last day, 0 in the gaps."""
    spans = counts.group_by("category_id").agg(
        pl.int_ranges(pl.col("day").min(), pl.col("day").max() + 1).first().alias("day")
    )
    grid = spans.explode("day")
    return (
        grid.join(counts, on=["category_id", "day"], how="left")
        .select(
            pl.col("category_id").cast(pl.String).alias("unique_id"),
            (pl.col("day") * SECONDS_PER_DAY * 1000)
            .cast(pl.Datetime("ms"))
            .cast(pl.Date)
            .alias("ds"),
            pl.col("y").fill_null(0).cast(pl.Float64),
        )
        .sort("unique_id", "ds")
    )


def panel_shards(
    buckets: Buckets, out: str | Path, *, n_shards: int = 1, behavior: str = "buy"
) -> list[Path]:
    """Daily per-segment panels (segments = categories) in ``n_shards`` Parquet shards."""
    from dmeta.distributed import process_shard

    panel = dense_panel(daily_counts(buckets, behavior))
    ids = panel["unique_id"].unique().sort()
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    paths = []
    for k in range(n_shards):
        mine = ids[process_shard(len(ids), k, n_shards)]
        path = out / f"panel-{k:05d}.parquet"
        panel.filter(pl.col("unique_id").is_in(mine.implode())).write_parquet(path)
        paths.append(path)
    return paths


def read_panel(paths: list[Path] | str | Path) -> pd.DataFrame:
    """Panel shards as the pandas long frame ``unique_id, ds, y`` (``validate_long``-ready)."""
    if isinstance(paths, (str, Path)):
        paths = sorted(Path(paths).glob("panel-*.parquet"))
    frame = pl.read_parquet(paths).to_pandas()
    frame["ds"] = pd.to_datetime(frame["ds"]).astype("datetime64[ns]")
    return frame.sort_values(["unique_id", "ds"], ignore_index=True)


# ---------------------------------------------------------------- the pandas path and the choice


def pandas_daily_panel(events: pd.DataFrame, behavior: str = "buy") -> pd.DataFrame:
    """The in-memory equivalent of ``dense_panel(daily_counts(...))`` (via ``validate_long``)."""
    from dmeta.data.frames import validate_long

    ev = events[events["behavior"].astype(str) == behavior]
    day = pd.to_datetime(ev["timestamp"].to_numpy() // SECONDS_PER_DAY * SECONDS_PER_DAY, unit="s")
    counts = (
        pd.DataFrame({"unique_id": ev["category_id"].astype(str).to_numpy(), "ds": day})
        .groupby(["unique_id", "ds"])
        .size()
        .rename("y")
        .reset_index()
        .astype({"y": np.float64})
    )
    return validate_long(counts, source="events", freq="D").frame[["unique_id", "ds", "y"]]


def choose_engine(path: str | Path, engine: str = "auto", fmt: str = "events") -> str:
    """``"pandas"`` or ``"polars"``: an explicit choice, or by total input size (auto)."""
    if engine in ("pandas", "polars"):
        return engine
    if engine != "auto":
        raise ValueError(f"engine={engine!r}: expected 'auto', 'pandas' or 'polars'")
    size = sum(f.stat().st_size for f in input_files(path, fmt))
    return "polars" if size >= AUTO_THRESHOLD_BYTES else "pandas"


@dataclasses.dataclass(frozen=True)
class Preprocessed:
    engine: str
    sequences: list[Path]
    panels: list[Path]
    items: Vocabulary
    categories: Vocabulary
    n_events: int
    n_users: int


def preprocess(
    path: str | Path,
    out: str | Path,
    *,
    fmt: str = "events",
    engine: str = "auto",
    max_len: int = 100,
    max_items: int | None = None,
    n_buckets: int = 32,
    n_panel_shards: int = 1,
    behavior: str = "buy",
) -> Preprocessed:
    """Event log -> ``out/sequences/seq-*.parquet`` and ``out/panels/panel-*.parquet``.

    ``engine="pandas"`` runs the in-memory loaders (``dmeta.c2m.data``, CSV only) and
    ``build_sequences`` and writes one shard of each; ``"polars"`` the out-of-core path with
    ``n_buckets`` sequence shards; ``"auto"`` picks by input size (``choose_engine``).
    """
    out = Path(out)
    engine = choose_engine(path, engine, fmt)
    if engine == "polars":
        buckets = partition_events(path, out / "buckets", fmt=fmt, n_buckets=n_buckets)
        vocab = build_vocabularies(buckets, max_items=max_items)
        seqs = sequence_shards(buckets, vocab, out / "sequences", max_len=max_len)
        panels = panel_shards(buckets, out / "panels", n_shards=n_panel_shards, behavior=behavior)
        shutil.rmtree(buckets.root, ignore_errors=True)
        return Preprocessed(
            engine, seqs, panels, vocab.items, vocab.categories, vocab.n_events, vocab.n_users
        )
    events = load_pandas(path, fmt)
    items, cats, seqs = pandas_sequences(events, max_len=max_len, max_items=max_items)
    for name in ("sequences", "panels"):
        shutil.rmtree(out / name, ignore_errors=True)
        (out / name).mkdir(parents=True)
    seq_path = out / "sequences" / "seq-00000.parquet"
    _sequences_frame(seqs).write_parquet(seq_path)
    panel_path = out / "panels" / "panel-00000.parquet"
    panel = pandas_daily_panel(events, behavior)
    pl.from_pandas(panel.assign(ds=panel["ds"].dt.date)).write_parquet(panel_path)
    return Preprocessed(engine, [seq_path], [panel_path], items, cats, len(events), len(seqs.users))


def load_pandas(path: str | Path, fmt: str = "events") -> pd.DataFrame:
    """The canonical event frame by the in-memory loaders (``dmeta.datasets``), ids as text."""
    from dmeta.datasets import LOADERS

    return by_user_and_time(LOADERS[fmt](Path(path)).events)


def by_user_and_time(events: pd.DataFrame) -> pd.DataFrame:
    """Loaded events (text ids) sorted by user and time, ties in file order.

    Not ``dmeta.c2m.data.event_log``, whose natural ids make integers of an id column whose
    ids are all canonical integers: those sort (users, vocabulary ties) apart from the text
    ids of the out-of-core path.
    """
    return events.sort_values(["user_id", "timestamp"], kind="stable", ignore_index=True)


def pandas_sequences(events: pd.DataFrame, *, max_len: int, max_items: int | None = None):
    """(items, categories, sequences) by ``build_vocabulary`` / ``build_sequences``."""
    from dmeta.c2m.sequences import build_sequences, build_vocabulary

    items = build_vocabulary(events["item_id"].to_numpy(), max_size=max_items)
    cats = build_vocabulary(events["category_id"].to_numpy())
    return items, cats, build_sequences(events, max_len=max_len, items=items, categories=cats)


def _sequences_frame(seqs: BehaviorSequences) -> pl.DataFrame:
    lengths = seqs.mask.sum(1)
    cols = {
        name: [row[:n].tolist() for row, n in zip(getattr(seqs, name), lengths)]
        for name in ("behavior", "item", "category")
    }
    return pl.DataFrame(
        {
            "user_id": seqs.users,
            **{k: pl.Series(v, dtype=pl.List(pl.Int32)) for k, v in cols.items()},
            "length": lengths.astype(np.int32),
        }
    )


# ---------------------------------------------------------------- input pipeline (Grain)


class SequenceSource:
    """Grain random-access source over sequence shards: record i -> padded features of a user.

    The shards are held ragged in memory (3 x i32 per event, plus offsets), so a process
    holds only the shards it reads (``sequence_dataset`` gives each process its own).
    """

    def __init__(self, paths: list[Path], max_len: int):
        frame = (pl.read_parquet(paths) if paths else pl.DataFrame(schema=_SEQ_SCHEMA)).sort(
            "user_id"
        )
        self.max_len = max_len
        self.users = frame["user_id"].to_numpy()
        lengths = frame["length"].to_numpy().astype(np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.values = (
            np.stack(
                [
                    frame[c].explode().to_numpy().astype(np.int32)
                    for c in ("behavior", "item", "category")
                ],
                axis=-1,
            )
            if len(frame)
            else np.zeros((0, 3), np.int32)
        )

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        lo, hi = self.offsets[i], self.offsets[i + 1]
        features = np.zeros((self.max_len, 3), np.int32)
        features[: hi - lo] = self.values[lo:hi]
        mask = np.zeros(self.max_len, bool)
        mask[: hi - lo] = True
        return {"user_id": self.users[i], "features": features, "mask": mask}


_SEQ_SCHEMA = {
    "user_id": pl.String,
    "behavior": pl.List(pl.Int32),
    "item": pl.List(pl.Int32),
    "category": pl.List(pl.Int32),
    "length": pl.Int32,
}


def sequence_dataset(
    shards: list[Path] | str | Path,
    *,
    max_len: int,
    batch_size: int,
    seed: int,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
):
    """This process's Grain pipeline: its block of shards, shuffled per epoch, batched.

    Returns a ``grain.MapDataset``; ``iter(ds.to_iter_dataset())`` gives an iterator whose
    ``get_state()`` / ``set_state(state)`` checkpoint and restore the position exactly
    (epoch, shuffle and batch included: the order is a pure function of ``seed`` and the
    index). Shards go to processes by ``dmeta.distributed.process_shard``; every process
    gets its own shuffle seed (``seed`` + process index). With ``num_epochs=None`` the
    dataset repeats forever (reshuffled every epoch), so every process yields a batch per
    step however its shard sizes differ.
    """
    import grain

    from dmeta.distributed import process_shard

    if isinstance(shards, (str, Path)):
        shards = sorted(Path(shards).glob("seq-*.parquet"))
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    mine = list(shards)[process_shard(len(shards), process_index, process_count)]
    source = SequenceSource(mine, max_len)
    if len(source) == 0:
        raise ValueError(f"process {process_index} of {process_count}: no sequences in its shards")
    return (
        grain.MapDataset.source(source)
        .shuffle(seed=seed + process_index)
        .repeat(num_epochs)
        .batch(batch_size, drop_remainder=True)
    )
