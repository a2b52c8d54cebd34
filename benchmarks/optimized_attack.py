"""Is the ``optimized`` attack at least as strong as every other attack of the library?

Reads the ``runs.csv`` of a sweep that crosses rules with attacks (the ``optimized-paper``
preset: the paper's Fashion-MNIST setting, n = 51, f = 12, median, trmean, krum, cclip, geomed,
both momentum placements, one seed) and prints, per rule and placement, the optimized attack's
final top-1 accuracy next to the strongest other attack's (the lowest final accuracy among
them), and whether the optimized one is within ``--tolerance`` (default 0.01) of it or below::

    python -m jaxbyz.experiments.sweep optimized-paper --output results/optimized-paper
    python benchmarks/optimized_attack.py results/optimized-paper [--json out.json]

Several folders are read as one table (a run in two of them counts by its first execution,
see below), so variants run later in a folder of their own (the ``optimized-tailored`` preset)
are compared with the attacks of the first::

    python benchmarks/optimized_attack.py results/optimized-paper results/optimized-tailored

``--best`` prints only the strongest variant of each (rule, placement, f) cell.

A run's numbers are equal bit for bit only within one compiled program and batch size: the
same run in a switch of several attacks, or alone in its program, rounds differently, and an
attacked run near the edge of training can turn that into a final accuracy 0.2 away. Where a
run id is in several folders (the same run under other programs: the ``optimized-rounding``
preset reruns each cell's strongest other attack alone), the table gives the range of each side
over those executions and a verdict that says whether the rounding decides the cell: ``holds``
(the optimized attack's highest value within ``--tolerance`` of the other's lowest), ``fails``
(its lowest beyond the tolerance of the other's highest), else ``rounding``. The main columns
keep the first folder's execution.

Runs that failed, or have no value of the metric, are left out; a diverged run counts with
its final accuracy (that of the diverged model). A lower accuracy means a stronger attack. The
final accuracy of one seed is noisy (consecutive evaluations of one run can differ by 0.1 under
attack): ``--metric last_mean`` compares the mean accuracy over the last ``--last`` evaluations
(from ``curves.csv.gz``) instead. With several seeds each attack counts by its
mean over them, which the minimum over single runs would bias low, and the difference comes
with its standard error paired by seed (``-0.026 ± 0.052``); ``--seeds 1`` keeps the runs
of the given seeds only (the table of one seed, where folders hold more).

``--attacks`` prints instead every attack of each cell (the optimized variants included; the
folders need not hold the optimized attack) by its mean over seeds, strongest first, with its
difference to ``--reference`` (an attack as the table labels it, default each cell's
strongest), paired by seed, and at how many seeds it leaves a higher value::

    python benchmarks/optimized_attack.py results/optimized-median-dedicated \
        results/optimized-median-directions --attacks --reference 'little factor=1.5 negative=True'
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd

from jaxbyz.experiments.grid import parse_seeds
from jaxbyz.experiments.storage import read_run_table

COUNTED = ("completed", "diverged")
METRICS = ("final_accuracy", "best_accuracy", "last_mean")


def with_last_mean(table: pd.DataFrame, curves: pd.DataFrame, last: int) -> pd.DataFrame:
    """``table`` with ``last_mean``: each run's mean accuracy over its last ``last`` evaluations."""
    ordered = curves.dropna(subset=["accuracy"]).sort_values(["run_id", "step"])
    means = ordered.groupby("run_id")["accuracy"].apply(lambda a: a.tail(last).mean())
    return table.assign(last_mean=table["run_id"].map(means))


def label(attack: str, attack_args: object) -> str:
    """An attack's label: its name, with its given arguments appended (``k=v``)."""
    args = json.loads(attack_args) if isinstance(attack_args, str) and attack_args else {}
    shown = {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in args.items()}
    return " ".join([attack, *(f"{k}={v}" for k, v in sorted(shown.items()))])


def variant(attack_args: object) -> str:
    """The optimized attack's label: ``optimized``, or its non-default arguments appended."""
    return label("optimized", attack_args)


def load_tables(folders: list[Path], metric: str, last: int) -> pd.DataFrame:
    """The runs of every folder's ``runs.csv`` as one table, each row with its ``folder``'s
    position (a run id in several folders is in it once per folder: its executions; see
    :func:`first_executions`), with ``last_mean`` from each folder's ``curves.csv.gz`` when
    asked. Raises ``ValueError`` naming the folder that lacks a file."""
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
        tables.append(table.assign(folder=len(tables)))
    return pd.concat(tables, ignore_index=True)


def first_executions(table: pd.DataFrame) -> pd.DataFrame:
    """One row per run id: its execution in the first folder that holds it."""
    return table.drop_duplicates("run_id", keep="first")


def envelope(executions: pd.DataFrame, run_ids: pd.Series, metric: str) -> tuple[float, float]:
    """The lowest and highest mean of ``metric`` over ``run_ids`` (one per seed) when each run
    may take the value of any of its executions: the mean of each run's lowest value, and of its
    highest."""
    values = executions[executions["run_id"].isin(run_ids)].groupby("run_id")[metric]
    return float(values.min().mean()), float(values.max().mean())


def verdict(low: float, high: float, other_low: float, other_high: float, tolerance: float) -> str:
    """``holds`` when the optimized attack holds under every pairing of executions, ``fails``
    under none, else ``rounding``."""
    if high <= other_low + tolerance:
        return "holds"
    if low > other_high + tolerance:
        return "fails"
    return "rounding"


def strongest(table: pd.DataFrame, metric: str, tolerance: float) -> pd.DataFrame:
    """One row per (rule, placement, f) and variant of the optimized attack (its arguments): its
    ``metric``, the other attack of lowest ``metric`` and its value, the difference, and whether
    it holds within ``tolerance``, from each run's first execution. The other attacks count on
    the variant's seeds only; with several seeds every attack (name and arguments) counts by its
    mean over them, on both sides, and the difference comes with its standard error paired by
    seed (:func:`paired_error`); ``seeds`` is the optimized variant's run count. ``runs`` and
    ``executions`` count the two sides' runs and their executions; the ranges over these
    (:func:`envelope`) and the :func:`verdict` close the row."""
    executions = compared(table, metric)
    attacked = first_executions(executions)
    rows = []
    for (rule, placement, f), group in attacked.groupby(["gar", "momentum_at", "nb_decl_byz"]):
        mine = group[group["attack"] == "optimized"]
        others = group[group["attack"] != "optimized"]
        for label, runs in mine.groupby(mine["attack_args"].map(variant), sort=False):
            found = strongest_other(others[others["seed"].isin(runs["seed"])], metric)
            if found is None:
                continue
            worst_attack, worst, worst_ids = found
            value = float(runs[metric].mean())
            paired = paired_error(runs, others[others["run_id"].isin(worst_ids)], metric)
            low, high = envelope(executions, runs["run_id"], metric)
            other_low, other_high = envelope(executions, worst_ids, metric)
            ids = pd.concat([runs["run_id"], worst_ids])
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
                    "paired error": paired,
                    "holds": value <= worst + tolerance,
                    "runs": int(ids.nunique()),
                    "executions": int(executions["run_id"].isin(ids).sum()),
                    "optimized range": (low, high),
                    "other range": (other_low, other_high),
                    "verdict": verdict(low, high, other_low, other_high, tolerance),
                }
            )
    return pd.DataFrame(rows)


def compared(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The attacked runs that count (completed or diverged) and have a value of ``metric`` (no
    curve: not compared), every execution of them."""
    counted = (table["role"] == "attacked") & table["status"].isin(COUNTED)
    return table[counted & table[metric].notna()]


def attack_means(table: pd.DataFrame, metric: str, reference: str | None = None) -> pd.DataFrame:
    """Every attack (name and arguments, the optimized variants included) of each (rule,
    placement, f) cell by its mean ``metric`` over its seeds, from each run's first execution,
    strongest (lowest) first, with its difference to the ``reference`` attack (a :func:`label`;
    default the cell's strongest), the standard error of that difference paired by seed
    (:func:`paired_error`) and at how many of the seeds both have it leaves a higher value.
    Raises ``ValueError`` when a cell lacks the reference, naming the labels it has."""
    attacked = first_executions(compared(table, metric))
    labels = map(label, attacked["attack"], attacked["attack_args"])
    attacked = attacked.assign(label=list(labels))
    rows = []
    for (rule, placement, f), group in attacked.groupby(["gar", "momentum_at", "nb_decl_byz"]):
        means = group.groupby("label", sort=False)[metric].mean().sort_values(kind="stable")
        chosen = means.index[0] if reference is None else reference
        if chosen not in means.index:
            raise ValueError(
                f"reference={reference!r} is not an attack of the cell ({rule}, {placement}, "
                f"f={f}); pass one of {sorted(means.index)}"
            )
        reference_runs = group[group["label"] == chosen]
        for name, value in means.items():
            runs = group[group["label"] == name]
            higher = seed_differences(runs, reference_runs, metric) > 0
            rows.append(
                {
                    "rule": rule,
                    "momentum_at": placement,
                    "f": int(f),
                    "attack": name,
                    "seeds": len(runs),
                    "mean": float(value),
                    "reference": chosen,
                    "difference": float(value - means[chosen]),
                    "paired error": paired_error(runs, reference_runs, metric),
                    "seeds higher": int(higher.sum()),
                }
            )
    return pd.DataFrame(rows)


def seed_differences(mine: pd.DataFrame, other: pd.DataFrame, metric: str) -> pd.Series:
    """``metric`` of ``mine`` minus that of ``other`` at each seed both have."""
    return (mine.groupby("seed")[metric].mean() - other.groupby("seed")[metric].mean()).dropna()


def paired_error(mine: pd.DataFrame, other: pd.DataFrame, metric: str) -> float:
    """The standard error of the mean difference of ``metric`` between the two attacks' runs,
    paired by seed (``std(d, ddof=1) / sqrt(k)`` over the k seeds both have); NaN under 2."""
    differences = seed_differences(mine, other, metric)
    if len(differences) < 2:
        return float("nan")
    return float(differences.std(ddof=1) / len(differences) ** 0.5)


def strongest_other(others: pd.DataFrame, metric: str) -> tuple[str, float, pd.Series] | None:
    """The attack (name and arguments) of lowest mean ``metric`` among ``others``: its name, that
    mean and its run ids; None without runs."""
    if others.empty:
        return None
    by_attack = others.groupby(["attack", others["attack_args"].fillna("")])
    means = by_attack[metric].mean()
    (name, args), value = means.idxmin(), float(means.min())
    return name, value, by_attack.get_group((name, args))["run_id"]


def cells_held(frame: pd.DataFrame) -> tuple[int, int]:
    """``(held, total)`` over the (rule, placement, f) cells: a cell holds when at least one
    variant of the optimized attack does (the attack with the arguments chosen for the rule)."""
    per_cell = frame.groupby(["rule", "momentum_at", "f"])["holds"].any()
    return int(per_cell.sum()), len(per_cell)


def cell_verdicts(frame: pd.DataFrame) -> dict[str, int]:
    """How many (rule, placement, f) cells hold under every pairing of executions with some
    variant, fail with every variant under every pairing, or depend on the rounding."""
    order = ("holds", "rounding", "fails")  # a cell takes its variants' best verdict
    rank = frame["verdict"].map(order.index)
    best = rank.groupby([frame["rule"], frame["momentum_at"], frame["f"]]).min()
    return {name: int((best == i).sum()) for i, name in enumerate(order)}


def best_per_cell(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (rule, placement, f) cell: the variant of the optimized attack with the lowest
    value (the first listed on ties), so a cell holds here exactly when it holds with some
    variant."""
    best = frame.groupby(["rule", "momentum_at", "f"], sort=True)["optimized"].idxmin()
    return frame.loc[best.to_numpy()].reset_index(drop=True)


def reexecuted(frame: pd.DataFrame) -> bool:
    """Whether some run of the table was executed more than once (in several folders)."""
    return bool((frame["executions"] > frame["runs"]).any())


def markdown(frame: pd.DataFrame) -> str:
    """The table; with the ranges over executions and the verdict where a run was re-executed."""
    ranges = reexecuted(frame)
    head = (
        "| rule | momentum at | f | variant | seeds | optimized | strongest other | its accuracy "
        "| difference | within tolerance |"
    )
    rule = "|---|---|---:|---|---:|---:|---|---:|---:|---|"
    if ranges:
        head += " executions | optimized range | other range | verdict |"
        rule += "---:|---|---|---|"
    lines = [head, rule]
    for r in frame.to_dict(orient="records"):
        line = (
            f"| {r['rule']} | {r['momentum_at']} | {r['f']} | {r['variant']} | {r['seeds']} "
            f"| {r['optimized']:.4f} | {r['strongest other']} | {r['its accuracy']:.4f} "
            f"| {_difference(r)} | {'yes' if r['holds'] else '**no**'} |"
        )
        if ranges:
            line += (
                f" {r['executions']} | {_span(r['optimized range'])} "
                f"| {_span(r['other range'])} | {r['verdict']} |"
            )
        lines.append(line)
    return "\n".join(lines)


def attacks_markdown(frame: pd.DataFrame, metric: str) -> str:
    """The :func:`attack_means` table."""
    lines = [
        f"| rule | momentum at | f | attack | seeds | mean {metric} | reference | difference "
        "| seeds higher |",
        "|---|---|---:|---|---:|---:|---|---:|---:|",
    ]
    for r in frame.to_dict(orient="records"):
        lines.append(
            f"| {r['rule']} | {r['momentum_at']} | {r['f']} | {r['attack']} | {r['seeds']} "
            f"| {r['mean']:.4f} | {r['reference']} | {_difference(r)} | {r['seeds higher']} |"
        )
    return "\n".join(lines)


def _difference(row: dict) -> str:
    error = row["paired error"]
    return f"{row['difference']:+.4f}" + ("" if math.isnan(error) else f" ± {error:.4f}")


def _span(bounds: tuple[float, float]) -> str:
    low, high = bounds
    return f"{low:.4f}" if low == high else f"{low:.4f}-{high:.4f}"


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
    parser.add_argument(
        "--seeds", default=None, help="only the runs of these seeds, e.g. 1 or 1-4 (default all)"
    )
    parser.add_argument(
        "--attacks",
        action="store_true",
        help="instead, every attack of each cell by its mean over seeds, strongest first, with "
        "its difference to --reference paired by seed (folders without the optimized attack "
        "too)",
    )
    parser.add_argument(
        "--reference",
        default=None,
        help="with --attacks, the attack the others are compared with, as the table labels it "
        "(e.g. 'little factor=1.5 negative=True'; default: each cell's strongest)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.last < 1:
        parser.error(f"last={args.last} is invalid; pass a count of evaluations >= 1")
    try:
        table = load_tables(args.results, args.metric, args.last)
        seeds = None if args.seeds is None else parse_seeds(args.seeds)
    except ValueError as error:  # a bad folder or --seeds
        parser.error(str(error))
    if seeds is not None:
        table = table[table["seed"].isin(seeds)]
    if args.reference is not None and not args.attacks:
        parser.error("--reference goes with --attacks")
    if args.attacks:
        try:
            means = attack_means(table, args.metric, args.reference)
        except ValueError as error:
            parser.error(str(error))
        print(attacks_markdown(means, args.metric))
        if args.json is not None:
            args.json.write_text(json.dumps(means.to_dict(orient="records"), indent=1))
        return 0
    frame = strongest(table, args.metric, args.tolerance)
    if frame.empty:
        folders = " ".join(map(str, args.results))
        at = "" if seeds is None else f" at --seeds {args.seeds}"
        parser.error(f"{folders}: no rule with both the optimized attack and another attack{at}")
    print(markdown(best_per_cell(frame) if args.best else frame))
    held = int(frame["holds"].sum())
    cells = f"{held} of {len(frame)} (rule, placement, f, variant) cells"
    print(f"\n{cells} within {args.tolerance} ({args.metric})")
    held_cells, total_cells = cells_held(frame)
    print(f"{held_cells} of {total_cells} (rule, placement, f) cells with some variant within it")
    if reexecuted(frame):
        verdicts = cell_verdicts(frame)
        print(
            f"over every execution of a run: {verdicts['holds']} cells hold under every pairing, "
            f"{verdicts['fails']} fail under every pairing, the rounding decides "
            f"{verdicts['rounding']}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(frame.to_dict(orient="records"), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
