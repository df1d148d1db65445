"""C2M's segmentation over sequence shards, each process reading only its own users.

``dmeta run c2m --data sequences:DIR --methods Ours`` reads the ``seq-*.parquet`` shards that
``dmeta.outofcore.preprocess`` wrote to ``DIR`` (users hashed into shards; vocabularies and
the sequence length L fixed there). The shards, sorted by name, form ``S = data.strata``
contiguous blocks (strata; default one per process, ``distributed.process_shard``), and
process p of P reads only the shards of its strata ``process_shard(S, p, P)``
(``read_users``): its users, sorted by id within a stratum, stratum after stratum.

Per seed the autoencoder is pretrained and Ours' joint segmentation (Algorithm 1) trained on
stratified global batches (``distributed.Strata``: ``B / S`` users of every stratum, each
process feeding its own through ``distributed.global_batch``), all over the data-parallel
mesh of every device of every process. k-means++, the outlier weights and the labels come
from the latents of all users, encoded where they are read and gathered, so every process
computes the same segmentation; one process with S strata on S devices gives the results of S
processes. The cell reports SC, CH, SC_shared and the outlier share on all users (no validation split,
tuning, baselines or mining: those need the whole event log), and process 0 writes each
seed's ``segments_seed<k>.csv`` (``user_id``, ``segment``, ``weight``: 0 for outliers).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import jax
import numpy as np
import pandas as pd

from dmeta import distributed, outofcore
from dmeta.c2m import train
from dmeta.c2m.config import C2MConfig
from dmeta.c2m.protocol import NAME, behavior_weights, cluster_metrics
from dmeta.c2m.sequences import BEHAVIOR_VOCAB, BehaviorSequences
from dmeta.config import ConfigError
from dmeta.data.frames import DataError
from dmeta.data.spec import parse_data_spec
from dmeta.distributed import Strata
from dmeta.train.harness import Cell, finish, open_run, run_cells, write_atomic

SEQUENCES = "sequences"  # the --data name of a folder of sequence shards
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ShardedUsers:
    """This process's users of a folder of sequence shards.

    Attributes:
      seqs: its N users (stratum after stratum, by id within each; ``L = data.max_len``).
      strata: where they sit among all processes' U users.
      n_items, n_categories: vocabulary sizes (largest code of any process + 1).
    """

    seqs: BehaviorSequences
    strata: Strata
    n_items: int
    n_categories: int


def _fields(seqs: BehaviorSequences) -> dict[str, np.ndarray]:
    return {f.name: getattr(seqs, f.name) for f in dataclasses.fields(seqs)}


def _stratum(paths: list[Path], cfg: C2MConfig) -> BehaviorSequences:
    """The users of ``paths`` with at least ``data.min_events`` events (at most L)."""
    d = cfg.data
    seqs = outofcore.read_sequences(paths, d.max_len)
    keep = seqs.mask.sum(1) >= min(d.min_events, d.max_len)
    return BehaviorSequences(**{k: v[keep] for k, v in _fields(seqs).items()})


def gather_ids(users: ShardedUsers) -> np.ndarray:
    """str[U]: the ids of all processes' users in the global order, on every process (as
    UTF-8 bytes of a common width: the collectives carry numbers only)."""
    ids = np.char.encode(users.seqs.users.astype(str), "utf-8")
    width = int(distributed.allgather(np.array(ids.dtype.itemsize)).max())
    codes = np.frombuffer(ids.astype(f"S{width}").tobytes(), np.uint8).reshape(-1, width)
    text = users.strata.gather([codes[b] for b in users.strata.local_slices()])
    return np.char.decode(text.view(f"S{width}").ravel(), "utf-8")


def read_users(folder: str | Path, cfg: C2MConfig) -> ShardedUsers:
    """Reads this process's strata of ``folder``'s shards (a collective: every process
    calls it).

    Raises:
      DataError: fewer shards than strata, sequences longer than ``data.max_len``, or a
        stratum without users (on every process alike).
    """
    paths = sorted(Path(folder).glob("seq-*.parquet"))
    n_strata = cfg.data.strata or jax.process_count()
    if len(paths) < n_strata:
        raise DataError(f"{folder}: {len(paths)} sequence shards for {n_strata} strata")
    mine = distributed.process_shard(n_strata)
    try:
        parts = [
            _stratum(paths[distributed.process_shard(len(paths), s, n_strata)], cfg)
            for s in range(mine.start, mine.stop)
        ]
    except IndexError as err:
        raise DataError(f"{folder}: sequences longer than data.max_len") from err
    strata = Strata.of([len(p.users) for p in parts], n_strata)
    if min(strata.sizes) == 0:
        raise DataError(f"{folder}: a stratum has no users (users per stratum {strata.sizes})")
    seqs = BehaviorSequences(
        **{k: np.concatenate([_fields(p)[k] for p in parts]) for k in _fields(parts[0])}
    )
    top = distributed.allgather(np.array([seqs.item.max(), seqs.category.max()])).max(0)
    log.info(
        "process %d: strata %s of %d, %d of %d users",
        jax.process_index(), list(strata.local), n_strata, len(seqs.users), sum(strata.sizes),
    )  # fmt: skip
    return ShardedUsers(seqs, strata, int(top[0]) + 1, int(top[1]) + 1)


def segment(
    ae: train.Autoencoder, users: ShardedUsers, cfg: C2MConfig, seed: int
) -> tuple[train.Segmentation, np.ndarray]:
    """Ours on all users with the configured setting: the seed's pretraining (keys as
    ``protocol.SeedState``'s), then the joint segmentation of all U users (global order).

    Returns:
      The segmentation and the pretrained autoencoder's latents f[U, Z] of all users (the
      space of ``SC_shared``)."""
    keys = jax.random.split(jax.random.key(seed), 16)
    x, mask, strata = users.seqs.features(), users.seqs.mask, users.strata
    tr, s = cfg.train, cfg.segmentation
    optim = dict(batch_size=tr.batch_size, learning_rate=tr.learning_rate, decay_end=tr.decay_end)
    params0 = train.init_autoencoder(keys[0], **model_kw(users, cfg)).params
    params, _ = train.pretrain(
        ae, params0, x, mask, epochs=tr.pretrain_epochs, key=keys[1], strata=strata, **optim
    )
    seg = train.joint_segmentation(
        ae, params, x, mask, n_segments=s.n_segments, alpha=s.alpha, beta=s.beta,
        behavior_weights=behavior_weights(cfg), outlier_z=s.outlier_z, normalize=s.normalize,
        epochs=tr.joint_epochs, key=keys[2], strata=strata, **optim,
    )  # fmt: skip
    shared = train.encode_users(ae, distributed.to_host(params), x, mask, strata)
    return seg, shared


def model_kw(users: ShardedUsers, cfg: C2MConfig) -> dict:
    """``train.init_autoencoder``'s sizes for these users' vocabularies."""
    return dict(
        n_behaviors=BEHAVIOR_VOCAB.size,
        n_items=users.n_items,
        n_categories=users.n_categories,
        **dataclasses.asdict(cfg.model),
    )


def segments_file(seed: int) -> str:
    return f"segments_seed{seed}.csv"


class ShardedC2MRun:
    """The cells (Ours, one per seed) of a run on sequence shards; writes the segments."""

    def __init__(self, users: ShardedUsers, cfg: C2MConfig, dataset: str, out: Path):
        self.users, self.cfg, self.dataset, self.out = users, cfg, dataset, out
        self.ae = train.init_autoencoder(jax.random.key(0), **model_kw(users, cfg))

    def run_cell(self, cell: Cell) -> list[dict]:
        """Long-schema rows of Ours' cell: SC / CH / outlier share, the last epoch's losses."""
        seg, shared = segment(self.ae, self.users, self.cfg, cell.seed)
        frame = pd.DataFrame(
            {"user_id": gather_ids(self.users), "segment": seg.labels, "weight": seg.weights}
        )
        write_atomic(self.out / segments_file(cell.seed), frame.to_csv(index=False))
        values = cluster_metrics(seg.latent, seg.labels, seg.weights > 0, self.cfg, shared)
        values |= {k: v for k, v in seg.history[-1].items() if k != "step"}
        keys = dict(experiment=NAME, dataset=self.dataset, method=cell.method, group=cell.setting)
        return [dict(keys, seed=cell.seed, metric=m, value=v) for m, v in values.items()]


def run(
    cfg: C2MConfig,
    *,
    data: str,
    out: Path,
    seeds: int,
    methods: tuple[str, ...],
    fresh: bool,
    command: str,
) -> pd.DataFrame:
    """``experiments.c2m.run`` for ``--data sequences:DIR``: Ours' cells, one per seed.

    Raises:
      ConfigError: ``methods`` other than Ours alone.
    """
    if tuple(methods) != ("Ours",):
        raise ConfigError(f"--data {data}: c2m on sequence shards runs Ours only (--methods Ours)")
    folder = parse_data_spec(data).path
    users = read_users(folder, cfg)
    out = open_run(
        out, cfg, data=data, seeds=seeds, methods=methods, command=command, fresh=fresh,
        outputs=[segments_file(seed) for seed in range(seeds)],
    )  # fmt: skip
    protocol = ShardedC2MRun(users, cfg, folder.name, out)
    cells = [Cell("Ours", seed, "table1") for seed in range(seeds)]
    return finish(out, run_cells(out, cells, protocol.run_cell))
