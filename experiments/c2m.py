"""C2M (Xue et al.): deep customer segmentation + integrated category / attribute demand mining.

Per seed: one autoencoder is pretrained (Algorithm 1, step 1) and shared by every deep method;
each segmentation then goes through the same mining stage (segment PrefixSpan with common-pattern
exclusion, per-segment conditional logit and attribute-set search), as in the paper's 4.2.1.

* Table 1: ours (joint, eq. 6-7) vs DEC, DeepCluster-style (DC), k-means++ on the pretrained
  latent (AE+KM) and k-means on bag-of-categories (BoC-KM): SC, CH (each in its own space),
  MPP; on synthetic data also ARI, planted-pattern recall and logit coefficient error.
* Figures 2-3: alpha and beta sweeps. Table 2: source behaviours. Table 3: ablations.
* A case study per segment of ours (size, unique patterns, attribute set).

    dmeta run c2m --data userbehavior --seeds 5 --out experiments/results/c2m/userbehavior
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

from dmeta import metrics
from dmeta.c2m import demand, train
from dmeta.c2m.data import LOADERS, EventLog
from dmeta.c2m.sequences import BEHAVIOR_VOCAB, build_sequences, build_vocabulary
from dmeta.c2m.synthetic import SyntheticC2M, synthetic_c2m
from dmeta.data.spec import parse_data_spec
from dmeta.report.tables import markdown_table, significance_table
from dmeta.train.results import write_results, write_run_header
from experiments.configs import add_data_parallel_flag, with_overrides
from experiments.configs.c2m import C2MConfig, get_config

NAME = "c2m"
COLUMNS = ["experiment", "dataset", "method", "group", "seed", "metric", "value"]
BASELINES = ("DEC", "DC", "AE+KM", "BoC-KM")
SOURCES = {  # Table 2: (category-mining behaviours, attribute-mining behaviour)
    "view+cart / buy": (("view", "cart"), "buy"),
    "view / buy": (("view",), "buy"),
    "cart / buy": (("cart",), "buy"),
    "view+cart / cart": (("view", "cart"), "cart"),
}
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Size overrides and which parts to run."""
    parser.add_argument("--segments", type=int, default=None, help="number of segments")
    parser.add_argument("--joint-epochs", type=int, default=None)
    parser.add_argument("--pretrain-epochs", type=int, default=None)
    parser.add_argument("--no-sweeps", action="store_true", help="skip Figures 2-3")
    add_data_parallel_flag(parser, "each batch of users (pretraining and joint training)")


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A log ready for the pipeline."""

    events: pd.DataFrame
    attributes: pd.DataFrame | None
    x: np.ndarray  # i32[U, L, 3]
    mask: np.ndarray  # bool[U, L]
    category: np.ndarray  # i32[U, L]
    users: np.ndarray
    n_items: int
    n_categories: int
    item_codes: pd.Series  # item_id -> vocabulary code
    truth: SyntheticC2M | None


def load(spec: str, cfg: C2MConfig) -> tuple[str, EventLog, SyntheticC2M | None]:
    """(dataset name, log, planted truth or None) for a ``--data`` spec."""
    data = parse_data_spec(spec)
    if data.name == "synthetic":
        truth = synthetic_c2m(
            n_users=cfg.synthetic_users,
            n_segments=cfg.synthetic_segments,
            own_block=cfg.synthetic_own_block,
            seed=0,
        )
        return "synthetic", truth.log, truth
    if data.name not in LOADERS:
        raise ValueError(f"--data {spec!r}: c2m reads {['synthetic', *LOADERS]}")
    return data.name, LOADERS[data.name](data.path), None


def prepare(event_log: EventLog, cfg: C2MConfig, truth: SyntheticC2M | None) -> Prepared:
    """Drops users with fewer than ``min_events`` events and builds the sequences."""
    events = event_log.events
    counts = events.groupby("user_id").size()
    events = events[events["user_id"].isin(counts.index[counts >= cfg.min_events])]
    items = build_vocabulary(events["item_id"].to_numpy(), max_size=cfg.item_vocab)
    cats = build_vocabulary(events["category_id"].to_numpy())
    seqs = build_sequences(events, max_len=cfg.max_len, items=items, categories=cats)
    all_items = np.unique(events["item_id"].to_numpy())
    return Prepared(
        events=events,
        attributes=event_log.attributes,
        x=seqs.features(),
        mask=seqs.mask,
        category=seqs.category,
        users=seqs.users,
        n_items=items.size,
        n_categories=cats.size,
        item_codes=pd.Series(items.encode(all_items), index=all_items),
        truth=truth,
    )


def _matching(truth: np.ndarray, labels: np.ndarray) -> dict[int, int]:
    """Planted segment -> predicted segment, by maximum overlap (Hungarian)."""
    table = pd.crosstab(truth, labels)
    rows, cols = linear_sum_assignment(-table.to_numpy())
    return {int(table.index[r]): int(table.columns[c]) for r, c in zip(rows, cols)}


class Miner:
    """The mining stage (unchanged across segmentation methods) for one prepared log."""

    def __init__(self, prep: Prepared, attributes: pd.DataFrame, cfg: C2MConfig, seed: int):
        self.prep, self.cfg = prep, cfg
        self.choices = {
            b: demand.choice_situations(
                prep.events, attributes, n_alternatives=cfg.n_alternatives, seed=seed, source=(b,)
            )
            for b in ("buy", "cart")
        }
        self.users_mnl, self.beta_users = demand.user_logits(self.choices["buy"], l2=cfg.l2_user)

    def __call__(
        self,
        labels: np.ndarray,
        *,
        behaviors: tuple[str, ...] = ("view", "cart"),
        attribute_source: str = "buy",
        exclude_common: bool = True,
    ):
        """Returns (patterns, attribute sets, MPP) for user ``labels`` aligned with prep.users."""
        cfg, prep = self.cfg, self.prep
        n_seg = int(labels.max()) + 1
        patterns = demand.segment_patterns(
            prep.events,
            prep.users,
            labels,
            k=cfg.k_ratio,
            max_length=cfg.max_pattern_length,
            behaviors=behaviors,
        )
        kept = patterns.unique if exclude_common else patterns.patterns
        data = self.choices[attribute_source]
        seg_of = pd.Series(labels, index=prep.users).reindex(data.user).to_numpy().copy()
        # Integrated demand: purchases in the categories of the segment's patterns.
        for s in range(n_seg):
            cats = {c for p in kept[s] for c in p}
            rows = seg_of == s
            inside = rows & np.isin(data.category, list(cats))
            if inside.sum() >= 2 * data.x.shape[-1]:
                seg_of[rows & ~inside] = -1
        sets = demand.segment_attribute_sets(
            data, seg_of, n_seg, top=cfg.top_values, l2=cfg.l2_segment
        )
        user_seg = pd.Series(labels, index=prep.users).reindex(self.users_mnl).to_numpy()
        mpp = demand.mean_purchase_probability(
            self.choices["buy"], self.beta_users, [sets.best[s] for s in user_seg]
        )
        return kept, sets, mpp


def _segment_rows(
    prep: Prepared, seg: train.Segmentation, miner: Miner, cfg: C2MConfig, **mine_kw
) -> dict[str, float]:
    """All metrics of one segmentation."""
    sample = cfg.silhouette_sample if len(seg.labels) > cfg.silhouette_sample else None
    out = {}
    if len(np.unique(seg.labels)) > 1:
        out["SC"] = float(metrics.silhouette(seg.latent, seg.labels, sample_size=sample))
        out["CH"] = float(metrics.calinski_harabasz(seg.latent, seg.labels))
    kept, sets, mpp = miner(seg.labels, **mine_kw)
    out["MPP"] = mpp
    out["unique_patterns"] = float(np.mean([len(p) for p in kept]))
    out["outlier_share"] = float(1.0 - seg.weights.mean())
    truth = prep.truth
    if truth is not None:
        planted = truth.segment[prep.users]
        out["ARI"] = float(adjusted_rand_score(planted, seg.labels))
        match = _matching(planted, seg.labels)
        found = [
            p in kept[match[s]] for s, ps in enumerate(truth.patterns) if s in match for p in ps
        ]
        out["pattern_recall"] = float(np.mean(found))
        out["common_excluded"] = float(all(truth.common_pattern not in k for k in kept))
        err = [np.abs(sets.beta[match[s]] - truth.beta[s]).max() for s in match]
        out["beta_max_abs_err"] = float(np.nanmax(err))
    return out


def run_seed(
    prep: Prepared, ae: train.Autoencoder, cfg: C2MConfig, seed: int, *, sweeps: bool, extras: bool
):
    """Table 1, and with ``extras`` Tables 2-3, and with ``sweeps`` Figures 2-3, for one seed.

    Returns:
      (rows of (method, group, metrics), Ours' segmentation, the miner).
    """
    keys = iter(jax.random.split(jax.random.key(seed), 16))
    n_seg = cfg.synthetic_segments if prep.truth is not None else cfg.n_segments
    fit = dict(batch_size=cfg.batch_size, learning_rate=cfg.learning_rate)
    params0 = train.init_autoencoder(next(keys), **_model_kw(prep, cfg)).params
    shard = dict(shard=cfg.data_parallel)  # the autoencoder steps of pretraining and Ours
    params, _ = train.pretrain(
        ae, params0, prep.x, prep.mask, epochs=cfg.pretrain_epochs, key=next(keys), **fit, **shard
    )
    attributes = prep.attributes
    if attributes is None:  # the paper's fallback: sigmoid of item embeddings
        table = np.asarray(params["embed"][1]["embedding"])
        attributes = demand.derived_attributes(
            prep.item_codes.index.to_numpy(),
            table[prep.item_codes.to_numpy()],
            n_fields=cfg.derived_fields,
            n_values=cfg.derived_values,
            seed=seed,
        )
    miner = Miner(prep, attributes, cfg, seed)
    weights = dict(cfg.behavior_weights)
    w_b = np.array(
        [weights.get(b, 1.0) for b in ["<pad>", "<oov>", *BEHAVIOR_VOCAB.ids]], np.float32
    )
    joint_key = next(keys)

    def joint(alpha=cfg.alpha, beta=cfg.beta, outlier_z=cfg.outlier_z):
        return train.joint_segmentation(
            ae, params, prep.x, prep.mask, n_segments=n_seg, alpha=alpha, beta=beta,
            behavior_weights=w_b, outlier_z=outlier_z, epochs=cfg.joint_epochs, key=joint_key,
            **fit, **shard,
        )  # fmt: skip

    rows = []
    ours = joint()
    rows.append(("Ours", "table1", _segment_rows(prep, ours, miner, cfg)))
    deep = dict(n_segments=n_seg, epochs=cfg.joint_epochs, **fit)
    baselines = {
        "DEC": lambda: train.dec_segmentation(
            ae, params, prep.x, prep.mask, key=next(keys), **deep
        ),
        "DC": lambda: train.deepcluster_segmentation(
            ae, params, prep.x, prep.mask, key=next(keys), **deep
        ),
        "AE+KM": lambda: train.latent_kmeans_segmentation(
            ae, params, prep.x, prep.mask, n_segments=n_seg, key=next(keys)
        ),
        "BoC-KM": lambda: train.bag_of_categories_segmentation(
            prep.category, prep.mask, prep.n_categories, n_segments=n_seg, key=next(keys)
        ),
    }
    for name, make in baselines.items():
        rows.append((name, "table1", _segment_rows(prep, make(), miner, cfg)))
    if not extras:
        return rows, ours, miner
    for name, (behaviors, attr) in SOURCES.items():
        got = _segment_rows(prep, ours, miner, cfg, behaviors=behaviors, attribute_source=attr)
        rows.append((name, "table2", {"MPP": got["MPP"]}))
    ablations = {
        "Framework 1 (no outlier removal)": joint(outlier_z=None),
        "Framework 2 (no clustering loss)": joint(alpha=0.0),
        "Framework 3 (no preference loss)": joint(beta=0.0),
    }
    for name, seg in ablations.items():
        rows.append((name, "table3", _segment_rows(prep, seg, miner, cfg)))
    f4 = _segment_rows(prep, ours, miner, cfg, exclude_common=False)
    rows.append(("Framework 4 (common patterns kept)", "table3", f4))
    if sweeps:
        done = {(0.0, cfg.beta): ablations["Framework 2 (no clustering loss)"]}
        done |= {(cfg.alpha, 0.0): ablations["Framework 3 (no preference loss)"]}
        done[(cfg.alpha, cfg.beta)] = ours
        for v in cfg.sweep_values:
            for which, point in (("alpha", (v, cfg.beta)), ("beta", (cfg.alpha, v))):
                if point not in done:
                    done[point] = joint(alpha=point[0], beta=point[1])
                got = _segment_rows(prep, done[point], miner, cfg)
                rows.append((f"{which}={v:g}", f"sweep_{which}", got))
    return rows, ours, miner


def _model_kw(prep: Prepared, cfg: C2MConfig) -> dict:
    return dict(
        n_behaviors=BEHAVIOR_VOCAB.size,
        n_items=prep.n_items,
        n_categories=prep.n_categories,
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        n_layers=cfg.n_layers,
        latent_dim=cfg.latent_dim,
    )


def case_study(prep: Prepared, ours: train.Segmentation, miner: Miner, top: int = 5) -> str:
    """Per segment: size, its most supported unique category patterns, its attribute set."""
    kept, sets, _ = miner(ours.labels)
    lines = ["### Case study (Ours, first seed)", ""]
    for s in range(int(ours.labels.max()) + 1):
        share = float(np.mean(ours.labels == s))
        best = sorted(kept[s].items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        pats = ", ".join(f"{'→'.join(map(str, p))} ({c})" for p, c in best) or "none"
        attrs = sets.best[s]
        attr_txt = (
            "none (no purchases)"
            if attrs is None
            else ", ".join(
                f"field {f}={miner.choices['buy'].levels[f][v]}" for f, v in enumerate(attrs)
            )
        )
        lines.append(
            f"- segment {s}: {share:.1%} of users; {len(kept[s])} unique patterns, top: {pats}; "
            f"attribute set: {attr_txt}"
        )
    return "\n".join(lines) + "\n"


def tables_markdown(df: pd.DataFrame) -> str:
    """Table 1-3 analogs (mean ± std over seeds) and significance vs the best baseline."""
    parts = []
    for group, title in (
        ("table1", "Table 1 analog"),
        ("table2", "Table 2 analog (source behaviours, Ours)"),
        ("table3", "Table 3 analog (ablations)"),
    ):
        part = df[df["group"] == group]
        if part.empty:
            continue
        stats = part.groupby(["method", "metric"])["value"].agg(["mean", "std"]).reset_index()
        stats["cell"] = [
            f"{m:.4g} ± {s:.2g}" for m, s in zip(stats["mean"], stats["std"].fillna(0))
        ]
        table = stats.pivot(index="method", columns="metric", values="cell").reset_index()
        n = part["seed"].nunique()
        parts.append(f"### {title} ({n} seeds)\n\n{markdown_table(table)}")
    t1 = df[df["group"] == "table1"]
    if t1["seed"].nunique() >= 2:
        for metric in ("SC", "CH", "MPP", "ARI"):
            sub = t1[(t1["metric"] == metric) & t1["method"].isin(BASELINES)]
            if sub.empty:
                continue
            best = sub.groupby("method")["value"].mean().idxmax()
            sig = significance_table(t1, "Ours", best, metric, by=("dataset",))
            parts.append(
                f"Ours vs best baseline on {metric} ({best}), paired t-test:\n\n"
                + markdown_table(sig)
            )
    return "\n\n".join(parts)


def plot_sweeps(df: pd.DataFrame, out: Path) -> list[str]:
    """Figures 2-3 analog: SC, CH, MPP against alpha and beta. Returns PNG file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for which in ("alpha", "beta"):
        part = df[df["group"] == f"sweep_{which}"]
        if part.empty:
            continue
        part = part.assign(v=part["method"].str.split("=").str[1].astype(float))
        fig, axes = plt.subplots(1, 3, figsize=(10, 3))
        for ax, metric in zip(axes, ("SC", "CH", "MPP")):
            m = part[part["metric"] == metric].groupby("v")["value"].agg(["mean", "std"])
            ax.errorbar(m.index, m["mean"], yerr=m["std"].fillna(0), marker="o", capsize=3)
            ax.set_xlabel(which)
            ax.set_title(metric)
        fig.tight_layout()
        name = f"sweep_{which}.png"
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        names.append(name)
    return names


def experiment(
    data: str,
    cfg: C2MConfig,
    seeds: int,
    *,
    sweeps: bool,
    extras: bool = True,
    after_seed: Callable[[pd.DataFrame], None] | None = None,
) -> tuple[pd.DataFrame, str]:
    """Runs every seed (``after_seed`` gets the results so far); returns the long results
    frame and the case study."""
    dataset, event_log, truth = load(data, cfg)
    prep = prepare(event_log, cfg, truth)
    log.info("%s: %d users, %d events", dataset, len(prep.users), len(prep.events))
    ae = train.init_autoencoder(jax.random.key(0), **_model_kw(prep, cfg))
    records, case = [], ""
    for seed in range(seeds):
        start = time.perf_counter()
        rows, ours, miner = run_seed(prep, ae, cfg, seed, sweeps=sweeps, extras=extras)
        if seed == 0:
            case = case_study(prep, ours, miner)
        for method, group, values in rows:
            for metric, value in values.items():
                records.append((NAME, dataset, method, group, seed, metric, value))
        log.info("%s seed %d: %.0f s", dataset, seed, time.perf_counter() - start)
        if after_seed is not None:
            after_seed(pd.DataFrame(records, columns=COLUMNS))
    return pd.DataFrame(records, columns=COLUMNS), case


def run(
    *,
    data: str,
    out: Path,
    smoke: bool,
    seeds: int,
    command: str,
    segments: int | None = None,
    joint_epochs: int | None = None,
    pretrain_epochs: int | None = None,
    no_sweeps: bool = False,
    data_parallel: bool | None = None,
    **options,
) -> pd.DataFrame:
    """Tables 1-3 analogs, sweeps and the case study on ``data``; writes results and PNGs."""
    out = Path(out)
    log.setLevel(logging.INFO)
    cfg = get_config(smoke)
    cfg = with_overrides(
        cfg,
        n_segments=segments,
        joint_epochs=joint_epochs,
        pretrain_epochs=pretrain_epochs,
        data_parallel=data_parallel,
    )
    write_run_header(out, command, dataclasses.asdict(cfg) | {"data": data, "seeds": seeds})
    title = f"C2M on {parse_data_spec(data).name}"

    def partial(df: pd.DataFrame) -> None:  # results survive an interrupted run
        n = df["seed"].nunique()
        write_results(df, out, title=title + f" (partial: {n} seeds)", extra_md=tables_markdown(df))

    df, case = experiment(data, cfg, seeds, sweeps=not no_sweeps, after_seed=partial)
    plots = plot_sweeps(df, out)
    extra = tables_markdown(df) + "\n\n" + case + "\n" + "\n".join(f"![{p}]({p})" for p in plots)
    write_results(df, out, title=title, extra_md=extra)
    return df


def demo(out: Path, *, smoke: bool) -> str:
    """Synthetic Table 1 analog (+ Tables 2-3 and sweeps unless smoke) as a Markdown section."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = get_config(smoke=True)
    if not smoke:
        cfg = dataclasses.replace(cfg, synthetic_users=240, joint_epochs=4)
    df, case = experiment("synthetic", cfg, 1, sweeps=not smoke, extras=not smoke)
    plots = plot_sweeps(df, out)
    images = "\n".join(f"![{p}]({NAME}/{p})" for p in plots)
    return f"## C2M (Xue et al.) on synthetic data\n\n{tables_markdown(df)}\n\n{case}\n{images}\n"
