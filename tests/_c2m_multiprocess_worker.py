"""Worker of tests/test_multiprocess.py's C2M checks: ``dmeta.c2m.sharded.run`` on shards.

    python tests/_c2m_multiprocess_worker.py SHARDS OUT --strata 2     # one process
    python tests/_c2m_multiprocess_worker.py SHARDS OUT --coordinator localhost:PORT \
        --num-processes 2 --process-id I                            # one of several

Runs C2M's Ours (a tiny config, 1 seed) on the sequence shards in SHARDS, writing the run
folder OUT (process 0), and prints one JSON line: the process, its devices, its strata and
the ids of the users it read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dmeta.c2m import sharded  # noqa: E402
from dmeta.c2m.config import get_config  # noqa: E402
from experiments.benchmarks._multiprocess import add_cluster_args, join  # noqa: E402

MAX_LEN = 16


def config(strata: int | None):
    """The smoke config cut to seconds: L = 16, 2 + 2 epochs of batches of 8 users."""
    cfg = get_config(smoke=True)
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, max_len=MAX_LEN, min_events=4, strata=strata),
        train=dataclasses.replace(cfg.train, batch_size=8, pretrain_epochs=2, joint_epochs=2),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("shards", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--strata", type=int)
    add_cluster_args(parser)
    args = parser.parse_args()
    info = join(args)
    cfg = config(args.strata)
    users = sharded.read_users(args.shards, cfg)
    sharded.run(
        cfg, data=f"sequences:{args.shards}", out=args.out, seeds=1, methods=("Ours",),
        fresh=False, command="tests/_c2m_multiprocess_worker.py",
    )  # fmt: skip
    line = dict(
        dataclasses.asdict(info),
        strata=list(users.strata.local),
        sizes=list(users.strata.sizes),
        users=users.seqs.users.astype(str).tolist(),
    )
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
