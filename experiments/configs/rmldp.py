"""RMLDP configs: the paper's Table 1 (``size="paper"``), a CPU-sized run and a smoke run."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class RMLDPConfig:
    """Every knob of an RMLDP run (library functions get these as keyword arguments).

    Data: ``seq_len`` |T_c|, ``horizon_gap`` T_g, ``horizon_len`` T_f (in calendar steps of
    the dataset), ``season`` (None: from the frequency), ``support_frac`` per segment,
    ``train_frac`` of segments for meta-training, ``max_segments`` (None: all; else a
    seeded random subset, for CPU-sized real-data runs), ``max_support`` / ``max_query``
    samples per target segment at meta-test (most recent support, first query).
    Model (Table 1): ``hidden`` GRU size, ``encoder_hidden`` MPFN_s GRU size,
    ``q_d_dim``, ``q_g_dim``, ``graph_dim`` (DeepWalk size), ``inner_lr`` alpha,
    ``meta_lr`` beta, ``lam`` lambda, ``inner_steps``, ``n_tasks`` segments per
    meta-batch ("batch size"), ``n_support`` / ``n_query`` samples per training task,
    ``meta_steps`` outer steps, ``eval_every`` / ``patience`` (meta-validation).
    Graph: ``graph_threshold`` least co-occurrence count of a link; DeepWalk
    ``walks_per_node``, ``walk_length``, ``window``, ``deepwalk_steps``.
    Baselines: ``global_steps`` / ``global_batch`` / ``global_lr`` for the neural models,
    the SGD step counts ``finetune_steps`` and step sizes ``finetune_lrs`` Fine-tune tries
    (the pair with the lowest meta-validation MAPE is used), ``max_train_classical`` (SVR/RF/XGB rows).
    Synthetic data (``dmeta.data.synthetic.make_demand``): ``n_segments``, ``n_clusters``,
    ``carryover`` (the cluster-specific delayed promotion response that makes relations
    matter; 0 turns it off), ``carryover_levels`` (per-cluster multiples of ``carryover``;
    None spreads them over [-1, 1]), ``shared_weekly`` (one weekly profile for all clusters) and
    ``data_seed`` (every model seed of a run sees the same data).
    Protocol: ``sweep_seq_len`` |T_c| values of Figure 6 (RMLDP, seed 0).
    Scale: ``data_parallel`` splits the meta-batch's segments over all visible devices
    (``dmeta.parallel``; ``n_tasks`` must divide by the device count), ``remat``
    checkpoints each inner step (``jax.checkpoint``) to trade compute for memory,
    ``strategy`` batches a meta-batch's segments (``dmeta.meta.batching``: ``"vmap"``,
    ``"map"`` or ``"map_remat"``, whose memory stays flat as the meta-batch grows).
    """

    seq_len: int = 30
    horizon_gap: int = 14
    horizon_len: int = 7
    season: int | None = None
    support_frac: float = 0.7
    train_frac: float = 0.7
    max_segments: int | None = None
    max_support: int = 64
    max_query: int = 32
    hidden: int = 128
    encoder_hidden: int = 128
    q_d_dim: int = 32
    q_g_dim: int = 16
    graph_dim: int = 16
    inner_lr: float = 1e-4
    meta_lr: float = 1e-3
    lam: float = 0.5
    inner_steps: int = 1
    n_tasks: int = 128
    n_support: int = 16
    n_query: int = 16
    meta_steps: int = 2000
    eval_every: int = 100
    patience: int | None = 5
    graph_threshold: float = 2.0
    walks_per_node: int = 10
    walk_length: int = 20
    window: int = 3
    deepwalk_steps: int = 1000
    global_steps: int = 2000
    global_batch: int = 128
    global_lr: float = 1e-3
    finetune_steps: tuple[int, ...] = (1, 3, 10)
    finetune_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2)
    max_train_classical: int = 20000
    sweep_seq_len: tuple[int, ...] = (15, 20, 25, 30, 35, 40)
    n_segments: int = 80
    n_clusters: int = 4
    carryover: float = 0.5
    carryover_levels: tuple[float, ...] | None = None
    data_seed: int = 0
    shared_weekly: bool = True
    data_parallel: bool = False
    remat: bool = False
    strategy: str = "vmap"


def get_config(smoke: bool = False, size: str = "paper") -> RMLDPConfig:
    """``size="paper"``: Table 1; ``"cpu"``: sized for the 2-core machine; smoke: seconds.

    The CPU size keeps Table 1's structure but shrinks the GRUs (32), the meta-batch (8
    segments), the sweep and the step counts (200 meta-steps), and takes 3 inner steps of
    alpha = 3e-2: with one SGD step, Table 1's 1e-4 leaves the initialization all but unchanged
    (a one-seed probe on synthetic data: 1 x 1e-2, 1 x 1e-1, 3 x 3e-2; the last was best for
    both MAML and RMLDP).
    """
    if size not in ("paper", "cpu"):
        raise ValueError(f"size={size!r}; use 'paper' or 'cpu'")
    cfg = RMLDPConfig()
    if size == "cpu" or smoke:
        cfg = dataclasses.replace(
            cfg,
            hidden=32,
            encoder_hidden=16,
            inner_lr=3e-2,
            inner_steps=3,
            n_tasks=8,
            n_support=12,
            n_query=12,
            meta_steps=200,
            eval_every=25,
            deepwalk_steps=400,
            global_steps=200,
            global_batch=64,
            max_train_classical=4000,
            sweep_seq_len=(15, 30, 40),
            n_segments=150,
        )
    if smoke:
        cfg = dataclasses.replace(
            cfg,
            seq_len=8,
            hidden=8,
            encoder_hidden=8,
            q_d_dim=4,
            q_g_dim=4,
            graph_dim=4,
            n_tasks=4,
            n_support=4,
            n_query=4,
            max_support=8,
            max_query=4,
            inner_steps=1,
            meta_steps=6,
            eval_every=3,
            deepwalk_steps=200,
            walks_per_node=5,
            walk_length=10,
            global_steps=6,
            global_batch=8,
            finetune_steps=(2,),
            max_train_classical=200,
            sweep_seq_len=(8,),
            n_segments=20,
            n_clusters=2,
        )
    return cfg
