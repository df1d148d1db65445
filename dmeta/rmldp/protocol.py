"""The RMLDP protocol (section 6.1): data preparation, methods, tuning and scoring.

Segments sorted by records, the top 70% meta-train, the rest alternate into
meta-validation (early stopping, tuning) and meta-testing (the target segments, each with
its support samples before a time cut and query samples after it). Every method predicts
the target segments' query samples; MAPE (zero targets excluded), WAPE, sMAPE and MSE on
raw demand, per target segment, averaged per category group. Every method's
hyperparameters are tuned the same way (``dmeta.train.harness.tune``, meta-validation
MAPE; see ``dmeta.rmldp.config``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.sharding import Mesh

from dmeta import distributed, metrics
from dmeta.config import ConfigError
from dmeta.data.frames import DataError, LongFrame, validate_long
from dmeta.data.spec import parse_data_spec
from dmeta.data.synthetic import make_demand
from dmeta.data.tasks import (
    TaskPool,
    build_task_pool,
    eval_tasks,
    pool_rows,
    sample_strata,
    sample_tasks,
    split_segments,
    unscale,
)
from dmeta.data.windows import make_windows, n_records, season_length, to_panel
from dmeta.datasets import LOADERS, groceries, table, walmart
from dmeta.graph.cooccurrence import cooccurrence_graph, edge_graph
from dmeta.graph.deepwalk import deepwalk
from dmeta.meta.steps import with_host_sampler, with_sampler
from dmeta.parallel import data_mesh, jit_step
from dmeta.rmldp import baselines as fb
from dmeta.rmldp.config import RMLDPConfig, TrainConfig
from dmeta.rmldp.model import init_rmldp, make_train_step, meta_test, segment_representations
from dmeta.train.harness import Cell, Tuned, hp_rows, shared_choice, tune, tuning_memo
from dmeta.train.loop import fit
from dmeta.train.state import init_train_state
from dmeta.types import TaskBatch

logger = logging.getLogger(__name__)

CLASSICAL = {"Linear Regression": "linear", "SVR": "svr", "Random Forest": "rf", "XGBoost": "xgb"}
NEURAL = {"GRU+MPFN": "gru_mpfn", "Dipole+MPFN": "dipole_mpfn", "LSTNet": "lstnet"}
# RMLDP variants and the meta-learning baselines: init_rmldp switches over the config's
# ``model`` fields. The section 6.2.2 ablations drop a part; RMLDP-lindec decodes eq. 10
# with one linear layer instead of the paper's MPFN; RMLDP-bias0 starts the modulator's
# bias at 0 (a plain layer's; theta_0i = 0.5 theta_0) instead of 3 (0.95 theta_0).
META = {
    "MAML": dict(use_data=False, use_graph=False),
    "Meta-SGD": dict(use_data=False, use_graph=False, meta_sgd=True),
    "RMLDP": {},
    "RMLDP-d": dict(use_data=False),
    "RMLDP-g": dict(use_graph=False),
    "RMLDP-szn": dict(use_season=False),
    "RMLDP-local": dict(use_local=False),
    "RMLDP-lindec": dict(decoder="linear"),
    "RMLDP-bias0": dict(modulator_bias=0.0),
}
METHODS = (*CLASSICAL, *NEURAL, "Fine-tune", *META, "Naive")
NEEDS_GRAPH = ("RMLDP", "RMLDP-d")
GRAPH_KEY = 10_000  # one DeepWalk run per dataset, shared by every seed and method


@dataclasses.dataclass(frozen=True, eq=False)
class DemandData:
    """A dataset ready for the RMLDP protocol.

    Attributes:
      name: dataset name used in results.
      frame: the validated long frame.
      groups: unique_id -> category group (the columns of Tables 2-3).
      baskets: ``basket_id, unique_id`` rows (and ``date`` when known), or None.
      edges: ``src, dst, weight`` rows, or None.
    """

    name: str
    frame: LongFrame
    groups: pd.Series
    baskets: pd.DataFrame | None = None
    edges: pd.DataFrame | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class Prepared:
    """One dataset cut into the RMLDP protocol for one |T_c|.

    Attributes:
      data: the loaded dataset.
      seq_len: |T_c|.
      pool: task pool of every segment.
      ids: [I] segment ids (pool rows).
      train: segment indices for meta-training.
      source: every sample of the meta-training segments (support before, query after
        their cut), the training set of the classical and global neural baselines.
      target: meta-testing tasks (support before the cut, query after it).
      val_tasks: meta-validation tasks.
      groups: [T] category group of each target task.
      weights: f32[I, I] knowledge graph, or None.
      counts: segments per role (with and without a task) for the report.
    """

    data: DemandData
    seq_len: int
    pool: TaskPool
    ids: np.ndarray
    train: np.ndarray
    source: TaskBatch
    target: TaskBatch
    val_tasks: TaskBatch
    groups: np.ndarray
    weights: np.ndarray | None
    counts: dict[str, int]


@dataclasses.dataclass(frozen=True, eq=False)
class Context:
    """What every cell of one setting shares: the prepared data, the graph embedding
    u_g f32[I, D], a cache of compiled meta-learners (one per variant and number of inner
    steps: the step sizes are arguments) and of the global neural models' functions (one
    per architecture), and ``memo``, each (method, seed)'s tuning result and chosen fit
    (``tuned``), so Fine-tune's base model and a sweep cell at the main |T_c| reuse the
    models their own cells trained. ``out`` (the run folder) and ``setting`` (the
    setting's name) locate the choices its seeds share when ``tuning.per_seed`` is False."""

    prep: Prepared
    cfg: RMLDPConfig
    graph_emb: jax.Array
    runners: dict = dataclasses.field(default_factory=dict)
    memo: dict = dataclasses.field(default_factory=dict)
    out: Path | None = None
    setting: str = "main"


def synthetic_kwargs(cfg: RMLDPConfig) -> dict:
    """``make_demand`` keyword arguments of a config."""
    d = cfg.data
    return dict(
        n_segments=d.n_segments,
        n_clusters=d.n_clusters,
        carryover=d.carryover,
        carryover_levels=d.carryover_levels,
        shared_weekly=d.shared_weekly,
        seed=d.data_seed,
    )


def load_data(spec: str, cfg: RMLDPConfig) -> DemandData:
    """``--data`` spec (synthetic, walmart, groceries, table:PATH) -> ``DemandData``,
    subsampled to ``data.max_segments``."""
    parsed = parse_data_spec(spec)
    if parsed.name == "synthetic":
        data = load_synthetic(**synthetic_kwargs(cfg))
    elif parsed.name == "walmart":
        data = from_walmart(LOADERS["walmart"](parsed.path))
    elif parsed.name == "groceries":
        data = from_groceries(LOADERS["groceries"](parsed.path))
    elif parsed.name == "table":
        data = from_table(
            LOADERS["table"](parsed.path, baskets=cfg.data.baskets, edges=cfg.data.edges)
        )
    else:
        raise DataError(f"--data {spec!r}: rmldp reads synthetic, walmart, groceries or table:PATH")
    if cfg.data.calendar:
        data = with_calendar(data)
    return subsample(data, cfg.data.max_segments)


def calendar_columns(ds: pd.Series, freq: str) -> pd.DataFrame:
    """The paper's calendar feature group for dates ``ds``: month one-hot (12) and the
    position in the year as a sine / cosine pair, plus the day of the week one-hot (7) on
    daily data. Columns ``cal_*``, float64, index of ``ds``."""
    ds = pd.to_datetime(ds)
    phase = 2 * np.pi * (ds.dt.day_of_year - 1) / 365.25
    cols = {"cal_year_sin": np.sin(phase), "cal_year_cos": np.cos(phase)}
    cols |= {f"cal_month{m}": (ds.dt.month == m) for m in range(1, 13)}
    if freq.upper() == "D":
        cols |= {f"cal_dow{d}": (ds.dt.day_of_week == d) for d in range(7)}
    return pd.DataFrame(cols, index=ds.index).astype(np.float64)


def with_calendar(data: DemandData) -> DemandData:
    """``data`` with ``calendar_columns`` appended to its features (``data.calendar``)."""
    lf = data.frame
    cal = calendar_columns(lf.frame["ds"], lf.freq)
    frame = pd.concat([lf.frame, cal], axis=1)
    logger.info("%s: %d calendar features added", data.name, cal.shape[1])
    long = dataclasses.replace(lf, frame=frame, feature_cols=(*lf.feature_cols, *cal.columns))
    return dataclasses.replace(data, frame=long)


def from_walmart(src: walmart.Walmart) -> DemandData:
    """Store x department weekly sales with the holiday flag and the store-week features;
    groups are the store types A/B/C; no baskets, so no knowledge graph."""
    if src.features is None:
        raise DataError(f"{src.features_path}: not found (RMLDP reads the store-week features)")
    feats = src.features[["store", "date", *walmart.FEATURES]]
    merged = src.train.merge(feats, on=["store", "date"], how="left")
    missing = merged[list(walmart.FEATURES)].isna()
    if missing.any().any():
        row = int(np.flatnonzero(missing.any(axis=1).to_numpy())[0])
        col = missing.columns[missing.iloc[row].to_numpy()][0]
        raise DataError(
            f"{src.features_path}: column {col!r} has no value for store {merged['store'].iloc[row]} "
            f"week {merged['date'].iloc[row].date()} (needed by {src.train_path} line "
            f"{merged['_line'].iloc[row]})"
        )
    long = pd.DataFrame({
        "unique_id": merged["store"] + "_" + merged["dept"],
        "ds": merged["date"],
        "y": merged["weekly_sales"],
        "holiday": merged["holiday"].astype(np.float64),
        **{col.lower(): merged[col].to_numpy() for col in walmart.FEATURES},
    })  # fmt: skip
    frame = validate_long(long, source=str(src.train_path), freq="W-FRI",
                          lines=merged["_line"].to_numpy())  # fmt: skip
    store_type = dict(zip(src.stores["store"], src.stores["type"], strict=True))
    ids = frame.frame["unique_id"].drop_duplicates()
    groups = [f"type{store_type.get(i.split('_')[0], '?')}" for i in ids]
    return DemandData("walmart", frame, pd.Series(groups, index=ids.to_numpy()))


def from_groceries(src: groceries.Groceries) -> DemandData:
    """Item categories' daily demand (items bought per day) with the day's number of baskets
    as the feature; (member, date) baskets give the co-occurrence knowledge graph."""
    rows = src.purchases
    basket = rows["member"] + "@" + rows["date"].dt.strftime("%Y-%m-%d")
    counts = (
        pd.DataFrame({"unique_id": rows["item"], "ds": rows["date"]})
        .groupby(["unique_id", "ds"]).size().rename("y").reset_index()
    )  # fmt: skip
    n_baskets = basket.groupby(rows["date"]).nunique()
    counts["baskets"] = counts["ds"].map(n_baskets).astype(np.float64)
    # Days inside a category's span without a purchase are zero demand (validate_long logs
    # the fill); their 'baskets' feature is forward-filled, so we set the true value after.
    frame = validate_long(counts.astype({"y": np.float64}), source=str(src.path), freq="D")
    calendar = pd.date_range(rows["date"].min(), rows["date"].max(), freq="D")
    frame.frame["baskets"] = (
        frame.frame["ds"].map(n_baskets.reindex(calendar, fill_value=0)).astype(np.float64)
    )
    baskets = pd.DataFrame({"basket_id": basket, "unique_id": rows["item"], "date": rows["date"]})
    ids = frame.frame["unique_id"].drop_duplicates().to_numpy()
    return DemandData("groceries", frame, pd.Series("all", index=ids), baskets=baskets)


def from_table(src: table.Table) -> DemandData:
    """Any long table; a constant ``category`` column per series gives the groups."""
    frame = table.long_frame(src)
    ids = frame.frame["unique_id"].drop_duplicates().to_numpy()
    groups = pd.Series("all", index=ids) if src.groups is None else src.groups.astype(str)
    return DemandData(src.path.stem, frame, groups.reindex(ids).fillna("all"),
                      baskets=src.baskets, edges=src.edges)  # fmt: skip


def load_synthetic(*, seed: int = 0, **kwargs) -> DemandData:
    """``make_demand`` with its categories as groups and its baskets."""
    demand = make_demand(seed=seed, **kwargs)
    groups = demand.segments.set_index("unique_id")["category"]
    return DemandData("synthetic", validate_long(demand.frame), groups, baskets=demand.baskets)


def subsample(data: DemandData, max_segments: int | None, seed: int = 0) -> DemandData:
    """A seeded random subset of ``max_segments`` segments (all when None or fewer)."""
    ids = data.groups.index.to_numpy()
    if max_segments is None or len(ids) <= max_segments:
        return data
    keep = np.random.default_rng(seed).choice(ids, max_segments, replace=False)
    frame = data.frame.frame[data.frame.frame["unique_id"].isin(keep)].reset_index(drop=True)
    logger.info("%s: kept %d of %d segments (max_segments)", data.name, max_segments, len(ids))
    return dataclasses.replace(
        data,
        frame=dataclasses.replace(data.frame, frame=frame),
        groups=data.groups[data.groups.index.isin(keep)],
    )


def prepare(data: DemandData, cfg: RMLDPConfig, *, seq_len: int) -> Prepared:
    """Windows, task pool, segment roles, target tasks and knowledge graph."""
    p = cfg.protocol
    panel = to_panel(data.frame)
    windows = make_windows(
        panel,
        seq_len=seq_len,
        horizon_gap=p.horizon_gap,
        horizon_len=p.horizon_len,
        season=p.season or season_length(panel.freq),
    )
    pool = build_task_pool(windows, support_frac=p.support_frac)
    roles = split_segments(n_records(panel), train_frac=p.train_frac)
    train = roles.train[(np.asarray(pool.cut) > 0)[roles.train]]
    limits = dict(max_support=p.max_support, max_query=p.max_query)
    target = eval_tasks(pool, roles.test, **limits)
    groups = data.groups.reindex(panel.ids).fillna("all").to_numpy()
    evaluated = np.concatenate([roles.val, roles.test])
    weights = graph_weights(
        data, panel.ids, cfg, before=first_query_date(pool, panel.dates, evaluated)
    )
    counts = {
        "segments": len(panel.ids),
        "meta-train": len(roles.train),
        "meta-train with samples": len(train),
        "meta-val": len(roles.val),
        "meta-test": len(roles.test),
        "meta-test with support+query": int(target.segment.shape[0]),
    }
    if weights is not None:
        counts["graph links"] = int((weights > 0).sum() // 2)
        counts["segments without a link"] = int((~(weights > 0).any(1)).sum())
    return Prepared(
        data,
        seq_len,
        pool,
        panel.ids,
        train,
        eval_tasks(pool, train),
        target,
        eval_tasks(pool, roles.val, **limits),
        groups[np.asarray(target.segment)],
        weights,
        counts,
    )


def context(data: DemandData, cfg: RMLDPConfig, *, seq_len: int) -> Context:
    """``prepare`` plus the standardized DeepWalk embeddings (zeros without a graph)."""
    prep = prepare(data, cfg, seq_len=seq_len)
    dim = cfg.model.graph_dim
    if prep.weights is None:
        return Context(prep, cfg, jnp.zeros((len(prep.ids), dim)))
    key = jax.random.key(GRAPH_KEY)
    emb = deepwalk(
        key, jnp.asarray(prep.weights), dim=dim, **dataclasses.asdict(cfg.graph.deepwalk)
    )
    return Context(prep, cfg, (emb - emb.mean(0)) / (emb.std(0) + 1e-6))


def first_query_date(pool: TaskPool, dates: pd.DatetimeIndex, segments: np.ndarray) -> pd.Timestamp:
    """Calendar date of the earliest first query sample (its prediction time t_c) of
    ``segments`` that have a task (the meta-validation and meta-test segments)."""
    cut, q0 = np.asarray(pool.cut), np.asarray(pool.query_start)
    segments = segments[cut[segments] > 0]
    return dates[int(np.asarray(pool.t_c)[segments, q0[segments]].min())]


def baskets_before(baskets: pd.DataFrame, before: pd.Timestamp | None, source: str):
    """The baskets dated strictly before ``before`` (all without a ``date`` column or a
    date), so the graph holds no purchase from a target's query period."""
    if before is None or "date" not in baskets.columns:
        logger.info("%s: no basket dates, the graph uses every basket", source)
        return baskets
    dates = pd.to_datetime(baskets["date"], errors="coerce")
    if dates.isna().any():
        row = int(np.flatnonzero(dates.isna().to_numpy())[0])
        raise DataError(
            f"{source}: basket row {row + 1} has no valid date ({baskets['date'].iloc[row]!r})"
        )
    kept = baskets[(dates < before).to_numpy()]
    logger.info("%s: graph from the %d of %d basket rows before %s (the first target query)",
                source, len(kept), len(baskets), before.date())  # fmt: skip
    return kept


def graph_weights(
    data: DemandData, ids: np.ndarray, cfg: RMLDPConfig, *, before: pd.Timestamp | None = None
) -> np.ndarray | None:
    """f32[I, I] knowledge graph from the data's baskets (dated ones strictly before
    ``before``, the earliest query time of a meta-validation or meta-test segment;
    co-occurrence counts below ``graph.threshold`` dropped) or edge list (weights below
    ``graph.edge_threshold`` dropped; 0 keeps every given edge); None without either. A
    graph in which most segments have no link is logged as a warning (the report repeats
    it)."""
    if data.baskets is not None:
        source = cfg.data.baskets or f"{data.name} baskets"
        weights = cooccurrence_graph(
            baskets_before(data.baskets, before, source), ids, threshold=cfg.graph.threshold,
            unknown="drop", source=source,
        )  # fmt: skip
    elif data.edges is not None:
        source = cfg.data.edges or f"{data.name} edges"
        weights = edge_graph(
            data.edges, ids, threshold=cfg.graph.edge_threshold, unknown="drop", source=source
        )
    else:
        return None
    isolated = int((~(weights > 0).any(1)).sum())
    if isolated > len(ids) / 2:
        logger.warning("knowledge graph: %d of %d segments have no link", isolated, len(ids))
    return weights


def runnable(methods: tuple[str, ...], prep: Prepared) -> tuple[str, ...]:
    """``methods`` without the graph variants when the data have no baskets or edges.

    Raises:
      ConfigError: a graph variant is asked for and the given baskets / edges leave no link.
    """
    if prep.weights is not None:
        wanted = [m for m in methods if m in NEEDS_GRAPH]
        if wanted and not (prep.weights > 0).any():
            raise ConfigError(
                f"{prep.data.name}: {wanted} need a knowledge graph, but the baskets / edges "
                "give no link (lower graph.threshold or graph.edge_threshold, or leave "
                "them out of --methods)"
            )
        return methods
    skipped = [m for m in methods if m in NEEDS_GRAPH]
    if skipped:
        logger.warning("%s has no baskets or edges: %s not run", prep.data.name, skipped)
    return tuple(m for m in methods if m not in NEEDS_GRAPH)


def full_variant(methods: tuple[str, ...]) -> str:
    """The full RMLDP of a run: RMLDP, or RMLDP-g without a graph."""
    return "RMLDP" if "RMLDP" in methods else "RMLDP-g"


@dataclasses.dataclass(frozen=True, eq=False)
class MetaRunner:
    """A META variant with a given number of inner steps: its jitted Algorithm 1 step and
    evaluation, reused across seeds and step sizes.

    Attributes:
      name: the variant.
      inner_steps: inner SGD steps (static: the unrolled loop).
      model: the variant's static structure.
      init: ``init(key, inner_lr) -> Theta`` (Meta-SGD starts its step sizes at inner_lr).
      step: jitted ``step(state, inner_lr, lam) -> (state, metrics)`` (sampling folded in;
        the outer Adam rate beta lives in the optimizer state); with ``train.strata`` a host
        function around a jitted step (``with_host_sampler``).
      test: ``test(Theta, tasks, inner_lr) -> f32[T, N_q]`` (eq. 8).
    """

    name: str
    inner_steps: int
    model: object
    init: Callable
    step: Callable
    test: Callable


def meta_runner(name: str, ctx: Context, inner_steps: int) -> MetaRunner:
    """The ``MetaRunner`` of variant ``name`` with ``inner_steps`` inner steps: one compiled
    step for every inner step size alpha and meta learning rate beta of a tuning grid."""
    prep, t = ctx.prep, ctx.cfg.train
    init = functools.partial(
        init_rmldp,
        n_features=prep.pool.values.shape[-1],
        seq_len=prep.seq_len,
        **{**dataclasses.asdict(ctx.cfg.model), **META[name]},
    )
    model, _ = init(jax.random.key(0))
    mesh = data_mesh() if t.data_parallel or t.strata else None

    def train_step(state, batch, key, inner_lr, lam):
        return make_train_step(
            model, ctx.graph_emb, fb.adam(0.0), lam=lam, mesh=mesh, remat=t.remat,
            strategy=t.strategy, steps=inner_steps, step_size=inner_lr,
        )(state, batch, key)  # fmt: skip

    if t.strata:
        batch_step = jit_step(train_step, mesh, batch_argnums=(1,))
        step = with_host_sampler(batch_step, strata_sampler(prep, t, mesh))
    else:
        sample = functools.partial(
            sample_tasks,
            pool=prep.pool,
            segments=jnp.asarray(prep.train),
            n_tasks=t.n_tasks,
            n_support=t.n_support,
            n_query=t.n_query,
            sampler=t.task_sampler,
            scaling=t.task_scaling,
        )
        step = jit_step(with_sampler(train_step, sample), mesh)
    test = functools.partial(meta_test, model, graph_emb=ctx.graph_emb, steps=inner_steps)
    return MetaRunner(
        name,
        inner_steps,
        model,
        lambda key, inner_lr: init(key, step_size=inner_lr)[1],
        step,
        lambda theta, tasks, inner_lr: test(theta, tasks=tasks, step_size=inner_lr),
    )


def strata_sampler(prep: Prepared, t: TrainConfig, mesh: Mesh) -> Callable[[jax.Array], TaskBatch]:
    """``sample(key) -> TaskBatch``: the global meta-batch of ``n_tasks`` tasks, of which
    this process draws and feeds only its strata's part (``train.strata``).

    The meta-training segments (``prep.train``) form ``t.strata`` contiguous strata
    (``distributed.Strata.split``); this process keeps the pool rows of its strata's
    segments only (``pool_rows``), draws ``n_tasks / S`` tasks of each of them
    (``sample_strata``, a jitted host call on the key's value) and places them on its
    devices of ``mesh`` (``distributed.global_batch``); task segments are global indices.

    Raises:
      ConfigError: fewer meta-training segments than strata.
    """
    if len(prep.train) < t.strata:
        raise ConfigError(f"train.strata={t.strata}: only {len(prep.train)} meta-training segments")
    strata = distributed.Strata.split(len(prep.train), t.strata)
    segments = jnp.asarray(prep.train[strata.rows()])  # i[N]: this process's segments
    pool = pool_rows(prep.pool, segments)
    local = {s: jnp.arange(b.start, b.stop) for s, b in zip(strata.local, strata.local_slices())}
    kw = dict(n_tasks=t.n_tasks, n_support=t.n_support, n_query=t.n_query)
    kw |= dict(sampler=t.task_sampler, scaling=t.task_scaling)

    @jax.jit
    def draw(key: jax.Array) -> TaskBatch:
        batch = sample_strata(key, pool, local, n_strata=t.strata, **kw)
        return dataclasses.replace(batch, segment=segments[batch.segment])

    def sample(key: jax.Array) -> TaskBatch:
        data = distributed.to_host(jax.random.key_data(key))
        batch = draw(jax.random.wrap_key_data(data, impl=jax.random.key_impl(key)))
        return distributed.global_batch(jax.tree.map(np.asarray, batch), mesh)

    logger.info(
        "process %d: meta-training strata %s of %d, %d of %d segments",
        jax.process_index(), list(strata.local), t.strata, len(segments), len(prep.train),
    )  # fmt: skip
    return sample


def train_meta(runner: MetaRunner, ctx: Context, key: jax.Array, hp: dict):
    """Algorithm 1 with early stopping on the meta-validation score (``stop_score``);
    returns the best Theta."""
    k_init, k_state = jax.random.split(key)
    val, t = ctx.prep.val_tasks, ctx.cfg.train
    inner_lr = jnp.float32(hp["inner_lr"])
    lam = jnp.float32(hp.get("lam", t.lam))  # tuned only with tuning.meta.lam

    score = stop_score(ctx)

    def eval_fn(state):
        pred = runner.test(state.params, val, inner_lr)
        if score is None:
            return {"val_loss": float(metrics.mse(val.query.y, pred, val.query.mask))}
        return {"val_loss": score(np.asarray(pred))}

    state = init_train_state(runner.init(k_init, hp["inner_lr"]), fb.adam(hp["meta_lr"]), k_state)

    def step(state):
        return runner.step(state, inner_lr, lam)

    if hasattr(runner.step, "metric_shapes"):  # host-sampled (train.strata)
        step.metric_shapes = lambda state: runner.step.metric_shapes(state, inner_lr, lam)
    result = fit(
        step,
        state,
        n_steps=t.meta_steps,
        eval_fn=eval_fn,
        eval_every=t.eval_every,
        patience=t.patience,
        desc=f"{runner.name} steps={runner.inner_steps} alpha={hp['inner_lr']:g} "
        f"beta={hp['meta_lr']:g}",
        # what shapes the run outside the state: lambda, the tasks' pool and segments, the
        # validation tasks and the training settings (task sampler, meta-batch, ...)
        settings=dict(lam=lam, pool=ctx.prep.pool, segments=ctx.prep.train, val=val, train=t),
    )
    return result.best_state.params


def grid(name: str, cfg: RMLDPConfig) -> dict[str, tuple]:
    """The tuning grid of method ``name`` (name -> values, first values the defaults)."""
    t = cfg.tuning
    sections = {"Fine-tune": t.finetune, "SVR": t.svr, "Random Forest": t.rf, "XGBoost": t.xgb}
    if name in META:
        meta = dataclasses.asdict(t.meta)
        lam = meta.pop("lam")
        if lam is not None and META[name].get("use_data", True):
            meta["lam"] = (cfg.train.lam, *lam)
        return meta
    if name in NEURAL:
        return dataclasses.asdict(t.neural)
    return dataclasses.asdict(sections[name]) if name in sections else {}


@dataclasses.dataclass(frozen=True)
class Fitted:
    """One method at one grid point: query predictions f32[T, N_q] on the meta-validation
    (``val``) and target tasks, and the fitted model (``(model, Theta)`` of a META variant,
    ``(apply, params)`` of a neural model, the regressor of a classical one)."""

    val: np.ndarray
    target: np.ndarray
    model: object


def method_key(name: str, seed: int) -> jax.Array:
    """The PRNG key of method ``name`` and model seed ``seed`` (Fine-tune: its GRU+MPFN's)."""
    base = "GRU+MPFN" if name == "Fine-tune" else name
    return jax.random.fold_in(jax.random.key(seed), METHODS.index(base))


def fit_classical(name: str, ctx: Context, seed: int, hp: dict) -> Fitted:
    """A classical regressor on every source sample plus the target support sets."""
    prep = ctx.prep
    sets = (prep.source.support, prep.source.query, prep.target.support)
    parts = [fb.flatten_split(s) for s in sets]
    xy = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    limit = None if name == "Linear Regression" else ctx.cfg.baselines.max_train_classical
    model = fb.fit_classical(CLASSICAL[name], xy, max_train=limit, seed=seed, params=hp)
    return Fitted(
        fb.predict_classical(model, prep.val_tasks.query),
        fb.predict_classical(model, prep.target.query),
        model,
    )


def fit_naive(name: str, ctx: Context, seed: int, hp: dict) -> Fitted:
    """The naive forecast (``baselines.naive_predict``): nothing to fit or tune."""
    del name, seed, hp
    pred = [
        np.asarray(fb.naive_predict(t.query, ctx.prep.pool.horizon_len))
        for t in (ctx.prep.val_tasks, ctx.prep.target)
    ]
    return Fitted(*pred, None)


def fit_neural(name: str, ctx: Context, seed: int, hp: dict) -> Fitted:
    """A global neural model on the pooled samples (Fine-tune: its GRU+MPFN), early-stopped
    on the meta-validation score like the META variants (``stop_score``, ``train.eval_every``
    / ``train.patience``), with the parameters of its best evaluation."""
    prep, t = ctx.prep, ctx.cfg.train
    k_init, k_train = jax.random.split(method_key(name, seed))
    apply, params = fb.build_neural(
        NEURAL[name], prep.pool.values.shape[-1], ctx.cfg.model.hidden, seq_len=prep.seq_len,
        key=k_init, gru_impl=ctx.cfg.model.gru_impl,
    )  # fmt: skip
    # one apply per architecture (its graphdef holds no values), so the jitted training and
    # prediction compile once for every seed and grid point of this setting
    apply = ctx.runners.setdefault(("neural", name), apply)
    samples = jax.tree.map(
        lambda *a: jnp.concatenate(a),
        *(fb.pooled_samples(s) for s in (prep.source.support, prep.source.query)),
        fb.pooled_samples(prep.target.support),
    )
    steps, lr = hp["train_steps"], hp["learning_rate"]
    result = fb.train_global(
        apply, params, samples, k_train, n_steps=steps, batch_size=ctx.cfg.baselines.global_batch,
        learning_rate=lr, val=prep.val_tasks, val_score=stop_score(ctx), eval_every=t.eval_every,
        patience=t.patience, desc=f"{name} lr={lr:g} steps={steps}",
    )  # fmt: skip
    params = result.best_state.params
    pred = functools.partial(fb.finetune_predict, apply, params, steps=0, step_size=0.0)
    return Fitted(np.asarray(pred(prep.val_tasks)), np.asarray(pred(prep.target)), (apply, params))


def fit_meta(name: str, ctx: Context, seed: int, hp: dict) -> Fitted:
    """A META variant meta-trained (Algorithm 1) and adapted to each task (eq. 8)."""
    key = ("meta", name, hp["inner_steps"])
    if key not in ctx.runners:
        ctx.runners[key] = meta_runner(name, ctx, hp["inner_steps"])
    runner = ctx.runners[key]
    theta = train_meta(runner, ctx, method_key(name, seed), hp)
    val, target = (
        np.asarray(runner.test(theta, tasks, hp["inner_lr"]))
        for tasks in (ctx.prep.val_tasks, ctx.prep.target)
    )
    return Fitted(val, target, (runner.model, theta))


def val_mape(ctx: Context, pred: np.ndarray) -> float:
    """Meta-validation MAPE of query predictions f32[T, N_q], the score every method's
    tuning minimizes: the mean or median (``protocol.selection``) over segments (inf when
    no segment has one)."""
    mape = segment_errors(ctx.prep, ctx.prep.val_tasks, pred)["mape"]
    if not np.isfinite(mape).any():
        return np.inf
    summary = np.nanmedian if ctx.cfg.protocol.selection == "median" else np.nanmean
    return float(summary(mape))


def stop_score(ctx: Context) -> Callable[[np.ndarray], float] | None:
    """Early stopping's score of meta-validation query predictions: None (their MSE in
    scaled units) with ``protocol.selection="mean"``, else ``val_mape``."""
    if ctx.cfg.protocol.selection == "mean":
        return None
    return functools.partial(val_mape, ctx)


def tuned(name: str, ctx: Context, seed: int) -> tuple[Tuned, Fitted]:
    """Method ``name`` tuned on meta-validation MAPE over ``tuning.trials`` grid points;
    memoized per (method, seed) in ``ctx.memo``. With ``tuning.per_seed`` False (and a run
    folder) the setting's first seed of the method tunes and the others fit its choice once
    (``dmeta.train.harness.shared_choice``)."""
    if (name, seed) not in ctx.memo:
        ctx.memo[name, seed] = _tuned(name, ctx, seed)
    return ctx.memo[name, seed]


def _tuned(name: str, ctx: Context, seed: int) -> tuple[Tuned, Fitted]:
    tune_one = tuned_finetune if name == "Fine-tune" else tuned_fit
    own = set(grid(name, ctx.cfg))  # Fine-tune's best also lists its base's choice
    tuned_here = []

    def choose() -> dict:
        tuned_here.append(tune_one(name, ctx, seed))
        return {k: v for k, v in tuned_here[0][0].best.items() if k in own}

    cell, per_seed = Cell(name, seed, ctx.setting), ctx.cfg.tuning.per_seed
    best = shared_choice(ctx.out, cell, choose, per_seed=per_seed)
    if tuned_here:  # tuned here: the chosen fit is at hand
        return tuned_here[0]
    return tune_one(name, ctx, seed, points={k: (v,) for k, v in best.items()})


def tuned_fit(
    name: str, ctx: Context, seed: int, points: dict[str, tuple] | None = None
) -> tuple[Tuned, Fitted]:
    """A classical, global neural or META method (or Naive, with no grid) fitted at each of
    ``tuning.trials`` points of its grid (or of ``points``); the point of lowest
    meta-validation MAPE and its fit."""
    fitters = {**dict.fromkeys(META, fit_meta), **dict.fromkeys(NEURAL, fit_neural)}
    fitter = {**fitters, "Naive": fit_naive}.get(name, fit_classical)
    fits = {}

    def evaluate(point: dict) -> float:
        fits[tuple(point.items())] = fitted = fitter(name, ctx, seed, point)
        return val_mape(ctx, fitted.val)

    memo = _memo(name, ctx, seed) if points is None else None
    points = grid(name, ctx.cfg) if points is None else points
    result = tune(points, evaluate, trials=ctx.cfg.tuning.trials, score_single=True, memo=memo)
    best = tuple(result.best.items())
    return result, fits[best] if best in fits else fitter(name, ctx, seed, result.best)


def _memo(name: str, ctx: Context, seed: int):
    """Where a tuning of ``name`` records its scores (``dmeta.train.harness.tuning_memo``)."""
    per_seed = ctx.cfg.tuning.per_seed
    return tuning_memo(ctx.out, Cell(name, seed, ctx.setting), per_seed=per_seed)


def tuned_finetune(
    name: str, ctx: Context, seed: int, points: dict[str, tuple] | None = None
) -> tuple[Tuned, Fitted]:
    """Fine-tune (paper 6.1): this seed's GRU+MPFN as its own tuning chose it (memoized,
    not retrained), adapted by SGD on each target's support set. Only the adaptation
    (``tuning.finetune``: steps x step size, or ``points``) is tuned, on ``tuning.trials``
    points like every method; the base model's chosen values are reported with it."""
    base, fitted = tuned("GRU+MPFN", ctx, seed)
    apply, params = fitted.model
    preds = {}

    def evaluate(point: dict) -> float:
        adapt = functools.partial(
            fb.finetune_predict, apply, params, steps=point["adapt_steps"],
            step_size=point["adapt_step_size"],
        )  # fmt: skip
        preds[tuple(point.items())] = (np.asarray(adapt(ctx.prep.val_tasks)), adapt)
        return val_mape(ctx, preds[tuple(point.items())][0])

    memo = _memo(name, ctx, seed) if points is None else None
    points = grid(name, ctx.cfg) if points is None else points
    result = tune(points, evaluate, trials=ctx.cfg.tuning.trials, score_single=True, memo=memo)
    if tuple(result.best.items()) not in preds:  # scored by an earlier, killed run
        evaluate(result.best)
    val, adapt = preds[tuple(result.best.items())]
    best = dataclasses.replace(result, best={**base.best, **result.best})
    return best, Fitted(val, np.asarray(adapt(ctx.prep.target)), fitted.model)


# Errors of every table on raw demand, per target segment: MAPE (the paper's; zero targets
# left out), WAPE = sum|e| / sum|y| and sMAPE (zero targets kept), MSE.
ERRORS = {"mape": metrics.mape, "wape": metrics.nmae, "smape": metrics.smape, "mse": metrics.mse}


def segment_errors(prep: Prepared, tasks: TaskBatch, pred) -> dict[str, np.ndarray]:
    """Per-segment errors f64[T] (``ERRORS`` by name) of query predictions [T, N_q] on raw
    demand (predictions clipped at 0; MAPE and WAPE are NaN where every query target is 0)."""
    seg = tasks.segment
    y = unscale(prep.pool, seg, tasks.query.y)
    yhat = unscale(prep.pool, seg, jnp.maximum(jnp.asarray(pred), 0.0))
    errors = jax.vmap(lambda *a: {k: f(*a) for k, f in ERRORS.items()})(y, yhat, tasks.query.mask)
    values = {k: np.asarray(v, np.float64) for k, v in errors.items()}
    return {k: np.where(np.isfinite(v), v, np.nan) for k, v in values.items()}


def segment_scores(prep: Prepared, pred: np.ndarray) -> pd.DataFrame:
    """Per target segment: ``segment, group`` and the ``ERRORS`` on raw demand."""
    errors = segment_errors(prep, prep.target, pred)
    return pd.DataFrame({"segment": targets(prep)["segment"], "group": prep.groups, **errors})


def targets(prep: Prepared) -> pd.DataFrame:
    """The target segments: ``segment`` id and category ``group``, in task order."""
    ids = [str(prep.ids[int(i)]) for i in prep.target.segment]
    return pd.DataFrame({"segment": ids, "group": prep.groups})


def score_rows(scores: pd.DataFrame, **keys) -> list[dict]:
    """Long rows of the ``ERRORS``: mean per group and over all target segments (NaN MAPE
    and WAPE left out), then each target segment's own (group ``seg:<id>``)."""
    rows = []
    parts = [("all", scores)] + list(scores.groupby("group", sort=True))
    if scores["group"].nunique() == 1:
        parts = parts[:1]
    for group, part in parts:
        for metric in ERRORS:
            value = part[metric].dropna().mean()
            rows.append(dict(keys, group=str(group), metric=metric, value=float(value)))
    for row in scores.itertuples(index=False):
        for metric in ERRORS:
            value = float(getattr(row, metric))
            rows.append(dict(keys, group=f"seg:{row.segment}", metric=metric, value=value))
    return rows


def representations(ctx: Context, model, theta) -> pd.DataFrame:
    """Segment representations q of the meta-test and meta-val segments:
    ``segment, group, q0 .. q{D-1}`` (Figure 7)."""
    prep = ctx.prep
    tasks = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), prep.target, prep.val_tasks)
    q = np.asarray(segment_representations(model, theta, ctx.graph_emb, tasks))
    ids = prep.ids[np.asarray(tasks.segment)]
    groups = prep.data.groups.reindex(ids).fillna("all").to_numpy()
    frame = pd.DataFrame(q.astype(np.float64), columns=[f"q{i}" for i in range(q.shape[1])])
    return frame.assign(segment=[str(i) for i in ids], group=groups)


def silhouette(q: np.ndarray, groups: np.ndarray) -> float:
    """Silhouette of q f32[N, D] by group (NaN unless 2 <= groups <= N - 1)."""
    labels, inverse = np.unique(groups, return_inverse=True)
    if not 2 <= len(labels) <= len(q) - 1:
        return float("nan")
    return float(metrics.silhouette(q, inverse))


def run_cell(
    ctx: Context, cell: Cell, *, dataset: str, represent: bool = False
) -> tuple[list[dict], pd.DataFrame | None]:
    """One (method, seed) of a setting: long rows (scores, ``hp:`` choices, seconds).

    Sweep settings keep the group means only, their group named ``<setting>/<group>``.
    With ``represent`` (a META variant): also its segment representations and a
    ``silhouette`` row."""
    start = time.perf_counter()
    result, fitted = tuned(cell.method, ctx, cell.seed)
    seconds = time.perf_counter() - start
    scores = segment_scores(ctx.prep, fitted.target)
    keys = dict(experiment="rmldp", dataset=dataset, method=cell.method, seed=cell.seed)
    rows = score_rows(scores, **keys)
    rows += [
        dict(keys, group="all", metric="seconds", value=seconds),
        *hp_rows(result.best, **keys),
    ]
    logger.info("%s: MAPE %.4f (%.1f s)", cell.key, scores["mape"].mean(), seconds)
    if cell.setting != "main":
        rows = [dict(r, group=f"{cell.setting}/{r['group']}") for r in rows]
        return [r for r in rows if "/seg:" not in r["group"]], None
    if not represent:
        return rows, None
    reps = representations(ctx, *fitted.model)
    value = silhouette(reps.filter(regex=r"^q\d+$").to_numpy(np.float32), reps["group"].to_numpy())
    return [*rows, dict(keys, group="all", metric="silhouette", value=value)], reps
