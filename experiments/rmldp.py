"""RMLDP: relation-aware meta-learning for data-poor segment demand (Tables 2-5, Figures 6-7).

Protocol (section 6.1): segments sorted by records, the top 70% meta-train, the rest
alternate into meta-validation (early stopping) and meta-testing (the target segments,
each with its support samples before a time cut and query samples after it). Every
method predicts the target segments' query samples; MAPE (zero targets excluded) and
MSE on raw demand, per target segment, averaged per category group. RMLDP is compared
with MAML by a paired t-test over target segments (per-segment MAPE averaged over seeds).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from dmeta import metrics
from dmeta.baselines import forecast_baselines as fb
from dmeta.data.loaders import (
    DemandData,
    load_groceries,
    load_synthetic,
    load_table,
    load_walmart,
)
from dmeta.data.spec import parse_data_spec
from dmeta.data.tasks import (
    TaskPool,
    build_task_pool,
    eval_tasks,
    sample_tasks,
    split_segments,
    unscale,
)
from dmeta.data.windows import make_windows, n_records, season_length, to_panel
from dmeta.graph.cooccurrence import cooccurrence_graph, edge_graph
from dmeta.graph.deepwalk import deepwalk
from dmeta.meta.steps import with_sampler
from dmeta.parallel import data_mesh, jit_step
from dmeta.report.tables import markdown_table
from dmeta.rmldp.model import (
    init_rmldp,
    make_train_step,
    meta_test,
    segment_representations,
)
from dmeta.train.loop import fit
from dmeta.train.results import write_results, write_run_header
from dmeta.train.state import init_train_state
from dmeta.types import TaskBatch
from experiments.configs import add_data_parallel_flag, with_overrides
from experiments.configs.rmldp import RMLDPConfig, get_config

logger = logging.getLogger(__name__)

CLASSICAL = {"Linear Regression": "linear", "SVR": "svr", "Random Forest": "rf", "XGBoost": "xgb"}
NEURAL = {"GRU+MPFN": "gru_mpfn", "Dipole+MPFN": "dipole_mpfn", "LSTNet": "lstnet"}
# RMLDP variants and the meta-learning baselines: init_rmldp switches.
META = {
    "MAML": dict(use_data=False, use_graph=False),
    "Meta-SGD": dict(use_data=False, use_graph=False, meta_sgd=True),
    "RMLDP": {},
    "RMLDP-d": dict(use_data=False),
    "RMLDP-g": dict(use_graph=False),
    "RMLDP-szn": dict(use_season=False),
    "RMLDP-local": dict(use_local=False),
}
METHODS = (*CLASSICAL, *NEURAL, "Fine-tune", *META)
NEEDS_GRAPH = ("RMLDP", "RMLDP-d")


@dataclasses.dataclass(frozen=True, eq=False)
class Prepared:
    """One dataset cut into the RMLDP protocol for one |T_c|.

    Attributes:
      data: the loaded dataset.
      pool: task pool of every segment.
      ids: [I] segment ids (pool rows).
      train, val: segment indices for meta-training / meta-validation.
      source: every sample of the meta-training segments (support before, query after
        their cut), the training set of the classical and global neural baselines.
      target: meta-testing tasks (support before the cut, query after it).
      val_tasks: meta-validation tasks.
      groups: [T] category group of each target task.
      weights: f32[I, I] knowledge graph, or None.
      counts: segments per role (with and without a task) for the report.
    """

    data: DemandData
    pool: TaskPool
    ids: np.ndarray
    train: np.ndarray
    val: np.ndarray
    source: TaskBatch
    target: TaskBatch
    val_tasks: TaskBatch
    groups: np.ndarray
    weights: np.ndarray | None
    counts: dict[str, int]


def load_data(spec: str, *, cfg: RMLDPConfig, baskets=None, edges=None) -> DemandData:
    """``--data`` spec -> ``DemandData`` (synthetic, walmart, groceries, table)."""
    parsed = parse_data_spec(spec)
    if parsed.name == "synthetic":
        return synthetic_data(cfg)
    if parsed.name == "walmart":
        return load_walmart(parsed.path)
    if parsed.name == "groceries":
        return load_groceries(parsed.path)
    if parsed.name == "table":
        return load_table(parsed.path, baskets=baskets, edges=edges)
    raise ValueError(f"--data {spec!r}: rmldp reads synthetic, walmart, groceries or table:PATH")


def synthetic_data(cfg: RMLDPConfig) -> DemandData:
    """The synthetic dataset of a config (``data_seed``: every seed of a run sees the same data)."""
    return load_synthetic(**synthetic_kwargs(cfg))


def synthetic_kwargs(cfg: RMLDPConfig) -> dict:
    """``make_demand`` keyword arguments of a config."""
    return dict(
        n_segments=cfg.n_segments,
        n_clusters=cfg.n_clusters,
        carryover=cfg.carryover,
        carryover_levels=cfg.carryover_levels,
        shared_weekly=cfg.shared_weekly,
        seed=cfg.data_seed,
    )


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
    panel = to_panel(data.frame)
    season = cfg.season or season_length(panel.freq)
    windows = make_windows(
        panel,
        seq_len=seq_len,
        horizon_gap=cfg.horizon_gap,
        horizon_len=cfg.horizon_len,
        season=season,
    )
    pool = build_task_pool(windows, support_frac=cfg.support_frac)
    roles = split_segments(n_records(panel), train_frac=cfg.train_frac)
    has_task = np.asarray(pool.cut) > 0
    train = roles.train[has_task[roles.train]]
    target = eval_tasks(pool, roles.test, max_support=cfg.max_support, max_query=cfg.max_query)
    val_tasks = eval_tasks(pool, roles.val, max_support=cfg.max_support, max_query=cfg.max_query)
    groups = data.groups.reindex(panel.ids).fillna("all").to_numpy()
    weights = None
    if data.baskets is not None:
        weights = cooccurrence_graph(
            data.baskets, panel.ids, threshold=cfg.graph_threshold, unknown="drop"
        )
    elif data.edges is not None:
        weights = edge_graph(data.edges, panel.ids, threshold=cfg.graph_threshold)
    counts = {
        "segments": len(panel.ids),
        "meta-train": len(roles.train),
        "meta-train with samples": len(train),
        "meta-val": len(roles.val),
        "meta-test": len(roles.test),
        "meta-test with support+query": int(target.segment.shape[0]),
    }
    return Prepared(
        data,
        pool,
        panel.ids,
        train,
        roles.val,
        eval_tasks(pool, train),
        target,
        val_tasks,
        groups[np.asarray(target.segment)],
        weights,
        counts,
    )


def graph_embeddings(prep: Prepared, cfg: RMLDPConfig, key) -> jax.Array:
    """Standardized DeepWalk embeddings u_g f32[I, D] (zeros without a graph)."""
    n = len(prep.ids)
    if prep.weights is None:
        return jnp.zeros((n, cfg.graph_dim))
    emb = deepwalk(
        key,
        jnp.asarray(prep.weights),
        dim=cfg.graph_dim,
        walks_per_node=cfg.walks_per_node,
        walk_length=cfg.walk_length,
        window=cfg.window,
        steps=cfg.deepwalk_steps,
    )
    return (emb - emb.mean(0)) / (emb.std(0) + 1e-6)


@dataclasses.dataclass(frozen=True, eq=False)
class MetaRunner:
    """A META variant with its jitted Algorithm 1 step and evaluation, reused across seeds.

    Attributes:
      model: the variant's static structure.
      init: ``init(key) -> Theta``.
      step: jitted ``step(state) -> (state, metrics)`` (sampling folded in).
      test: jitted ``test(Theta, tasks) -> f32[T, N_q]`` (eq. 8).
      optimizer: the outer optimizer (beta).
    """

    model: object
    init: object
    step: object
    test: object
    optimizer: object


def meta_runner(name: str, prep: Prepared, cfg: RMLDPConfig, graph_emb, *, seq_len: int):
    """Builds the ``MetaRunner`` of variant ``name`` for one prepared dataset."""
    init = functools.partial(
        init_rmldp,
        n_features=prep.pool.values.shape[-1],
        seq_len=seq_len,
        hidden=cfg.hidden,
        encoder_hidden=cfg.encoder_hidden,
        q_d_dim=cfg.q_d_dim,
        q_g_dim=cfg.q_g_dim,
        graph_dim=cfg.graph_dim,
        step_size=cfg.inner_lr,
        **META[name],
    )
    model, _ = init(jax.random.key(0))
    optimizer = optax.adam(cfg.meta_lr)
    mesh = data_mesh() if cfg.data_parallel else None
    train_step = make_train_step(
        model,
        graph_emb,
        optimizer,
        lam=cfg.lam,
        steps=cfg.inner_steps,
        step_size=cfg.inner_lr,
        mesh=mesh,
        remat=cfg.remat,
        strategy=cfg.strategy,
    )
    sample = functools.partial(
        sample_tasks,
        pool=prep.pool,
        segments=jnp.asarray(prep.train),
        n_tasks=cfg.n_tasks,
        n_support=cfg.n_support,
        n_query=cfg.n_query,
    )
    test = functools.partial(
        meta_test, model, graph_emb=graph_emb, steps=cfg.inner_steps, step_size=cfg.inner_lr
    )
    return MetaRunner(
        model,
        lambda key: init(key)[1],
        jit_step(with_sampler(train_step, sample), mesh),
        lambda theta, tasks: test(theta, tasks=tasks),
        optimizer,
    )


def train_meta(runner: MetaRunner, prep: Prepared, cfg: RMLDPConfig, key):
    """Algorithm 1 with early stopping on the meta-validation MSE; returns the best Theta."""
    k_init, k_state = jax.random.split(key)

    def eval_fn(state):
        q = prep.val_tasks.query
        pred = runner.test(state.params, prep.val_tasks)
        return {"val_loss": float(metrics.mse(q.y, pred, q.mask))}

    result = fit(
        runner.step,
        init_train_state(runner.init(k_init), runner.optimizer, k_state),
        n_steps=cfg.meta_steps,
        eval_fn=eval_fn,
        eval_every=cfg.eval_every,
        patience=cfg.patience,
        progress=False,
    )
    return result.best_state.params


def predict(
    name: str,
    prep: Prepared,
    cfg: RMLDPConfig,
    graph_emb,
    seed: int,
    *,
    seq_len: int,
    runners: dict,
):
    """Scaled query predictions f32[T, N_q] of method ``name`` on the target tasks.

    ``runners`` caches the ``MetaRunner`` of each META variant (compiled once per run).
    Returns the predictions, and for META variants also ``(model, Theta)``.
    """
    key = jax.random.fold_in(jax.random.key(seed), METHODS.index(name))
    target = prep.target
    if name in CLASSICAL:
        source = prep.source
        parts = [fb.flatten_split(s) for s in (source.support, source.query, target.support)]
        xy = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        limit = None if name == "Linear Regression" else cfg.max_train_classical
        return fb.fit_predict_classical(
            CLASSICAL[name], xy, target.query, max_train=limit, seed=seed
        )
    if name in META:
        if name not in runners:
            runners[name] = meta_runner(name, prep, cfg, graph_emb, seq_len=seq_len)
        runner = runners[name]
        theta = train_meta(runner, prep, cfg, key)
        return np.asarray(runner.test(theta, target)), (runner.model, theta)
    if name == "Fine-tune":  # fine-tunes the very GRU+MPFN model of this seed (paper, 6.1)
        key = jax.random.fold_in(jax.random.key(seed), METHODS.index("GRU+MPFN"))
    neural = NEURAL.get(name, "gru_mpfn")
    k_init, k_train = jax.random.split(key)
    apply, params = fb.build_neural(
        neural, prep.pool.values.shape[-1], cfg.hidden, seq_len=seq_len, key=k_init
    )
    samples = jax.tree.map(
        lambda *a: jnp.concatenate(a),
        fb.pooled_samples(prep.source.support),
        fb.pooled_samples(prep.source.query),
        fb.pooled_samples(target.support),
    )
    params, _ = fb.train_global(
        apply,
        params,
        samples,
        k_train,
        n_steps=cfg.global_steps,
        batch_size=cfg.global_batch,
        learning_rate=cfg.global_lr,
    )
    steps, step_size = 0, 0.0  # GRU+MPFN, Dipole+MPFN, LSTNet: the global model as trained
    if name == "Fine-tune":
        steps, step_size = finetune_budget(apply, params, prep, cfg)
    return np.asarray(fb.finetune_predict(apply, params, target, steps=steps, step_size=step_size))


def finetune_budget(apply, params, prep: Prepared, cfg: RMLDPConfig) -> tuple[int, float]:
    """The (steps, SGD step size) of ``cfg.finetune_steps x cfg.finetune_lrs`` with the
    lowest meta-validation MAPE (the reported metric) after fine-tuning."""
    scores = {}
    for steps in cfg.finetune_steps:
        for lr in cfg.finetune_lrs:
            pred = fb.finetune_predict(apply, params, prep.val_tasks, steps=steps, step_size=lr)
            mape, _ = segment_errors(prep, prep.val_tasks, pred)
            finite = np.isfinite(mape).any()  # a diverged budget never wins
            scores[steps, lr] = float(np.nanmean(mape)) if finite else np.inf
    best = min(scores, key=scores.get)
    logger.info("Fine-tune: %d steps of %g (meta-validation MAPE %s)", *best, scores)
    return best


def segment_errors(prep: Prepared, tasks: TaskBatch, pred) -> tuple[np.ndarray, np.ndarray]:
    """Per-segment MAPE f32[T] and MSE f32[T] of query predictions [T, N_q] on raw demand
    (predictions clipped at 0; MAPE is NaN where every query target is 0)."""
    seg = tasks.segment
    y = unscale(prep.pool, seg, tasks.query.y)
    yhat = unscale(prep.pool, seg, jnp.maximum(jnp.asarray(pred), 0.0))
    errors = jax.vmap(lambda *a: (metrics.mape(*a), metrics.mse(*a)))(y, yhat, tasks.query.mask)
    return tuple(np.asarray(e, np.float64) for e in errors)


def segment_scores(prep: Prepared, pred: np.ndarray) -> pd.DataFrame:
    """Per target segment MAPE and MSE on raw demand (predictions clipped at 0)."""
    mape, mse = segment_errors(prep, prep.target, pred)
    ids = [str(prep.ids[int(i)]) for i in prep.target.segment]
    return pd.DataFrame({"segment": ids, "group": prep.groups, "mape": mape, "mse": mse})


def group_rows(scores: pd.DataFrame, **keys) -> list[dict]:
    """Long-schema rows: mean per group and over all target segments (NaN MAPE left out)."""
    rows = []
    parts = [("all", scores)] + list(scores.groupby("group", sort=True))
    if scores["group"].nunique() == 1:
        parts = parts[:1]
    for group, part in parts:
        for metric in ("mape", "mse"):
            value = part[metric].dropna().mean()
            rows.append(dict(keys, group=str(group), metric=metric, value=float(value)))
    return rows


def run_methods(
    prep: Prepared,
    cfg: RMLDPConfig,
    methods: tuple[str, ...],
    seed: int,
    *,
    seq_len: int,
    dataset: str,
    graph_emb: jax.Array,
    runners: dict,
    progress: Path | None = None,
):
    """Runs ``methods`` for one seed (appending a line per method to ``progress``).

    Returns:
      (long rows, per-segment scores, {META name: (model, Theta)}).
    """
    rows, per_segment, fitted = [], [], {}
    for name in methods:
        start = time.perf_counter()
        out = predict(name, prep, cfg, graph_emb, seed, seq_len=seq_len, runners=runners)
        pred, model = out if isinstance(out, tuple) else (out, None)
        seconds = time.perf_counter() - start
        if model is not None:
            fitted[name] = model
        scores = segment_scores(prep, pred).assign(method=name, seed=seed)
        per_segment.append(scores)
        keys = dict(experiment="rmldp", dataset=dataset, method=name, seed=seed)
        rows += group_rows(scores, **keys)
        rows.append(dict(keys, group="all", metric="seconds", value=seconds))
        logger.info("seed %d %-18s MAPE %.4f (%.1f s)", seed, name, scores["mape"].mean(), seconds)
    return rows, pd.concat(per_segment), fitted


def paired_test(per_segment: pd.DataFrame, a: str, b: str) -> dict:
    """Paired t-test over target segments of seed-averaged MAPE, ``a`` vs ``b``."""
    wide = per_segment.groupby(["segment", "method"])["mape"].mean().unstack()
    wide = wide[[a, b]].dropna()
    t, p = metrics.paired_ttest(wide[a].to_numpy(), wide[b].to_numpy())
    _, p_less = metrics.paired_ttest(wide[a].to_numpy(), wide[b].to_numpy(), alternative="less")
    return {
        "a": a,
        "b": b,
        "segments": len(wide),
        "mape_a": wide[a].mean(),
        "mape_b": wide[b].mean(),
        "t": t,
        "p_two_sided": p,
        "p_a_less": p_less,
        "a_wins": int((wide[a] < wide[b]).sum()),
    }


def plot_sweep(sweep: pd.DataFrame, path: Path) -> None:
    """Figure 6: MAPE against |T_c| per category group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for group, part in sweep.groupby("group"):
        ax.plot(part["seq_len"], part["mape"], marker="o", label=str(group))
    ax.set_xlabel("sequence length |T_c|")
    ax.set_ylabel("MAPE (target segments)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_map(q: np.ndarray, groups: np.ndarray, path: Path, title: str) -> None:
    """Figure 7: first two principal components of the segment representations q."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centered = q - q.mean(0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    xy = centered @ vt[:2].T
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    for group in np.unique(groups):
        sel = groups == group
        ax.scatter(xy[sel, 0], xy[sel, 1], s=14, label=str(group))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def representation_map(prep, fitted, graph_emb, name, out: Path) -> tuple[str, float | None]:
    """Writes the 2-D map of q for meta-val + meta-test segments; returns (file, silhouette)."""
    model, theta = fitted[name]
    tasks = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), prep.target, prep.val_tasks)
    q = np.asarray(segment_representations(model, theta, graph_emb, tasks))
    groups = np.asarray(prep.data.groups.reindex(prep.ids[np.asarray(tasks.segment)]).fillna("all"))
    file = "rmldp_segment_map.png"
    plot_map(q, groups, out / file, f"{name} segment representations q ({len(q)} segments)")
    sil = None
    if 2 <= len(np.unique(groups)) <= len(q) - 1:
        sil = float(metrics.silhouette(q, np.unique(groups, return_inverse=True)[1]))
    return file, sil


def add_arguments(parser) -> None:
    """Extra flags of ``dmeta run rmldp``."""
    parser.add_argument(
        "--size", choices=("paper", "cpu"), default="cpu", help="paper: Table 1 sizes"
    )
    parser.add_argument("--methods", default=None, help="comma-separated subset of methods")
    parser.add_argument("--baskets", default=None, help="table data: basket_id,unique_id CSV")
    parser.add_argument("--edges", default=None, help="table data: src,dst,weight CSV")
    parser.add_argument("--max-segments", type=int, default=None, help="random segment subset")
    parser.add_argument("--no-sweep", action="store_true", help="skip the |T_c| sweep")
    parser.add_argument("--seq-len", type=int, default=None, help="|T_c| (default 30)")
    parser.add_argument("--horizon-gap", type=int, default=None, help="T_g in steps (default 14)")
    parser.add_argument("--horizon-len", type=int, default=None, help="T_f in steps (default 7)")
    parser.add_argument("--meta-steps", type=int, default=None, help="outer steps (Algorithm 1)")
    parser.add_argument(
        "--global-steps", type=int, default=None, help="training steps of the global models"
    )
    parser.add_argument(
        "--eval-every", type=int, default=None, help="meta-validation every N outer steps"
    )
    parser.add_argument(
        "--n-segments", type=int, default=None, help="synthetic data: number of segments"
    )
    parser.add_argument(
        "--data-seed", type=int, default=None, help="synthetic data: generator seed (default 0)"
    )
    parser.add_argument(
        "--carryover",
        type=float,
        default=None,
        help="synthetic data: largest cluster-specific delayed promotion effect (0: none)",
    )
    parser.add_argument(
        "--carryover-levels",
        type=lambda text: tuple(float(v) for v in text.split(",")),
        default=None,
        help="synthetic data: comma-separated per-cluster multiples of --carryover "
        "(default: spread over -1..1; write --carryover-levels=-1,1,-1,1)",
    )
    add_data_parallel_flag(parser, "each meta-batch's segments")
    parser.add_argument(
        "--remat", action="store_true", default=None, help="jax.checkpoint the inner steps"
    )
    parser.add_argument(
        "--strategy",
        choices=("vmap", "map", "map_remat"),
        default=None,
        help="segments of a meta-batch: vmap (default), lax.map, or lax.map over a "
        "checkpointed segment loss (memory flat in the meta-batch size)",
    )


def run(
    *,
    data: str,
    out: Path,
    smoke: bool,
    seeds: int,
    command: str,
    size: str = "cpu",
    methods: str | None = None,
    baskets: str | None = None,
    edges: str | None = None,
    max_segments: int | None = None,
    no_sweep: bool = False,
    seq_len: int | None = None,
    horizon_gap: int | None = None,
    horizon_len: int | None = None,
    meta_steps: int | None = None,
    global_steps: int | None = None,
    eval_every: int | None = None,
    n_segments: int | None = None,
    carryover: float | None = None,
    carryover_levels: tuple[float, ...] | None = None,
    data_seed: int | None = None,
    data_parallel: bool | None = None,
    remat: bool | None = None,
    strategy: str | None = None,
    **options,
) -> pd.DataFrame:
    """The whole protocol; writes results.csv/.md, segments.csv, PNGs, command.txt, config."""
    cfg = get_config(smoke=smoke, size=size)
    cfg = with_overrides(
        cfg,
        max_segments=max_segments,
        seq_len=seq_len,
        horizon_gap=horizon_gap,
        horizon_len=horizon_len,
        meta_steps=meta_steps,
        global_steps=global_steps,
        eval_every=eval_every,
        n_segments=n_segments,
        carryover=carryover,
        carryover_levels=carryover_levels,
        data_seed=data_seed,
        data_parallel=data_parallel,
        remat=remat,
        strategy=strategy,
    )
    out = Path(out)
    write_run_header(out, command, dict(dataclasses.asdict(cfg), data=data, seeds=seeds))
    dataset = load_data(data, cfg=cfg, baskets=baskets, edges=edges)
    dataset = subsample(dataset, cfg.max_segments)
    prep = prepare(dataset, cfg, seq_len=cfg.seq_len)
    chosen = tuple(methods.split(",")) if methods else METHODS
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    if prep.weights is None:
        skipped = [m for m in chosen if m in NEEDS_GRAPH]
        if skipped:
            logger.warning("%s has no baskets or edges: %s not run", dataset.name, skipped)
        chosen = tuple(m for m in chosen if m not in NEEDS_GRAPH)
    full = "RMLDP" if "RMLDP" in chosen else "RMLDP-g"
    # The graph embedding is preprocessing of the data: one DeepWalk run shared by all seeds.
    graph_emb = graph_embeddings(prep, cfg, jax.random.key(10_000))
    rows, per_segment, runners, fitted = [], [], {}, {}
    for seed in range(seeds):
        r, s, f = run_methods(
            prep,
            cfg,
            chosen,
            seed,
            seq_len=cfg.seq_len,
            dataset=dataset.name,
            graph_emb=graph_emb,
            runners=runners,
            progress=out / "progress.txt",
        )
        rows += r
        per_segment.append(s)
        fitted = fitted or f
        # Partial results after every seed, so a long run cut short still reports.
        write_results(pd.DataFrame(rows), out, title=f"RMLDP on {dataset.name} (seeds 0-{seed})")
    per_segment = pd.concat(per_segment)
    per_segment.to_csv(out / "segments.csv", index=False)

    md = [f"Segments: {prep.counts}.\n"]
    if full in chosen and "MAML" in chosen:
        test = paired_test(per_segment, full, "MAML")
        md.append(
            f"## {full} vs MAML, paired t-test over target segments\n\n"
            + markdown_table(pd.DataFrame([test]))
        )
    if full in fitted:
        file, sil = representation_map(prep, fitted, graph_emb, full, out)
        md.append(f"## Segment representations\n\n![map]({file})\n\nsilhouette by group: {sil}\n")
    if not no_sweep and full in chosen:
        sweep_rows = []
        for seq_len in cfg.sweep_seq_len:
            if seq_len == cfg.seq_len:  # the main run's seed 0
                scores = per_segment[(per_segment["method"] == full) & (per_segment["seed"] == 0)]
            else:
                p = prepare(dataset, cfg, seq_len=seq_len)
                pred, _ = predict(full, p, cfg, graph_emb, 0, seq_len=seq_len, runners={})
                scores = segment_scores(p, pred)
            for row in group_rows(scores):
                if row["metric"] == "mape":
                    sweep_rows.append(dict(seq_len=seq_len, group=row["group"], mape=row["value"]))
        sweep = pd.DataFrame(sweep_rows)
        sweep.to_csv(out / "sweep.csv", index=False)
        plot_sweep(sweep, out / "rmldp_sweep.png")
        md.append(
            f"## |T_c| sweep ({full}, seed 0)\n\n![sweep](rmldp_sweep.png)\n\n"
            + markdown_table(
                sweep.pivot(index="seq_len", columns="group", values="mape").reset_index()
            )
        )
    df = pd.DataFrame(rows)
    write_results(df, out, title=f"RMLDP on {dataset.name}", extra_md="\n".join(md))
    return df


DEMO_METHODS = ("XGBoost", "GRU+MPFN", "Fine-tune", "MAML", "RMLDP")


def demo(out: Path, *, smoke: bool) -> str:
    """Synthetic RMLDP vs baselines (one seed) and the map of segment representations."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = get_config(smoke=smoke, size="cpu")
    if not smoke:
        cfg = dataclasses.replace(cfg, meta_steps=150, global_steps=300, n_segments=40)
    data = synthetic_data(cfg)
    prep = prepare(data, cfg, seq_len=cfg.seq_len)
    graph_emb = graph_embeddings(prep, cfg, jax.random.key(10_000))
    rows, _, fitted = run_methods(
        prep,
        cfg,
        DEMO_METHODS,
        0,
        seq_len=cfg.seq_len,
        dataset="synthetic",
        graph_emb=graph_emb,
        runners={},
    )
    file, sil = representation_map(prep, fitted, graph_emb, "RMLDP", out)
    table = pd.DataFrame(rows)
    table = table[(table["group"] == "all") & (table["metric"] == "mape")][["method", "value"]]
    return (
        "## RMLDP: relation-aware meta-learning for segment demand\n\n"
        f"Synthetic clustered demand, {prep.counts['meta-test with support+query']} target "
        f"segments, one seed{' (smoke size)' if smoke else ''}; MAPE on target query sets:\n\n"
        + markdown_table(table.rename(columns={"value": "MAPE"}))
        + f"\n![segment map](rmldp/{file})\n\nSilhouette of q by true cluster: {sil}\n"
    )
