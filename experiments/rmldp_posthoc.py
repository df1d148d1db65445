"""Post-hoc analyses of a finished RMLDP run (its ``config.json``, ``results.csv`` and
``targets.csv``).

1. Paired tests (t and Wilcoxon) along the issue's ordering RMLDP < MAML < Fine-tune <
   GRU+MPFN, one per adjacent pair the run has (RMLDP-g stands in for RMLDP without a graph).
2. Synthetic data with the delayed promotion response: the data plant a response gamma_i
   per segment (cluster value plus noise, ``make_demand(carryover=...)``) that a target's
   short support set barely shows and its relations reveal, so the gain of RMLDP over MAML
   should grow with |gamma|. The truth is regenerated from the run's config.
3. Scaled targets: each segment's demand is divided by its support-period mean
   (``dmeta.data.tasks``), so a segment that sold almost nothing then has scaled query values
   in the hundreds; their quantiles and share of the sum of squares say whether a few
   segments carry the scaled MSE that early stopping minimizes with
   ``protocol.selection="mean"``. The data are loaded again from the run's config.

With ``--reference DIR`` (a finished run on the same data and split that reran some of the
methods under a change, e.g. ``walmart_scaled`` beside ``walmart_median_800``), the methods
this run lacks are taken from ``DIR`` for the tests above, and each method both runs have is
tested against its ``DIR`` self. ``--reference`` repeats: each reference is tested against
this run's own methods, and a method the run lacks comes from the first reference that has
it.

Writes ``posthoc.md`` (and ``planted_response.{csv,png}``) into the run folder:

    python -m experiments.rmldp_posthoc experiments/results/rmldp/synthetic
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from dmeta import metrics  # noqa: E402
from dmeta.config import format_value, override  # noqa: E402
from dmeta.data.synthetic import make_demand  # noqa: E402
from dmeta.report import read_results  # noqa: E402
from dmeta.report.rmldp import paired_test, per_segment  # noqa: E402
from dmeta.report.tables import markdown_table  # noqa: E402
from dmeta.rmldp.config import RMLDPConfig, get_config  # noqa: E402
from dmeta.rmldp.protocol import load_data, prepare, synthetic_kwargs  # noqa: E402


def run_config(saved: dict) -> RMLDPConfig:
    """The ``RMLDPConfig`` of a run's ``config.json`` contents (dotted paths)."""
    paths = [k for k in saved if "." in k]
    return override(get_config(), [f"{k}={format_value(_value(saved[k]))}" for k in paths])


def _value(value):
    return tuple(value) if isinstance(value, list) else value


def segments(run_dir: Path) -> pd.DataFrame:
    """Per target segment scores of a run with the segment's group: ``segment, group,
    method, seed, mape, mse``."""
    groups = pd.read_csv(run_dir / "targets.csv", dtype=str)
    return per_segment(read_results(run_dir)).merge(groups, on="segment")


ORDER = ("RMLDP", "MAML", "Fine-tune", "GRU+MPFN")


def ordering_tests(scores: pd.DataFrame) -> pd.DataFrame:
    """Paired tests (``dmeta.report.rmldp.paired_test``) of each adjacent pair of ``ORDER``."""
    present = set(scores["method"])
    order = [m for m in ORDER if m in present]
    if "RMLDP" not in present and "RMLDP-g" in present:
        order = ["RMLDP-g", *order]
    return pd.DataFrame([paired_test(scores, a, b) for a, b in zip(order, order[1:])])


RIVALS = ("Fine-tune", "GRU+MPFN", "Linear Regression", "SVR", "Random Forest", "XGBoost", "Naive")


def rival_tests(scores: pd.DataFrame) -> pd.DataFrame:
    """Paired tests of the full RMLDP variant (RMLDP, else RMLDP-g) against each of
    ``RIVALS`` present: does the meta-learner beat the global and classical models?"""
    present = set(scores["method"])
    full = "RMLDP" if "RMLDP" in present else "RMLDP-g"
    if full not in present:
        return pd.DataFrame()
    return pd.DataFrame([paired_test(scores, full, b) for b in RIVALS if b in present])


def gains(
    scores: pd.DataFrame, cfg: RMLDPConfig, a: str = "RMLDP", b: str = "MAML"
) -> pd.DataFrame:
    """Per target segment: group, planted gamma, seed-averaged MAPE of ``a`` and ``b``, gain."""
    truth = make_demand(**synthetic_kwargs(cfg)).truth
    wide = scores.groupby(["segment", "group", "method"])["mape"].mean().unstack()
    wide = wide[[a, b]].dropna().reset_index()
    wide["gamma"] = [truth["carryover"][int(s.removeprefix("seg"))] for s in wide["segment"]]
    wide["gain"] = wide[b] - wide[a]
    return wide


def group_table(wide: pd.DataFrame, a: str = "RMLDP", b: str = "MAML") -> pd.DataFrame:
    """Per group: mean planted gamma, targets, MAPEs, gain and a paired t-test within the group."""
    rows = []
    for group, part in wide.groupby("group"):
        t, p = np.nan, np.nan  # a group with one target has no test
        if len(part) >= 2:
            t, p = metrics.paired_ttest(part[a].to_numpy(), part[b].to_numpy())
        rows.append(
            {
                "group": group,
                "gamma": part["gamma"].mean(),
                "targets": len(part),
                b: part[b].mean(),
                a: part[a].mean(),
                "gain": part["gain"].mean(),
                "t": t,
                "p": p,
                f"{a}_wins": int((part["gain"] > 0).sum()),
            }
        )
    return pd.DataFrame(rows)


def plot(wide: pd.DataFrame, path: Path, a: str = "RMLDP", b: str = "MAML") -> None:
    """Scatter of planted gamma against the MAPE gain of ``a`` over ``b``, one dot per target."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for group, part in wide.groupby("group"):
        ax.scatter(part["gamma"], part["gain"], label=group, s=18)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("planted delayed promotion response gamma")
    ax.set_ylabel(f"MAPE gain of {a} over {b}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def scaled_targets(saved: dict, cfg: RMLDPConfig, large: float = 10.0) -> tuple[pd.DataFrame, int]:
    """Scaled targets of the run's meta-training samples, meta-validation and target queries.

    Returns:
      One row per set (``n``, ``n_above_<large>``, median, 99th percentile, max,
      ``share_above_<large>``: the share of the set's sum of squares from values above
      ``large``) and the number of segments left unscaled (scale 1: their support-period
      mean demand is 0).
    """
    prep = prepare(load_data(saved["data"], cfg), cfg, seq_len=cfg.protocol.seq_len)
    y, n = np.asarray(prep.pool.y), np.asarray(prep.pool.n)
    train = np.asarray(prep.train)
    valid = np.arange(y.shape[1])[None] < n[train][:, None]
    sets = {"meta-train samples": y[train][valid]}
    for name, tasks in (("meta-val queries", prep.val_tasks), ("target queries", prep.target)):
        sets[name] = np.asarray(tasks.query.y)[np.asarray(tasks.query.mask) > 0]
    rows = []
    for name, v in sets.items():
        sq = np.square(v)
        rows.append({"set": name, "n": v.size, f"n_above_{large:g}": int((v > large).sum()),
                     "median": np.median(v), "q99": np.quantile(v, 0.99), "max": v.max(),
                     f"share_above_{large:g}": sq[v > large].sum() / sq.sum()})  # fmt: skip
    unscaled = int((np.asarray(prep.pool.scale) == 1.0).sum())
    return pd.DataFrame(rows), unscaled


def with_reference(
    own: pd.DataFrame, scores: pd.DataFrame, reference: Path
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """``scores`` plus the ``reference`` run's rows of the methods ``scores`` lacks; paired
    tests of each method of ``own`` (the run's own rows) that the reference also has against
    its reference self (``b``: ``"<method> (<dir>)"``); the methods taken. Raises
    ``ValueError`` when the two runs' target segments differ."""
    ref = segments(reference)
    if set(ref["segment"]) != set(own["segment"]):
        raise ValueError(f"{reference}: other target segments than the run's")
    shared = sorted(set(own["method"]) & set(ref["method"]))
    renamed = ref[ref["method"].isin(shared)].assign(
        method=lambda f: f["method"] + f" ({reference.name})"
    )
    both = pd.concat([own, renamed])
    tests = pd.DataFrame([paired_test(both, m, f"{m} ({reference.name})") for m in shared])
    taken = sorted(set(ref["method"]) - set(scores["method"]))
    return pd.concat([scores, ref[ref["method"].isin(taken)]]), tests, taken


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="folder of a finished rmldp run")
    parser.add_argument(
        "--reference",
        type=Path,
        action="append",
        default=[],
        help="a finished run on the same split to compare with (repeatable; a method the run "
        "lacks comes from the first reference that has it)",
    )
    args = parser.parse_args(argv)
    run_dir = args.run_dir
    saved = json.loads((run_dir / "config.json").read_text())
    cfg = run_config(saved)
    own = scores = segments(run_dir)
    command = f"python -m experiments.rmldp_posthoc {run_dir}"
    compared = []
    for reference in args.reference:
        scores, tests, taken = with_reference(own, scores, reference)
        command += f" --reference {reference}"
        compared.append(
            f"## Against the reference run `{reference}`\n\n"
            f"Taken from it for the tests above: {', '.join(taken) or 'none'}. Each method of "
            "both runs against its reference self (seed-averaged MAPE per target segment; "
            "`a` is this run's):\n\n" + markdown_table(tests)
        )
    md = [
        f"# Post-hoc analyses of {run_dir}\n\n`{command}`\n",
        "## Paired tests along RMLDP < MAML < Fine-tune < GRU+MPFN\n\n"
        "Seed-averaged MAPE per target segment; `p_two_sided` and `p_a_less` (a < b) are the "
        "t-test's, `p_wilcoxon` the signed-rank test's (two-sided).\n\n"
        + markdown_table(ordering_tests(scores)),
    ]
    rivals = rival_tests(scores)
    if not rivals.empty:
        md.append(
            "## The full RMLDP variant against the global and classical models\n\n"
            "The same tests, RMLDP (RMLDP-g without baskets) as `a`.\n\n" + markdown_table(rivals)
        )
    md.extend(compared)
    synthetic = saved.get("data") == "synthetic"
    if synthetic and cfg.data.carryover > 0 and {"RMLDP", "MAML"} <= set(scores["method"]):
        wide = gains(scores, cfg)
        wide.to_csv(run_dir / "planted_response.csv", index=False)
        plot(wide, run_dir / "planted_response.png")
        rho, p_rho = stats.spearmanr(wide["gamma"].abs(), wide["gain"])
        md.append(
            "## RMLDP gain against the planted delayed response\n\n"
            "Within-group t-tests are descriptive (the groups were not chosen in advance).\n\n"
            + markdown_table(group_table(wide))
            + f"\nSpearman rank correlation of |gamma| with the gain over {len(wide)} "
            f"targets: {rho:.3f} (p = {p_rho:.2g})\n\n![gain](planted_response.png)\n"
        )
    table, unscaled = scaled_targets(saved, cfg)
    md.append(
        "## Scaled targets (demand / (T_f x support-period mean))\n\n"
        f"Segments with zero support-period demand (left unscaled): {unscaled}.\n\n"
        + markdown_table(table)
    )
    text = "\n".join(md)
    (run_dir / "posthoc.md").write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
