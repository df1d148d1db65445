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

``--also RUN`` (repeatable) lays further runs over the reference first, each replacing the
methods it has (``favorita_grid_round2`` retunes STMP, the LSTM and XGBoost: its reference
is ``favorita_2026-11-28`` with ``favorita_steps10k``'s neural rows over it). With
``--replace`` the markdown also pairs every follow-up method with its own rows in that
reference (mean MSE before and after, change, paired t over seeds).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from dmeta.report import read_results
from dmeta.report.glance import layered
from dmeta.report.stmp import mean_mse, pairwise_section
from dmeta.report.tables import markdown_table, significance_table


def combined(ref: pd.DataFrame, fol: pd.DataFrame, label: str, *, replace: bool) -> pd.DataFrame:
    """The reference rows and the follow-up's STMP rows (renamed ``label``), restricted to the
    groups and seeds both have; with ``replace`` every follow-up method's rows (STMP's renamed
    ``label``) in place of the reference's rows of the same methods."""
    if replace:
        ref = ref[~ref["method"].isin(set(fol["method"]))]
    else:
        fol = fol[fol["method"] == "STMP"]
    fol = fol.assign(method=fol["method"].replace({"STMP": label}))
    ref = ref[ref["group"].isin(set(fol["group"])) & ref["seed"].isin(set(fol["seed"]))]
    return pd.concat([ref, fol], ignore_index=True)


def changes_section(before: pd.DataFrame, after: pd.DataFrame) -> str:
    """Every method of ``after`` against its own rows in ``before``: mean MSE per group
    before and after, the change (negative: lower after), paired t over seeds, and in how
    many seeds it is lower after."""
    before, after = (f[f.metric == "mse"] for f in (before, after))
    rows = []
    for method in dict.fromkeys(after.method):
        pair = pd.concat(
            [before[before.method == method].assign(method="before"),
             after[after.method == method].assign(method="after")]
        )  # fmt: skip
        groups = set(pair.group[pair.method == "before"]) & set(pair.group[pair.method == "after"])
        if not groups:
            continue
        sig = significance_table(
            pair[pair.group.isin(groups)], "after", "before", "mse", by=("group",)
        )
        for row in sig.itertuples(index=False):
            seeds = pair[pair.group == row.group].pivot(
                index="seed", columns="method", values="value"
            )
            seeds = seeds.dropna()
            rows.append(dict(
                method=method, group=row.group, before=round(row.mean_b), after=round(row.mean_a),
                change=f"{100.0 * row.diff / row.mean_b:+.1f}%", p=f"{row.p_value:.2g}",
                lower=f"{int((seeds.after < seeds.before).sum())}/{len(seeds)}",
            ))  # fmt: skip
    if not rows:
        return ""
    return (
        "## Each rerun method against its reference rows (MSE; paired t over seeds; seeds "
        f"lower after)\n\n{markdown_table(pd.DataFrame(rows))}"
    )


def followup_markdown(
    reference: Sequence[Path],
    followup: Path,
    label: str,
    command: str,
    *,
    replace: bool = False,
) -> str:
    """Mean MSE per method and group and ``label`` against every other method of the
    reference runs (``layered``); with ``replace`` also ``changes_section``."""
    ref, fol = layered(reference), read_results(followup)
    if fol[fol["method"] == "STMP"].empty:
        raise SystemExit(f"{followup}: no STMP rows")
    scores = combined(ref, fol, label, replace=replace)
    means = mean_mse(scores).round(0).rename_axis("method").reset_index()
    sections = [
        f"# {followup.name}: {label} against {' + '.join(run.name for run in reference)}",
        f"Regenerate: `{command}`",
        f"## Mean MSE over seeds\n\n{markdown_table(means)}",
        pairwise_section(scores, ours=label),
        changes_section(ref, fol) if replace else "",
    ]
    return "\n\n".join(section.strip() for section in sections if section) + "\n"


def main(argv: list[str] | None = None) -> None:
    """CLI: prints the comparison and writes it to ``--out`` when given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path, help="run with every method")
    parser.add_argument("followup", type=Path, help="run with STMP (same split and seeds)")
    parser.add_argument(
        "--also",
        type=Path,
        action="append",
        default=[],
        help="a run laid over the reference, its methods replacing the reference's "
        "(repeatable, in order)",
    )
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
    command += "".join(f" --also {run}" for run in args.also)
    command += " --replace" if args.replace else ""
    command += f' --label "{label}"' if args.label or not args.replace else ""
    command += f" --out {args.out}" if args.out else ""
    reference = [args.reference, *args.also]
    md = followup_markdown(reference, args.followup, label, command, replace=args.replace)
    print(md)
    if args.out:
        args.out.write_text(md)


if __name__ == "__main__":
    main()
