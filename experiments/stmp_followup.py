"""A follow-up run's STMP against a reference run's methods, paired by seed.

A registered follow-up that reruns STMP alone (e.g. ``favorita_type_dropout``, the same split
and seeds as ``favorita_unseen_types``) is compared with every method of its reference run:
mean MSE per group and the ``dmeta.report.stmp.pairwise_section`` table (margin, paired t
over seeds, seeds won), with the follow-up's STMP under ``--label``::

    python -m experiments.stmp_followup experiments/results/stmp/favorita_unseen_types \\
        experiments/results/stmp/favorita_type_dropout --label "STMP+type dropout" \\
        --out experiments/results/stmp/favorita_type_dropout/against_reference.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from dmeta.report import read_results
from dmeta.report.stmp import mean_mse, pairwise_section
from dmeta.report.tables import markdown_table


def combined(reference: Path, followup: Path, label: str) -> pd.DataFrame:
    """The reference run's rows and the follow-up's STMP rows (renamed ``label``), restricted
    to the groups and seeds both runs have."""
    ref, fol = read_results(reference), read_results(followup)
    fol = fol[fol["method"] == "STMP"].assign(method=label)
    if fol.empty:
        raise SystemExit(f"{followup}: no STMP rows")
    ref = ref[ref["group"].isin(set(fol["group"])) & ref["seed"].isin(set(fol["seed"]))]
    return pd.concat([ref, fol], ignore_index=True)


def followup_markdown(reference: Path, followup: Path, label: str, command: str) -> str:
    """Mean MSE per method and group and ``label`` against every reference method."""
    scores = combined(reference, followup, label)
    means = mean_mse(scores).round(0).rename_axis("method").reset_index()
    return (
        f"# {followup.name}: {label} against {reference.name}\n\n"
        f"Regenerate: `{command}`\n\n"
        f"## Mean MSE over seeds\n\n{markdown_table(means)}\n\n"
        f"{pairwise_section(scores, ours=label)}\n"
    )


def main(argv: list[str] | None = None) -> None:
    """CLI: prints the comparison and writes it to ``--out`` when given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path, help="run with every method")
    parser.add_argument("followup", type=Path, help="run with STMP (same split and seeds)")
    parser.add_argument("--label", default=None, help="name of the follow-up's STMP rows")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = parser.parse_args(argv)
    label = args.label or f"STMP ({args.followup.name})"
    command = (
        f"python -m experiments.stmp_followup {args.reference} {args.followup} "
        f'--label "{label}"' + (f" --out {args.out}" if args.out else "")
    )
    md = followup_markdown(args.reference, args.followup, label, command)
    print(md)
    if args.out:
        args.out.write_text(md)


if __name__ == "__main__":
    main()
