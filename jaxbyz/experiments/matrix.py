"""Rules against attacks: one accuracy matrix (rule x attack) per momentum placement and declared
Byzantine count, with each rule's worst attack, as Markdown tables and heatmaps.

A cell is the best top-1 accuracy (in [0, 1]) of the runs of that rule under that attack, the
mean over seeds and over any other setting the grid varies within the panel (learning rate,
Nesterov); the "worst attack" of a rule is the attack whose cell is lowest, the rule's
accuracy under it its robustness to the strongest attack of the grid. A run that diverged counts
with its best accuracy before the divergence (that of the initial model when it diverged at the
first step); runs that failed (an error) are left out (the report lists them), and a cell
without a run is empty.
A rule or an attack that appears with several argument sets is shown once per set.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

PANELS = ("momentum_at", "nb_decl_byz")


def _label(name: Any, args: Any, several: bool) -> str:
    text = str(name)
    if several and isinstance(args, str) and args not in ("", "{}", "nan"):
        text += " " + args
    return text


def variant_labels(frame: pd.DataFrame, name: str, args: str) -> pd.Series:
    """Column ``name`` with the arguments appended where a name appears with several argument
    sets (``optimized {"memory": 0.9}`` beside ``optimized``), so that grouping by it keeps the
    variants apart instead of averaging them as if they were seeds."""
    if frame.empty or args not in frame:
        return frame[name].copy()
    counts = frame.groupby(name)[args].nunique()
    return frame.apply(lambda r: _label(r[name], r[args], counts.get(r[name], 1) > 1), axis=1)


def applies(table: pd.DataFrame) -> bool:
    """Whether the grid crosses at least two rules with at least two attacks."""
    attacked = table[table.get("role", pd.Series(dtype=str)) == "attacked"]
    return not attacked.empty and attacked["gar"].nunique() > 1 and attacked["attack"].nunique() > 1


def matrices(table: pd.DataFrame) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """``[(panel, matrix)]``: per (placement, f), rules as rows, attacks as columns, the mean
    best top-1 accuracy of the runs that completed or diverged, and the columns ``worst attack``
    and ``worst``."""
    counted = table["status"].isin(["completed", "diverged"])
    attacked = table[(table["role"] == "attacked") & counted].copy()
    if attacked.empty:
        return []
    attacked["rule"] = variant_labels(attacked, "gar", "gar_args")
    attacked["attack "] = variant_labels(attacked, "attack", "attack_args")
    out = []
    for values, group in attacked.groupby(list(PANELS), sort=True):
        cells = group.pivot_table(
            index="rule", columns="attack ", values="best_accuracy", aggfunc="mean"
        )
        cells.columns.name, cells.index.name = None, "rule"
        worst = cells.idxmin(axis=1, skipna=True)
        cells["worst attack"] = worst
        cells["worst"] = cells.drop(columns=["worst attack"]).min(axis=1)
        out.append((dict(zip(PANELS, values, strict=True)), cells.sort_values("worst")))
    return out


def placement_worst_cases(table: pd.DataFrame) -> pd.DataFrame:
    """Per declared ``f`` and rule: the worst-case accuracy with momentum at the update and at
    the workers, over the attacks both placements' matrices hold for that rule, the two worst
    attacks, and ``worker - update`` (the paper's question: does worker momentum raise what a
    rule keeps under its strongest attack?). Empty when the grid does not cross the two."""
    panels = {(p["momentum_at"], p["nb_decl_byz"]): cells for p, cells in matrices(table)}
    rows = []
    for f in sorted({f for _, f in panels}):
        if ("update", f) not in panels or ("worker", f) not in panels:
            continue
        update, worker = (panels[(at, f)].drop(columns=["worst attack", "worst"]) for at in
                          ("update", "worker"))  # fmt: skip
        for rule in sorted(set(update.index) & set(worker.index)):
            u, w = update.loc[rule].astype(float), worker.loc[rule].astype(float)
            common = [a for a in u.index if a in w.index and pd.notna(u[a]) and pd.notna(w[a])]
            if not common:
                continue
            u, w = u[common], w[common]
            rows.append(
                {
                    "f": f,
                    "rule": rule,
                    "update": u.min(),
                    "its worst attack": u.idxmin(),
                    "worker": w.min(),
                    "worker's worst attack": w.idxmin(),
                    "worker - update": w.min() - u.min(),
                }
            )
    return pd.DataFrame(rows)


def _placement_lines(table: pd.DataFrame) -> list[str]:
    cases = placement_worst_cases(table)
    if cases.empty:
        return []
    raised = int((cases["worker - update"] > 0).sum())
    lines = [
        "### Worst case by momentum placement",
        "",
        "Each rule's accuracy under its strongest attack (over the attacks run with both "
        "placements), with momentum at the server's update and at the workers: worker momentum "
        f"raises the worst case in {raised} of {len(cases)} (rule, f) cells.",
        "",
        "| f | rule | update | its worst attack | worker | worker's worst attack "
        "| worker - update |",
        "|---:|---|---:|---|---:|---|---:|",
    ]
    for r in cases.itertuples(index=False):
        lines.append(
            f"| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]} | {r[4]:.3f} | {r[5]} | {r[6]:+.3f} |"
        )
    return [*lines, ""]


def title(panel: dict[str, Any]) -> str:
    return f"momentum at the {panel['momentum_at']}s, f = {panel['nb_decl_byz']}"


def markdown(cells: pd.DataFrame) -> str:
    """The matrix as a Markdown table (accuracies to 3 decimals, empty cells as a dash)."""
    header = ["rule", *cells.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rule, row in cells.iterrows():
        values = [
            v if isinstance(v, str) else ("-" if pd.isna(v) else f"{v:.3f}") for v in row.tolist()
        ]
        lines.append("| " + " | ".join([str(rule), *values]) + " |")
    return "\n".join(lines)


LABEL_WIDTH = 32  # characters per line of a heatmap label (an attack with its arguments wraps)


def _label_inches(labels: list[str]) -> float:
    """The length in inches of the longest line of ``labels`` at font size 8 (0.06 in/char)."""
    return 0.06 * max((len(line) for label in labels for line in label.splitlines()), default=0)


def heatmap(panel: dict[str, Any], cells: pd.DataFrame, path: Path) -> Path:
    """Draw the matrix (rows sorted by worst-case accuracy) as a PNG heatmap at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = cells.drop(columns=["worst attack", "worst"]).astype(float)
    grid = np.column_stack([values.to_numpy(), cells["worst"].to_numpy(float)])
    columns = [textwrap.fill(str(c), LABEL_WIDTH) for c in [*values.columns, "worst"]]
    rows = [textwrap.fill(str(r), LABEL_WIDTH) for r in values.index]
    fig, ax = plt.subplots(
        figsize=(
            max(4.5, 1.5 + 0.75 * len(columns) + _label_inches(rows)),
            1.2 + 0.4 * len(values) + 0.71 * _label_inches(columns),  # 45 degrees: x sin 45
        ),
        constrained_layout=True,
    )
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(values)), rows, fontsize=8)
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if v < 0.5 else "black")  # fmt: skip
    ax.axvline(len(columns) - 1.5, color="white", linewidth=2)
    ax.set_title(f"best top-1 accuracy\n{title(panel)}", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def section(table: pd.DataFrame, folder: Path | None) -> list[str]:
    """The report's lines for the rule x attack matrices (heatmaps drawn into ``folder``)."""
    lines = ["## Rules against attacks", ""]
    lines += [
        "Best top-1 accuracy, mean over the runs (seeds, and any other setting the grid varies "
        "within a panel; a diverged run counts with its accuracy before diverging); `worst` is "
        "the rule's accuracy under the strongest attack of the grid (`worst attack`); rules "
        "sorted by it.",
        "",
    ]
    for panel, cells in matrices(table):
        lines += [f"### {title(panel).capitalize()}", "", markdown(cells), ""]
        if folder is not None:
            stem = f"rules-vs-attacks-{panel['momentum_at']}-f{panel['nb_decl_byz']}"
            path = heatmap(panel, cells, folder / f"{stem}.png")
            lines += [f"![{stem}](plots/{path.name})", ""]
    return lines + _placement_lines(table)
