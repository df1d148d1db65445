"""A follow-up run's STMP against a reference run's methods, paired by seed.

A registered follow-up that reruns STMP alone (e.g. ``favorita_type_dropout``, the same split
and seeds as ``favorita_unseen_types``) is compared with every method of its reference run:
mean MSE per group and the ``dmeta.report.stmp.pairwise_section`` table (margin, paired t
over seeds, seeds won), with the follow-up's STMP under ``--label``::

    python -m experiments.stmp_followup experiments/results/stmp/favorita_unseen_types \\
        experiments/results/stmp/favorita_type_dropout --label "STMP+type dropout" \\
        --out experiments/results/stmp/favorita_type_dropout/against_reference.md

With ``--replace`` a follow-up that reruns several methods (``favorita_steps10k``: STMP,
its ablations, the LSTM and MAML at twice the steps) keeps all its rows under their own
names and takes the methods it lacks (the classical baselines) from the reference::

    python -m experiments.stmp_followup experiments/results/stmp/favorita_2026-11-28 \
        experiments/results/stmp/favorita_steps10k --replace \
        --out experiments/results/stmp/favorita_steps10k/against_reference.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from dmeta.report import read_results
from dmeta.report.stmp import mean_mse, pairwise_section
from dmeta.report.tables import markdown_table


def combined(reference: Path, followup: Path, label: str, *, replace: bool = False) -> pd.DataFrame:
    """The reference run's rows and the follow-up's STMP rows (renamed ``label``), restricted
    to the groups and seeds both runs have; with ``replace`` every follow-up method's rows
    (STMP's renamed ``label``) in place of the reference's rows of the same methods."""
    ref, fol = read_results(reference), read_results(followup)
    if fol[fol["method"] == "STMP"].empty:
        raise SystemExit(f"{followup}: no STMP rows")
    if replace:
        ref = ref[~ref["method"].isin(set(fol["method"]))]
    else:
        fol = fol[fol["method"] == "STMP"]
    fol = fol.assign(method=fol["method"].replace({"STMP": label}))
    ref = ref[ref["group"].isin(set(fol["group"])) & ref["seed"].isin(set(fol["seed"]))]
    return pd.concat([ref, fol], ignore_index=True)


def followup_markdown(
    reference: Path, followup: Path, label: str, command: str, *, replace: bool = False
) -> str:
    """Mean MSE per method and group and ``label`` against every other method."""
    scores = combined(reference, followup, label, replace=replace)
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
    parser.add_argument(
        "--replace",
        action="store_true",
        help="the follow-up's methods replace the reference's (STMP keeps its name unless "
        "--label); the methods it lacks come from the reference",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = parser.parse_args(argv)
    default = "STMP" if args.replace else f"STMP ({args.followup.name})"
    label = args.label or default
    command = f"python -m experiments.stmp_followup {args.reference} {args.followup}"
    command += " --replace" if args.replace else ""
    command += f' --label "{label}"' if args.label or not args.replace else ""
    command += f" --out {args.out}" if args.out else ""
    md = followup_markdown(args.reference, args.followup, label, command, replace=args.replace)
    print(md)
    if args.out:
        args.out.write_text(md)


if __name__ == "__main__":
    main()
