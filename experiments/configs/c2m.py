"""C2M experiment config (Xue et al.): paper settings where the paper gives them, else noted."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class C2MConfig:
    """Sizes and hyper-parameters of the segmentation and mining stages."""

    n_segments: int = 6  # real data (the paper's case studies name segments 5 and 6)
    max_len: int = 100  # L (paper sweeps 100, 200, 500)
    min_events: int = 20  # users with fewer events are dropped
    item_vocab: int = 1000  # most frequent items kept, the rest share the OOV code
    d_model: int = 32  # sizes cut for the shared 2-core machine (paper: not stated)
    n_heads: int = 2
    n_layers: int = 2
    latent_dim: int = 8
    batch_size: int = 32  # paper
    data_parallel: bool = False  # split each batch of users over all visible devices
    learning_rate: float = 1e-3  # paper (without the polynomial decay)
    pretrain_epochs: int = 10  # paper: 10
    joint_epochs: int = 5  # paper: 100 (cut for the 2-core budget)
    alpha: float = 0.5
    beta: float = 0.5  # paper's best
    outlier_z: float = 2.0  # outlier threshold, within-cluster standard deviations
    behavior_weights: tuple[tuple[str, float], ...] = (
        ("view", 1.0),
        ("cart", 2.0),
        ("fav", 2.0),
        ("buy", 3.0),
    )
    k_ratio: float = 4.0  # eq. 9: min_sup = n_c / k
    max_pattern_length: int = 3
    n_alternatives: int = 5
    top_values: int = 2  # candidate values per attribute field
    l2_segment: float = 1e-3  # ridge of the per-segment logit (keeps separable data finite)
    l2_user: float = 1.0  # ridge of the per-user logit (MPP)
    derived_fields: int = 4  # attributes from item embeddings (sigmoid), when data has none
    derived_values: int = 2
    silhouette_sample: int = 20_000
    sweep_values: tuple[float, ...] = (0.0, 0.1, 0.5, 1.0)  # alpha and beta (Figures 2-3)
    synthetic_users: int = 600
    synthetic_segments: int = 4
    synthetic_own_block: float = 0.6


def get_config(smoke: bool = False) -> C2MConfig:
    """Paper-size config, or a tiny one that runs in seconds."""
    if not smoke:
        return C2MConfig()
    return C2MConfig(
        n_segments=3,
        max_len=48,
        item_vocab=64,
        d_model=16,
        n_heads=2,
        n_layers=1,
        latent_dim=4,
        pretrain_epochs=20,
        joint_epochs=2,
        k_ratio=2.0,
        sweep_values=(0.0, 0.5),
        synthetic_users=96,
        synthetic_segments=3,
        synthetic_own_block=0.8,
    )
