"""C2M experiment config (Xue et al.): paper settings where the paper gives them, else noted.

Sections: ``data`` (preprocessing and the synthetic generator), ``model`` (the behaviour
autoencoder, built with ``init_autoencoder(key, **asdict(cfg.model), ...)``), ``train``
(minibatch Adam), ``segmentation`` (Ours: eq. 6-7 weights and outlier threshold; the
baselines' fixed settings),
``mining`` (PrefixSpan, logits, derived attributes), ``protocol`` (which tables run) and
``tuning``.

Equal tuning: per seed the users are split once (seeded) into validation users (a
``tuning.val_share``) and fit users (the rest). Every method, the shared autoencoder's
pretraining included, is fitted on the fit users only, and the validation users are assigned
to their nearest centroid in the method's space (MST: to their leaf). Every Table 1 method gets ``tuning.trials``
points of its grid (the first point is the configured setting, so ``trials = 1`` runs the
defaults alone), each scored by the negative silhouette (SC, the table's first metric) of the
validation users; the chosen point's fit is the reported one, and SC / CH are reported on the
fit users (``SC_inliers`` / ``CH_inliers`` without the outliers), the mining and MPP on all
users. AE+KM, BoC-KM and MST have no hyperparameter to tune (one point). ``--set
tuning.trials=9`` gives every method 9 points (all of a smaller grid).

``--data sequences:DIR`` (the shards of ``dmeta.outofcore.preprocess``) runs Ours alone on
all users, each process reading only its strata of the shards (``data.strata``,
``dmeta.c2m.sharded``); ``data.max_len`` must be the preprocessing's L, ``data.min_events``
counts the (at most L) events kept, the vocabularies are the preprocessing's.
"""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Preprocessing and the synthetic log (drawn once, seed 0)."""

    max_len: int = 100  # L (paper sweeps 100, 200, 500)
    min_events: int = 20  # users with fewer events are dropped
    max_events: int | None = None  # each user's last events kept for mining too (None: all)
    item_vocab: int = 1000  # most frequent items kept, the rest share the OOV code
    synthetic_users: int = 600
    synthetic_segments: int = 4
    synthetic_own_block: float = 0.6
    # --data sequences:DIR (dmeta.c2m.sharded): user strata, contiguous blocks of DIR's sorted
    # shards, each read by one process only; every batch takes batch_size / strata users of
    # each. None: one per process (set it to P on one process with P devices to reproduce P
    # processes). Unused by the other --data sources.
    strata: int | None = None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """``BehaviorAutoencoder`` sizes (cut for the shared 2-core machine; paper: not stated)."""

    d_model: int = 32
    n_heads: int = 2
    n_layers: int = 2
    latent_dim: int = 8
    dropout: float = 0.0  # rate while training (paper: 0.2)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Minibatch Adam over users (pretraining and every deep method)."""

    batch_size: int = 32  # paper
    learning_rate: float = 1e-3  # paper
    # Final / initial rate of a linear (polynomial, power 1) decay over each fit; None keeps
    # the rate. Paper: "polynomial decay" from 1e-3, here TensorFlow's default end 1e-4: 0.1.
    decay_end: float | None = None
    pretrain_epochs: int = 10  # paper: 10
    joint_epochs: int = 5  # paper: 100 (cut for the 2-core budget)
    data_parallel: bool = False  # split each batch of users over all visible devices


@dataclasses.dataclass(frozen=True)
class BehaviorWeights:
    """Eq. 7 weight of each behaviour."""

    view: float = 1.0
    cart: float = 2.0
    fav: float = 2.0
    buy: float = 3.0
    remove: float = 1.0
    follow: float = 1.0
    click: float = 1.0


@dataclasses.dataclass(frozen=True)
class SegmentationConfig:
    """Ours (Algorithm 1, steps 2-3) and the baselines' fixed settings."""

    # Real data (synthetic: its planted count). The paper gives one count: ten segments in
    # its MCD case study (4.3.2); --size paper uses it, the cpu size our 6.
    n_segments: int = 6
    alpha: float = 0.5
    beta: float = 0.5  # paper's best
    # Outlier threshold: distance to the centroid above the cluster's mean + outlier_z stds
    # (None: keep all). Paper: tuned in {0, 0.1, 0.5, 1}, unit not stated.
    outlier_z: float | None = 1.0
    # Eq. 6 on the latent standardized to unit total variance of its inliers. Not in the
    # paper: without it the clustering loss also falls by shrinking the latent (measured;
    # Table 3 ablation), and with outliers in the statistics by pushing them away.
    normalize: bool = True
    kmeans_n_init: int = 4  # k-means++ restarts of AE+KM and BoC-KM (best inertia)
    mst_features: int = 10  # MST: split candidates, the categories of largest mean share
    mst_min_leaf: float = 0.05  # MST: least share of the users in a leaf
    mst_situations: int = 20_000  # MST: choice situations its likelihoods are fitted on
    behavior_weights: BehaviorWeights = BehaviorWeights()


@dataclasses.dataclass(frozen=True)
class MiningConfig:
    """The mining stage shared by every segmentation."""

    pattern_behaviors: tuple[str, ...] = ("view", "cart")  # eq. 8 (purchase-only logs: buy)
    k_ratio: float = 4.0  # eq. 9: min_sup = n_c / k
    max_pattern_length: int = 3
    n_alternatives: int = 5
    # How the choice sets are topped up (``demand.choice_situations``): "uniform" over the
    # category's items, or "popular" in proportion to their events. The first gives MPP and
    # attribute_sets (and MST's choice situations); each further one adds MPP_<name> and
    # attribute_sets_<name> to the results.
    alternatives: tuple[Literal["uniform", "popular"], ...] = ("uniform",)
    top_values: int = 2  # candidate values per attribute field
    l2_segment: float = 1e-3  # ridge of the per-segment logit (keeps separable data finite)
    l2_user: float = 1.0  # ridge of the per-user logit (MPP)
    derived_fields: int = 4  # attributes from item embeddings (sigmoid), when data has none
    derived_values: int = 2


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    """Which parts run, and the scoring."""

    extras: bool = True  # Tables 2-3 (source behaviours, ablations) around Ours
    sources: bool = True  # Table 2 within the extras (needs view and cart events)
    sweeps: bool = True  # Figures 2-3 (alpha and beta sweeps); needs extras
    sweep_values: tuple[float, ...] = (0.0, 0.1, 0.5, 1.0)  # alpha and beta
    silhouette_sample: int = 20_000


@dataclasses.dataclass(frozen=True)
class TuningConfig:
    """Equal tuning of the Table 1 methods (see the module docstring).

    Each grid is the configured value first, then these alternatives. ``per_seed``: tune
    every (method, seed) on its own; False: the first seed of a method tunes and its other
    seeds reuse the choice (``dmeta.train.harness.shared_choice``), every method alike.
    """

    trials: int = 1
    per_seed: bool = True
    val_share: float = 0.2  # share of users (seeded per seed) held out for scoring
    ours_alpha: tuple[float, ...] = (0.1, 1.0)  # after segmentation.alpha (paper's grid)
    ours_beta: tuple[float, ...] = (0.1, 1.0)  # after segmentation.beta
    ours_outlier_z: tuple[float, ...] = (0.0, 0.1, 0.5)  # after segmentation.outlier_z
    dec_alpha: tuple[float, ...] = (0.1, 0.5)  # DEC's Student-t alpha, after 1 (DEC paper)
    deep_learning_rate: tuple[float, ...] = (3e-4, 3e-3)  # DEC and DC, after train's
    deep_batch_size: tuple[int, ...] = (16, 64)  # DEC and DC, after train's


@dataclasses.dataclass(frozen=True)
class C2MConfig:
    """The whole C2M experiment."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    segmentation: SegmentationConfig = SegmentationConfig()
    mining: MiningConfig = MiningConfig()
    protocol: ProtocolConfig = ProtocolConfig()
    tuning: TuningConfig = TuningConfig()


def get_config(*, smoke: bool = False, size: str = "cpu") -> C2MConfig:
    """The cpu-size config (``size="paper"``: the paper's 100 joint epochs, dropout 0.2,
    learning-rate decay and ten segments), or a tiny one that runs in seconds with ``smoke``."""
    if smoke:
        return C2MConfig(
            data=DataConfig(
                max_len=48,
                item_vocab=64,
                synthetic_users=96,
                synthetic_segments=3,
                synthetic_own_block=0.8,
            ),
            model=ModelConfig(d_model=16, n_heads=2, n_layers=1, latent_dim=4),
            train=TrainConfig(pretrain_epochs=20, joint_epochs=2),
            segmentation=SegmentationConfig(n_segments=3),
            mining=MiningConfig(k_ratio=2.0),
            protocol=ProtocolConfig(sweep_values=(0.0, 0.5)),
        )
    if size == "paper":
        return C2MConfig(
            model=ModelConfig(dropout=0.2),
            train=TrainConfig(joint_epochs=100, decay_end=0.1),
            segmentation=SegmentationConfig(n_segments=10),
        )
    return C2MConfig()
