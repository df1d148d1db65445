"""The C2M protocol: data preparation, the methods of Tables 1-3 and Figures 2-3, scoring.

The users are split into fit and validation users (``validation_split``, the same for
every seed); per seed one autoencoder is pretrained on the fit users (Algorithm 1, step 1)
and shared by every deep method; every method is fitted on the fit users and assigns all
users to its nearest centroid.
Tuning scores SC on the validation users; SC and CH are reported on the fit users, on all of
them and on the inliers (``SC_inliers``, ``CH_inliers``: Ours' outliers removed, and for every
other method the same share of its users farthest from their centroid in its own space) and,
since each method's own space is shaped by its own objective, in one space for all
(``SC_shared``: the seed's pretrained autoencoder latent, before any clustering loss). Each
segmentation of all users then goes through the same mining stage (segment PrefixSpan with
common-pattern exclusion, per-segment conditional logit and attribute-set search), as in the
paper's 4.2.1. A uniformly random segmentation (``RANDOM``) goes through it too: the MPP any
segmentation gets, to tell whether MPP separates the methods on a dataset. ``C2MRun.run_cell`` computes one ``Cell`` of the results table; the seed's
pretrained model and segmentations are recomputed deterministically when a cell needs them
(and kept in memory for the next cell of the same seed), so cells are independent and a
resumed run gives the same rows.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import jax
import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score

from dmeta import metrics
from dmeta.c2m import baselines, demand, mst, train
from dmeta.c2m.config import C2MConfig
from dmeta.c2m.data import BEHAVIORS, EVENT_SOURCES, EventLog, from_source
from dmeta.c2m.sequences import BEHAVIOR_VOCAB, build_sequences, build_vocabulary
from dmeta.c2m.synthetic import SyntheticC2M, synthetic_c2m
from dmeta.cluster.kmeans import farthest_removed
from dmeta.config import ConfigError
from dmeta.data.frames import DataError
from dmeta.data.spec import parse_data_spec
from dmeta.datasets import LOADERS
from dmeta.train.harness import (
    CELLS,
    Cell,
    hp_rows,
    shared_choice,
    tune,
    tuning_memo,
    write_atomic,
)
from dmeta.train.results import read_rows

NAME = "c2m"
METHODS = ("Ours", "DEC", "DC", "AE+KM", "BoC-KM", "MST")  # Table 1
BASELINES = METHODS[1:]
RANDOM = "Random"  # Table 1 reference: uniformly random segments, mining metrics only
SOURCES = {  # Table 2: (category-mining behaviours, attribute-mining behaviour)
    "view+cart / buy": (("view", "cart"), "buy"),
    "view / buy": (("view",), "buy"),
    "cart / buy": (("cart",), "buy"),
    "view+cart / cart": (("view", "cart"), "cart"),
}
ABLATIONS = {  # Table 3: changes to Ours' segmentation (Framework 4 changes the mining)
    "Framework 1 (no outlier removal)": {"outlier_z": None},
    "Framework 2 (no clustering loss)": {"alpha": 0.0},
    "Framework 3 (no preference loss)": {"beta": 0.0},
    "Framework 4 (common patterns kept)": {},
    "Raw latent (eq. 6 as written)": {"normalize": False},  # our deviation's ablation
}
CASE_STUDY = "case_study.csv"
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A log ready for the pipeline (U users, L events each at most).

    Attributes:
      x: i32[U, L, 3] behaviour, item and category codes; mask: bool[U, L];
      category: i32[U, L]; users: i64[U] ids; item_codes: item_id -> vocabulary code.
    """

    dataset: str
    events: pd.DataFrame
    attributes: pd.DataFrame | None
    x: np.ndarray
    mask: np.ndarray
    category: np.ndarray
    users: np.ndarray
    n_items: int
    n_categories: int
    item_codes: pd.Series
    truth: SyntheticC2M | None


def load(spec: str, cfg: C2MConfig) -> tuple[str, EventLog, SyntheticC2M | None]:
    """(dataset name, log, planted truth or None) for a ``--data`` spec."""
    data = parse_data_spec(spec)
    if data.name == "synthetic":
        d = cfg.data
        truth = synthetic_c2m(
            n_users=d.synthetic_users,
            n_segments=d.synthetic_segments,
            own_block=d.synthetic_own_block,
            seed=0,
        )
        return "synthetic", truth.log, truth
    if data.name not in EVENT_SOURCES:
        raise DataError(f"--data {spec!r}: c2m reads {['synthetic', *EVENT_SOURCES]}")
    return data.name, from_source(data.name, LOADERS[data.name](data.path)), None


def prepare(spec: str, cfg: C2MConfig) -> Prepared:
    """Loads ``spec``, drops users with fewer than ``min_events`` events, builds sequences."""
    dataset, event_log, truth = load(spec, cfg)
    events = event_log.events
    counts = events.groupby("user_id").size()
    events = events[events["user_id"].isin(counts.index[counts >= cfg.data.min_events])]
    if cfg.data.max_events is not None:  # events are sorted by user and time
        events = events.groupby("user_id", sort=False).tail(cfg.data.max_events)
    items = build_vocabulary(events["item_id"].to_numpy(), max_size=cfg.data.item_vocab)
    cats = build_vocabulary(events["category_id"].to_numpy())
    seqs = build_sequences(events, max_len=cfg.data.max_len, items=items, categories=cats)
    all_items = np.unique(events["item_id"].to_numpy())
    log.info("%s: %d users, %d events", dataset, len(seqs.users), len(events))
    return Prepared(
        dataset=dataset,
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
        self.modes = cfg.mining.alternatives
        if not self.modes:
            raise ConfigError("mining.alternatives: name at least one of uniform, popular")
        self.per_mode = {
            mode: {
                b: demand.choice_situations(
                    prep.events,
                    attributes,
                    n_alternatives=cfg.mining.n_alternatives,
                    seed=seed,
                    source=(b,),
                    top_up=mode,
                )
                for b in ("buy", "cart")
            }
            for mode in self.modes
        }
        self.user_beta = {
            mode: demand.user_logits(choices["buy"], l2=cfg.mining.l2_user)
            for mode, choices in self.per_mode.items()
        }

    @property
    def choices(self) -> dict[str, demand.ChoiceData]:
        """The choice situations by source behaviour, topped up the first way configured."""
        return self.per_mode[self.modes[0]]

    def __call__(
        self,
        labels: np.ndarray,
        *,
        behaviors: tuple[str, ...] | None = None,
        attribute_source: str = "buy",
        exclude_common: bool = True,
        mode: str | None = None,
    ):
        """Returns (patterns, attribute sets, MPP) for user ``labels`` (i32[U], prep.users):
        ``patterns``, then ``attributes`` on them."""
        kept = self.patterns(labels, behaviors=behaviors, exclude_common=exclude_common)
        return kept, *self.attributes(labels, kept, attribute_source=attribute_source, mode=mode)

    def patterns(
        self,
        labels: np.ndarray,
        *,
        behaviors: tuple[str, ...] | None = None,
        exclude_common: bool = True,
    ) -> list[dict[tuple[int, ...], int]]:
        """Per segment its patterns (eq. 8-11; the unique ones with ``exclude_common``) of
        ``behaviors`` (default ``mining.pattern_behaviors``) for user ``labels`` i32[U]."""
        m = self.cfg.mining
        patterns = demand.segment_patterns(
            self.prep.events,
            self.prep.users,
            labels,
            k=m.k_ratio,
            max_length=m.max_pattern_length,
            behaviors=m.pattern_behaviors if behaviors is None else behaviors,
        )
        return patterns.unique if exclude_common else patterns.patterns

    def attributes(
        self,
        labels: np.ndarray,
        kept: list[dict[tuple[int, ...], int]],
        *,
        attribute_source: str = "buy",
        mode: str | None = None,
    ) -> tuple[demand.AttributeSets, float]:
        """(attribute sets, MPP) of user ``labels`` i32[U] from the purchases in the
        categories of each segment's patterns ``kept``; ``mode`` (how the choice sets are
        topped up) defaults to the first of ``mining.alternatives``."""
        mode = self.modes[0] if mode is None else mode
        m, prep = self.cfg.mining, self.prep
        n_seg = int(labels.max()) + 1
        data = self.per_mode[mode][attribute_source]
        seg_of = pd.Series(labels, index=prep.users).reindex(data.user).to_numpy().copy()
        # Integrated demand: purchases in the categories of the segment's patterns.
        for s in range(n_seg):
            cats = {c for p in kept[s] for c in p}
            rows = seg_of == s
            inside = rows & np.isin(data.category, list(cats))
            if inside.sum() >= 2 * data.x.shape[-1]:
                seg_of[rows & ~inside] = -1
        sets = demand.segment_attribute_sets(data, seg_of, n_seg, top=m.top_values, l2=m.l2_segment)
        users_mnl, beta_users = self.user_beta[mode]
        user_seg = pd.Series(labels, index=prep.users).reindex(users_mnl).to_numpy()
        mpp = demand.mean_purchase_probability(
            self.per_mode[mode]["buy"], beta_users, [sets.best[s] for s in user_seg]
        )
        return sets, mpp


def validation_split(n: int, share: float) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) user indices, sorted: a random ``share`` of ``n`` users (at least 2)
    held out, the same for every seed (drawn with seed 0), so a choice tuned on seed 0's
    validation users (``tuning.per_seed = false``) is never scored on them in a later seed."""
    n_val = min(max(2, int(round(share * n))), n - 2)
    val = np.random.default_rng(0).choice(n, n_val, replace=False)
    return np.setdiff1d(np.arange(n), val), np.sort(val)


def silhouette(latent: np.ndarray, labels: np.ndarray, cfg: C2MConfig) -> float:
    """SC of ``labels`` in ``latent`` (sampled above ``silhouette_sample`` users); NaN for
    fewer than two segments (a tuning point that then loses)."""
    if len(np.unique(labels)) < 2:
        return float("nan")
    limit = cfg.protocol.silhouette_sample
    sample = limit if len(labels) > limit else None
    return float(metrics.silhouette(latent, labels, sample_size=sample))


@dataclasses.dataclass(frozen=True)
class Assigned:
    """A segmentation fitted on the fit users (``seg``) and all U users' ``latent`` f[U, Z]
    and nearest-centroid ``labels`` i32[U] in its space."""

    seg: train.Segmentation
    latent: np.ndarray
    labels: np.ndarray


def cluster_metrics(
    latent: np.ndarray,
    labels: np.ndarray,
    inliers: np.ndarray,
    cfg: C2MConfig,
    shared: np.ndarray | None = None,
) -> dict[str, float]:
    """SC and CH of ``labels`` i[N] in ``latent`` f[N, Z], over all N points and over the
    ``inliers`` bool[N] (``_inliers``); ``SC_shared`` in the ``shared`` space f[N, Z'] (one
    space for every method: the seed's pretrained autoencoder latent); the share of
    outliers; the segments holding any of the N points and the largest one's share (a
    segmentation that collapses into a few tight segments can score a high SC)."""
    sizes = np.unique(labels, return_counts=True)[1]
    out = {"outlier_share": float(1.0 - inliers.mean()), "segments": float(len(sizes)),
           "largest_share": float(sizes.max() / len(labels))}  # fmt: skip
    for suffix, keep in (("", slice(None)), ("_inliers", inliers)):
        if len(np.unique(labels[keep])) > 1:
            out["SC" + suffix] = silhouette(latent[keep], labels[keep], cfg)
            out["CH" + suffix] = float(metrics.calinski_harabasz(latent[keep], labels[keep]))
    if shared is not None and len(sizes) > 1:
        out["SC_shared"] = silhouette(shared, labels, cfg)
    return out


def segment_metrics(
    prep: Prepared,
    got: Assigned,
    fit: np.ndarray,
    miner: Miner,
    cfg: C2MConfig,
    outlier_share: float | None = None,
    shared: np.ndarray | None = None,
    **mine_kw,
) -> dict[str, float]:
    """All metrics of one segmentation: SC / CH on the ``fit`` users (i64[F] indices; the
    outliers are the method's own, or with ``outlier_share`` that share of the users farthest
    from their centroid; ``SC_shared`` in ``shared`` f[F, Z'], the seed's pretrained
    autoencoder latent of the fit users), mining and MPP on all users (``mine_kw`` go to
    ``Miner.patterns``)."""
    latent, labels = got.latent[fit], got.labels[fit]
    if outlier_share is None:
        inliers = got.seg.weights > 0
    else:
        inliers = np.asarray(farthest_removed(latent, got.seg.centroids, labels, outlier_share))
    out = cluster_metrics(latent, labels, inliers, cfg, shared)
    return out | mining_metrics(prep, got.labels, miner, **mine_kw)


def mining_metrics(prep: Prepared, labels: np.ndarray, miner: Miner, **mine_kw) -> dict:
    """MPP, unique patterns per segment and the number of distinct segment attribute sets
    (MPP depends on the segmentation only through them) of ``labels`` i32[U] (all users),
    ``MPP_<mode>`` and ``attribute_sets_<mode>`` for every further ``mining.alternatives``;
    on synthetic data also ARI and the recovery of the planted patterns and coefficients."""
    kept = miner.patterns(labels, **mine_kw)  # the same for every way of topping up
    by_mode = {mode: miner.attributes(labels, kept, mode=mode) for mode in miner.modes}
    sets, mpp = by_mode[miner.modes[0]]
    out = {"MPP": mpp, "unique_patterns": float(np.mean([len(p) for p in kept]))}
    out["attribute_sets"] = _distinct_sets(sets)
    for mode in miner.modes[1:]:
        out[f"MPP_{mode}"] = by_mode[mode][1]
        out[f"attribute_sets_{mode}"] = _distinct_sets(by_mode[mode][0])
    truth = prep.truth
    if truth is not None:
        planted = truth.segment[prep.users]
        out["ARI"] = float(adjusted_rand_score(planted, labels))
        match = _matching(planted, labels)
        found = [
            p in kept[match[s]] for s, ps in enumerate(truth.patterns) if s in match for p in ps
        ]
        out["pattern_recall"] = float(np.mean(found))
        out["common_excluded"] = float(all(truth.common_pattern not in k for k in kept))
        err = [np.abs(sets.beta[match[s]] - truth.beta[s]).max() for s in match]
        out["beta_max_abs_err"] = float(np.nanmax(err))
    return out


def _distinct_sets(sets: demand.AttributeSets) -> float:
    """How many distinct attribute sets the segments (with purchases) chose."""
    return float(len({b for b in sets.best if b is not None}))


def case_study(labels: np.ndarray, miner: Miner, top: int = 5) -> pd.DataFrame:
    """Per segment: user share, unique pattern count, the ``top`` most supported unique
    patterns and the attribute set, as text columns (``case_study.csv``)."""
    kept, sets, _ = miner(labels)
    rows = []
    for s in range(int(labels.max()) + 1):
        best = sorted(kept[s].items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        attrs = sets.best[s]
        rows.append(
            dict(
                segment=s,
                share=float(np.mean(labels == s)),
                unique_patterns=len(kept[s]),
                top=", ".join(f"{'→'.join(map(str, p))} ({c})" for p, c in best) or "none",
                attribute_set="none (no purchases)"
                if attrs is None
                else ", ".join(
                    f"field {f}={miner.choices['buy'].levels[f][v]}" for f, v in enumerate(attrs)
                ),
            )
        )
    return pd.DataFrame(rows)


def cells(cfg: C2MConfig, methods: tuple[str, ...], seeds: int) -> list[Cell]:
    """Seed by seed: the chosen Table 1 methods and the random reference, then (with Ours)
    Tables 2-3 and sweeps."""
    out = []
    for seed in range(seeds):
        out += [Cell(m, seed, "table1") for m in METHODS if m in methods]
        out.append(Cell(RANDOM, seed, "table1"))
        if "Ours" not in methods or not cfg.protocol.extras:
            continue
        if cfg.protocol.sources:
            out += [Cell(name, seed, "table2") for name in SOURCES]
        out += [Cell(name, seed, "table3") for name in ABLATIONS]
        if cfg.protocol.sweeps:
            for which in ("alpha", "beta"):
                out += [
                    Cell(f"{which}={v:g}", seed, f"sweep_{which}") for v in _sweep(cfg).values()
                ]
    return out


def _sweep(cfg: C2MConfig) -> dict[str, float]:
    """Sweep values by their label in the method name (``alpha=<label>``)."""
    return {f"{v:g}": v for v in cfg.protocol.sweep_values}


def grid(cfg: C2MConfig, method: str) -> dict[str, tuple]:
    """The tuning grid of a Table 1 method (its first point is the configured setting; the
    k-means baselines have none: one point)."""
    t, s, tr = cfg.tuning, cfg.segmentation, cfg.train
    if method == "Ours":
        return {
            "alpha": (s.alpha, *t.ours_alpha),
            "beta": (s.beta, *t.ours_beta),
            "outlier_z": (s.outlier_z, *t.ours_outlier_z),
        }
    if method in ("DEC", "DC"):
        deep = {
            "learning_rate": (tr.learning_rate, *t.deep_learning_rate),
            "batch_size": (tr.batch_size, *t.deep_batch_size),
        }
        if method == "DEC":
            deep["alpha"] = (1.0, *t.dec_alpha)
        return deep
    return {}


def behavior_weights(cfg: C2MConfig) -> np.ndarray:
    """f32[J]: eq. 7's weight of each behaviour code (1 for padding and OOV)."""
    weights = dataclasses.asdict(cfg.segmentation.behavior_weights)
    return np.array(
        [weights.get(b, 1.0) for b in ["<pad>", "<oov>", *BEHAVIOR_VOCAB.ids]], np.float32
    )


def check_pattern_behaviors(prep: Prepared, behaviors: tuple[str, ...]) -> None:
    """Eq. 8's source behaviours (``mining.pattern_behaviors``) must be known and occur in
    the log: otherwise every segment mines no pattern and the run goes on silently.

    Raises:
      ConfigError: one line naming the setting, its value and the log's behaviours.
    """
    present = sorted(set(prep.events["behavior"].astype(str)))
    unknown = [b for b in behaviors if b not in BEHAVIORS]
    if unknown or not set(behaviors) & set(present):
        what = f"unknown {unknown} (known: {list(BEHAVIORS)})" if unknown else "none occurs"
        raise ConfigError(
            f"mining.pattern_behaviors={','.join(behaviors)}: {what}; {prep.dataset}'s events "
            f"are {','.join(present)} (e.g. --set mining.pattern_behaviors={present[0]})"
        )


class C2MRun:
    """Computes the cells of one run on one prepared log; writes the case study to ``out``."""

    def __init__(self, prep: Prepared, cfg: C2MConfig, out: Path | None = None):
        check_pattern_behaviors(prep, cfg.mining.pattern_behaviors)
        self.prep, self.cfg, self.out = prep, cfg, out
        self.ae = train.init_autoencoder(jax.random.key(0), **self._model_kw())
        self.n_segments = (
            cfg.data.synthetic_segments if prep.truth is not None else cfg.segmentation.n_segments
        )
        self.w_b = behavior_weights(cfg)
        self._state: SeedState | None = None

    def _model_kw(self) -> dict:
        return dict(
            n_behaviors=BEHAVIOR_VOCAB.size,
            n_items=self.prep.n_items,
            n_categories=self.prep.n_categories,
            **dataclasses.asdict(self.cfg.model),
        )

    def seed_state(self, seed: int) -> SeedState:
        """The seed's pretrained parameters and miner (kept for the seed's next cells)."""
        if self._state is None or self._state.seed != seed:
            self._state = None  # frees the previous seed's arrays first
            self._state = SeedState(self, seed)
        return self._state

    def run_cell(self, cell: Cell) -> list[dict]:
        """Long-schema rows of one cell."""
        state = self.seed_state(cell.seed)
        keys = dict(experiment=NAME, dataset=self.prep.dataset, method=cell.method)
        keys |= dict(group=cell.setting, seed=cell.seed)
        if cell.method == RANDOM:
            rng = np.random.default_rng(cell.seed)
            labels = rng.integers(0, self.n_segments, len(self.prep.users)).astype(np.int32)
            return _rows(keys, mining_metrics(self.prep, labels, state.miner))
        if cell.setting == "table1":
            best = state.tuned(cell.method)
            got = state.segment(cell.method, best)
            if cell.method == "Ours" and cell.seed == 0 and self.out is not None:
                frame = case_study(got.labels, state.miner)
                write_atomic(self.out / CASE_STUDY, frame.to_csv(index=False))
            share = None if cell.method == "Ours" else state.ours_outlier_share()
            values = segment_metrics(self.prep, got, state.fit, state.miner, self.cfg,
                                     outlier_share=share, shared=state.shared)  # fmt: skip
            return _rows(keys, values) + hp_rows(best, **keys)
        return _rows(keys, state.extra(cell))


def _rows(keys: dict, values: dict[str, float]) -> list[dict]:
    return [dict(keys, metric=metric, value=value) for metric, value in values.items()]


def finished_value(out: Path | None, cell: Cell, metric: str) -> float | None:
    """``metric``'s value in ``cell``'s rows under ``out/cells`` (None when not written)."""
    path = None if out is None else out / CELLS / f"{cell.key}.csv"
    if path is None or not path.exists():
        return None
    rows = read_rows(path)
    values = rows.loc[rows["metric"] == metric, "value"]
    return float(values.iloc[0]) if len(values) else None


class SeedState:
    """One seed: user split, pretrained autoencoder, miner, tuning results and segmentations
    (memoized)."""

    def __init__(self, run: C2MRun, seed: int):
        cfg, prep = run.cfg, run.prep
        self.run, self.seed = run, seed
        self.fit, self.val = validation_split(len(prep.users), cfg.tuning.val_share)
        self.keys = jax.random.split(jax.random.key(seed), 16)
        params0 = train.init_autoencoder(self.keys[0], **run._model_kw()).params
        self.params, _ = train.pretrain(
            run.ae, params0, prep.x[self.fit], prep.mask[self.fit],
            epochs=cfg.train.pretrain_epochs, key=self.keys[1], shard=cfg.train.data_parallel,
            **self._optim(),
        )  # fmt: skip
        attributes = prep.attributes
        if attributes is None:  # the paper's fallback: sigmoid of item embeddings
            table = np.asarray(self.params["embed"][1]["embedding"])
            attributes = demand.derived_attributes(
                prep.item_codes.index.to_numpy(),
                table[prep.item_codes.to_numpy()],
                n_fields=cfg.mining.derived_fields,
                n_values=cfg.mining.derived_values,
                seed=seed,
            )
        self.miner = Miner(prep, attributes, cfg, seed)
        # One space to score every method's segments in (each method's own latent is
        # shaped by its own objective): the pretrained latent f[F, Z] of the fit users.
        self.shared = train.encode_all(run.ae, self.params, prep.x[self.fit], prep.mask[self.fit])
        self._segmentations: dict[tuple, Assigned] = {}
        self._tuned: dict[str, dict] = {}

    def _optim(self) -> dict:
        tr = self.run.cfg.train
        return dict(
            batch_size=tr.batch_size, learning_rate=tr.learning_rate, decay_end=tr.decay_end
        )

    def tuned(self, method: str) -> dict:
        """The method's grid point of lowest validation score (-SC of the validation users);
        the first point without scoring when ``tuning.trials`` gives one point; with
        ``tuning.per_seed`` False the method's first seed chooses for all (``shared_choice``)."""
        if method not in self._tuned:
            t, points = self.run.cfg.tuning, grid(self.run.cfg, method)

            def score(hp: dict) -> float:
                got = self.segment(method, hp)
                return -silhouette(got.latent[self.val], got.labels[self.val], self.run.cfg)

            cell = Cell(method, self.seed, "table1")

            def choose() -> dict:
                memo = tuning_memo(self.run.out, cell, per_seed=t.per_seed)
                return tune(points, score, trials=t.trials, seed=self.seed, memo=memo).best

            self._tuned[method] = shared_choice(self.run.out, cell, choose, per_seed=t.per_seed)
        return self._tuned[method]

    def ours_outlier_share(self) -> float:
        """The share of fit users that tuned Ours removes as outliers (the other methods'
        ``SC_inliers`` remove as many): read from Ours' finished cell of the seed when the
        run has written it (a resumed run then does not fit Ours again), else computed."""
        done = finished_value(self.run.out, Cell("Ours", self.seed, "table1"), "outlier_share")
        if done is not None:
            return done
        return float(1.0 - self.segment("Ours", self.tuned("Ours")).seg.weights.mean())

    def segment(self, method: str, hp: dict) -> Assigned:
        """The method with hyperparameters ``hp`` fitted on the fit users, all users assigned
        (memoized)."""
        memo = (method, tuple(sorted(hp.items())))
        if memo not in self._segmentations:
            prep, fit = self.run.prep, self.fit
            seg = self._fit(method, hp, prep.x[fit], prep.mask[fit], prep.category[fit])
            self._segmentations[memo] = Assigned(seg, *seg.assign(prep.x, prep.mask, prep.category))
        return self._segmentations[memo]

    def _fit(self, method: str, hp: dict, x, mask, category) -> train.Segmentation:
        run, cfg = self.run, self.run.cfg
        s, optim = cfg.segmentation, self._optim()
        if method == "Ours":
            return train.joint_segmentation(
                run.ae, self.params, x, mask, n_segments=run.n_segments,
                behavior_weights=run.w_b, epochs=cfg.train.joint_epochs, key=self.keys[2],
                shard=cfg.train.data_parallel,
                **optim | dict(alpha=s.alpha, beta=s.beta, outlier_z=s.outlier_z,
                               normalize=s.normalize) | hp,
            )  # fmt: skip
        # The baselines' keys follow Ours' in the order of METHODS.
        common = dict(n_segments=run.n_segments, key=self.keys[2 + METHODS.index(method)])
        if method in ("DEC", "DC"):
            make = (
                baselines.dec_segmentation
                if method == "DEC"
                else baselines.deepcluster_segmentation
            )
            return make(
                run.ae, self.params, x, mask, epochs=cfg.train.joint_epochs, **common,
                **optim | hp,
            )  # fmt: skip
        if method == "AE+KM":
            return baselines.latent_kmeans_segmentation(
                run.ae, self.params, x, mask, **common, n_init=s.kmeans_n_init, **hp
            )
        if method == "MST":
            return self._mst(category, mask, common, hp)
        return baselines.bag_of_categories_segmentation(
            category, mask, run.prep.n_categories, **common, n_init=s.kmeans_n_init, **hp
        )

    def _mst(self, category, mask, common: dict, hp: dict) -> train.Segmentation:
        """MST on the fit users' category shares and the purchase choice situations."""
        s, n_cat = self.run.cfg.segmentation, self.run.prep.n_categories
        fit_users = self.run.prep.users[self.fit]
        data = self.miner.choices["buy"]
        row = np.minimum(np.searchsorted(fit_users, data.user), len(fit_users) - 1)
        row = np.where(fit_users[row] == data.user, row, -1)
        shares = baselines.category_shares(category, mask, n_cat)
        return mst.mst_segmentation(
            shares, data, row, baselines.shares_embed(n_cat), **common,
            n_features=s.mst_features, min_leaf_share=s.mst_min_leaf,
            max_situations=s.mst_situations, **hp,
        )  # fmt: skip

    def extra(self, cell: Cell) -> dict[str, float]:
        """Metrics of a Table 2, Table 3 or sweep cell, around Ours' tuned point."""
        prep, cfg, miner = self.run.prep, self.run.cfg, self.miner
        ours = self.tuned("Ours")
        if cell.setting == "table2":
            behaviors, attr = SOURCES[cell.method]
            *_, mpp = miner(
                self.segment("Ours", ours).labels, behaviors=behaviors, attribute_source=attr
            )
            return {"MPP": mpp}
        if cell.setting == "table3":
            got = self.segment("Ours", ours | ABLATIONS[cell.method])
            keep = cell.method.startswith("Framework 4")
            return segment_metrics(prep, got, self.fit, miner, cfg, shared=self.shared,
                                   exclude_common=not keep)  # fmt: skip
        which, label = cell.method.split("=")
        got = self.segment("Ours", ours | {which: _sweep(cfg)[label]})
        return segment_metrics(prep, got, self.fit, miner, cfg, shared=self.shared)
