"""Is the ``optimized`` attack at least as strong as every other attack of the library?

Reads the ``runs.csv`` of a sweep that crosses rules with attacks (the ``optimized-paper``
preset: the paper's Fashion-MNIST setting, n = 51, f = 12, median, trmean, krum, cclip, geomed,
both momentum placements, one seed) and prints, per rule and placement, the optimized attack's
final top-1 accuracy next to the strongest other attack's (the lowest final accuracy among
them), and whether the optimized one is within ``--tolerance`` (default 0.01) of it or below::

    python -m jaxbyz.experiments.sweep optimized-paper --output results/optimized-paper
    python benchmarks/optimized_attack.py results/optimized-paper [--json out.json]

Several folders are read as one table (a run in two of them counts once), so variants run
later in a folder of their own (the ``optimized-tailored`` preset) are compared with the attacks
of the first::

    python benchmarks/optimized_attack.py results/optimized-paper results/optimized-tailored

``--best`` prints only the strongest variant of each (rule, placement, f) cell.

Runs that failed, or have no value of the metric, are left out; a diverged run counts with
its final accuracy (that of the diverged model). A lower accuracy means a stronger attack. The
final accuracy of one seed is noisy (consecutive evaluations of one run can differ by 0.1 under
attack): ``--metric last_mean`` compares the mean accuracy over the last ``--last`` evaluations
(from ``curves.csv.gz``) instead. With several seeds (``--seeds 1-4``) each attack counts by its
mean over them, which the minimum over single runs would bias low.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from jaxbyz.experiments.storage import read_run_table

COUNTED = ("completed", "diverged")
METRICS = ("final_accuracy", "best_accuracy", "last_mean")


def with_last_mean(table: pd.DataFrame, curves: pd.DataFrame, last: int) -> pd.DataFrame:
    """``table`` with ``last_mean``: each run's mean accuracy over its last ``last`` evaluations."""
    ordered = curves.dropna(subset=["accuracy"]).sort_values(["run_id", "step"])
    means = ordered.groupby("run_id")["accuracy"].apply(lambda a: a.tail(last).mean())
    return table.assign(last_mean=table["run_id"].map(means))


def variant(attack_args: object) -> str:
    """The optimized attack's label: ``optimized``, or its non-default arguments appended."""
    args = json.loads(attack_args) if isinstance(attack_args, str) and attack_args else {}
    shown = {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in args.items()}
    return " ".join(["optimized", *(f"{k}={v}" for k, v in sorted(shown.items()))])


def load_tables(folders: list[Path], metric: str, last: int) -> pd.DataFrame:
    """The runs of every folder's ``runs.csv`` as one table (a run id in several folders counts
    once, from the first), with ``last_mean`` from each folder's ``curves.csv.gz`` when asked.
    Raises ``ValueError`` naming the folder that lacks a file."""
    tables = []
    for folder in folders:
        runs = folder / "runs.csv"
        if not runs.is_file():
            raise ValueError(f"results={str(folder)!r} holds no runs.csv; pass a sweep's --output")
        table = read_run_table(runs)  # the attack named "nan" stays a name
        if metric == "last_mean":
            curves = folder / "curves.csv.gz"
            if not curves.is_file():
                raise ValueError(f"metric=last_mean needs {curves}; pass a sweep's --output")
            table = with_last_mean(table, pd.read_csv(curves), last)
        tables.append(table)
    return pd.concat(tables, ignore_index=True).drop_duplicates("run_id", keep="first")


def strongest(table: pd.DataFrame, metric: str, tolerance: float) -> pd.DataFrame:
    """One row per (rule, placement, f) and variant of the optimized attack (its arguments): its
    ``metric``, the other attack of lowest ``metric`` and its value, the difference, and whether
    it holds within ``tolerance``. With several seeds every attack (name and arguments) counts by
    its mean over its seeds, on both sides; ``seeds`` is the optimized variant's run count."""
    counted = (table["role"] == "attacked") & table["status"].isin(COUNTED)
    attacked = table[counted & table[metric].notna()]  # no value (no curve): not compared
    rows = []
    for (rule, placement, f), group in attacked.groupby(["gar", "momentum_at", "nb_decl_byz"]):
        mine = group[group["attack"] == "optimized"]
        others = group[group["attack"] != "optimized"]
        if mine.empty or others.empty:
            continue
        means = others.groupby(["attack", others["attack_args"].fillna("")])[metric].mean()
        (worst_attack, _), worst = means.idxmin(), float(means.min())
        for label, runs in mine.groupby(mine["attack_args"].map(variant), sort=False):
            value = float(runs[metric].mean())
            rows.append(
                {
                    "rule": rule,
                    "momentum_at": placement,
                    "f": int(f),
                    "variant": label,
                    "seeds": len(runs),
                    "optimized": value,
                    "strongest other": worst_attack,
                    "its accuracy": worst,
                    "difference": value - worst,
                    "holds": value <= worst + tolerance,
                }
            )
    return pd.DataFrame(rows)


def cells_held(frame: pd.DataFrame) -> tuple[int, int]:
    """``(held, total)`` over the (rule, placement, f) cells: a cell holds when at least one
    variant of the optimized attack does (the attack with the arguments chosen for the rule)."""
    per_cell = frame.groupby(["rule", "momentum_at", "f"])["holds"].any()
    return int(per_cell.sum()), len(per_cell)


def best_per_cell(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (rule, placement, f) cell: the variant of the optimized attack with the lowest
    value (the first listed on ties), so a cell holds here exactly when it holds with some
    variant."""
    best = frame.groupby(["rule", "momentum_at", "f"], sort=True)["optimized"].idxmin()
    return frame.loc[best.to_numpy()].reset_index(drop=True)


def markdown(frame: pd.DataFrame) -> str:
    lines = [
        "| rule | momentum at | f | variant | seeds | optimized | strongest other | its accuracy "
        "| difference | within tolerance |",
        "|---|---|---:|---|---:|---:|---|---:|---:|---|",
    ]
    for r in frame.to_dict(orient="records"):
        lines.append(
            f"| {r['rule']} | {r['momentum_at']} | {r['f']} | {r['variant']} | {r['seeds']} "
            f"| {r['optimized']:.4f} | {r['strongest other']} | {r['its accuracy']:.4f} "
            f"| {r['difference']:+.4f} | {'yes' if r['holds'] else '**no**'} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "results", type=Path, nargs="+", help="sweep output folders (each holds runs.csv)"
    )
    parser.add_argument(
        "--metric",
        default="final_accuracy",
        choices=METRICS,
        help="the accuracy compared (default: the final one, as the target states it; "
        "last_mean: the mean over the last --last evaluations)",
    )
    parser.add_argument(
        "--last", type=int, default=10, help="evaluations averaged by last_mean (default 10)"
    )
    parser.add_argument(
        "--tolerance", type=float, default=0.01, help="allowed excess accuracy (default 0.01)"
    )
    parser.add_argument(
        "--best",
        action="store_true",
        help="one row per (rule, placement, f): the variant of lowest accuracy only",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.last < 1:
        parser.error(f"last={args.last} is invalid; pass a count of evaluations >= 1")
    try:
        table = load_tables(args.results, args.metric, args.last)
    except ValueError as error:
        parser.error(str(error))
    frame = strongest(table, args.metric, args.tolerance)
    if frame.empty:
        folders = " ".join(map(str, args.results))
        parser.error(f"{folders}: no rule with both the optimized attack and another attack")
    print(markdown(best_per_cell(frame) if args.best else frame))
    held = int(frame["holds"].sum())
    cells = f"{held} of {len(frame)} (rule, placement, f, variant) cells"
    print(f"\n{cells} within {args.tolerance} ({args.metric})")
    held_cells, total_cells = cells_held(frame)
    print(f"{held_cells} of {total_cells} (rule, placement, f) cells with some variant within it")
    if args.json is not None:
        args.json.write_text(json.dumps(frame.to_dict(orient="records"), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
