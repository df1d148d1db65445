"""A follow-up run that reran some methods, read with the other methods of its reference run.

A registered follow-up reruns a few methods of a finished run on the same data, split and
seeds, e.g. Sales CNN's ``completejourney_daily_valfix`` (CNN+WD and CNN+WD+TL early-stopped
on the unweighted validation MSE) against ``completejourney_daily``::

    python -m experiments.followup experiments/results/sales_cnn/completejourney_daily \\
        experiments/results/sales_cnn/completejourney_daily_valfix \\
        --out experiments/results/sales_cnn/completejourney_daily_valfix/against_reference.md

The markdown holds the experiment's own report (``dmeta report``'s tables, e.g. Sales CNN's
Table 1 and the paper's orderings) of the combined rows: the follow-up's methods and the
reference's rows of every method the follow-up did not rerun. Below it, each rerun method
against its reference self: each group's value averaged over seeds in either run, paired
over the groups (``experiments.compare_runs.paired``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from dmeta.report import generic, read_results, renderer
from dmeta.report.tables import markdown_table
from experiments.compare_runs import KEYS, paired


def combine(reference: pd.DataFrame, followup: pd.DataFrame) -> pd.DataFrame:
    """The follow-up's rows and the reference's rows of the methods it did not rerun, those
    restricted to the experiments, groups and seeds the follow-up has.

    Args:
      reference: results rows (``dmeta.report.read_results``) of the finished run.
      followup: results rows of the run that reran some of its methods.
    """
    ref = reference[~reference["method"].isin(set(followup["method"]))]
    for key in ("experiment", "group", "seed"):
        ref = ref[ref[key].isin(set(followup[key]))]
    return pd.concat([ref, followup], ignore_index=True)


def _scores(results: pd.DataFrame, methods: list[str]) -> pd.Series:
    """The value of each scored row of ``methods``, indexed by ``KEYS``: no ``hp:`` rows and
    no ``average`` group (Sales CNN's mean over its regions, not a region to pair)."""
    keep = results["method"].isin(methods) & ~results["metric"].str.startswith("hp:")
    keep &= results["group"] != "average"
    return results[keep].set_index(KEYS)["value"]


def followup_markdown(reference: Path, followup: Path, command: str) -> str:
    """The experiment's report of the combined rows and each rerun method against itself."""
    ref, fol = read_results(reference), read_results(followup)
    scores = combine(ref, fol)
    module = renderer(str(scores["experiment"].iloc[0]))
    title = f"{followup.name} with the other methods of {reference.name}"
    body = generic(scores, title) if module is None else module.render(followup, scores)
    body = body.split("\n", 1)[1].lstrip("\n")  # the report's title, replaced below
    rerun = sorted(set(fol["method"]))
    selves = paired(*(_scores(df, rerun) for df in (ref, fol)))
    selves = selves.rename(columns={"mean_a": reference.name, "mean_b": followup.name})
    return (
        f"# {title}\n\nRegenerate: `{command}`\n\n"
        f"Rows of {', '.join(rerun)} from `{followup.name}`, every other method's from "
        f"`{reference.name}` (the groups and seeds the follow-up has).\n\n{body.rstrip()}\n\n"
        f"## Each rerun method against its `{reference.name}` self (seed means paired over "
        f"groups; `b_lower`: groups where `{followup.name}` is lower)\n\n"
        f"{markdown_table(selves)}\n"
    )


def main(argv: list[str] | None = None) -> None:
    """CLI: prints the comparison and writes it to ``--out`` when given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path, help="the finished run with every method")
    parser.add_argument("followup", type=Path, help="the run that reran some of its methods")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = parser.parse_args(argv)
    command = f"python -m experiments.followup {args.reference} {args.followup}"
    command += f" --out {args.out}" if args.out else ""
    md = followup_markdown(args.reference, args.followup, command)
    print(md)
    if args.out:
        args.out.write_text(md)


if __name__ == "__main__":
    main()
