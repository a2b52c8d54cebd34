"""The sweep report: the paper's headline statistics, tables and plots, as Markdown and PNG.

Headline statistic (El-Mhamdi, Guerraoui & Rouault, ICLR 2021, Section 4; computed as the
analysis part of its ``reproduce.py``): every pair of runs that differ only in the momentum
placement (same dataset, n, f, learning rate, Nesterov, rule, attack and seed) is compared through
the best top-1 accuracies (in [0, 1]) of its ``update`` run, its ``worker`` run and its unattacked
baseline ``ref`` (n - f workers, average, same settings and seed)::

    loss = ref - acc_update        (what the attack costs with classic momentum)
    gain = acc_worker - acc_update (what moving momentum to the workers wins back)

For t in {0.1, 0.2, 0.4}: the pairs with loss > t ("effective attacks") and, among them, those
with gain > t; over all pairs, those with gain < 0, < -0.02, < -0.05 and, among the gain < 0,
those where ``ref - acc_worker`` > 0.05 and > 0.1 ("optimality loss"). The paper's claim: where
loss > 0.2, gain > 0 in every pair and gain > 0.2 in more than 60% of them.
"""

from __future__ import annotations

import io
import math
import sys
import textwrap
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jaxbyz.experiments import matrix

THRESHOLDS = (0.1, 0.2, 0.4)
HEADLINE_TEXT = (
    "As the paper's `reproduce.py` computes it: each pair of runs differing only in the momentum "
    "placement (same dataset, n, f, learning rate, Nesterov, rule, attack and seed) is compared "
    "through best top-1 accuracies in [0, 1]: `ref` of the unattacked baseline (n - f workers, "
    "average, same settings and seed), `loss = ref - acc_update`, `gain = acc_worker - "
    "acc_update`. The paper's claim (ICLR 2021, 3680 runs): where loss > 0.2, gain > 0 in every "
    "pair and gain > 0.2 in more than 60% of them."
)
SETTING = ("dataset", "nb_workers", "nb_decl_byz", "learning_rate", "momentum_nesterov")
# the federated and graph fields: part of a setting where they vary within the table
EXTRA_SETTING = ("nb_local_steps", "clients_per_round", "topology", "mixing", "nb_real_byz")
PAIR_COLUMNS = (*SETTING, *EXTRA_SETTING, "gar", "attack", "seed")
PLACEMENTS = ("update", "worker")
# per-run figures of federated and graph runs (jaxbyz.experiments.runner.run_extras)
EXTRA_FIGURES = (
    "byzantine_participants_mean",
    "consensus_final",
    "node_accuracy_min",
    "node_accuracy_mean",
    "node_accuracy_max",
)


def setting_keys(table: pd.DataFrame) -> list[str]:
    """The columns that make a setting: :data:`SETTING`, and those of :data:`EXTRA_SETTING`
    that vary within ``table`` (a synchronous grid's tables keep the paper's columns)."""
    extra = [c for c in EXTRA_SETTING if c in table and table[c].nunique(dropna=False) > 1]
    return [c for c in SETTING if c in table] + extra


def with_settings(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the missing values of :data:`EXTRA_SETTING` written out (``all`` clients
    per round, no topology: ``-``), so that grouping keeps those runs, and a rule or an attack
    that appears with several argument sets named with its arguments, so that grouping keeps
    its variants apart (:func:`jaxbyz.experiments.matrix.variant_labels`)."""
    table = table.copy()
    for name in ("gar", "attack"):
        if name in table:
            table[name] = matrix.variant_labels(table, name, f"{name}_args")
    if "clients_per_round" in table:
        table["clients_per_round"] = [
            "all" if pd.isna(v) else str(int(v)) for v in table["clients_per_round"]
        ]
    if "topology" in table:
        table["topology"] = table["topology"].astype(object).where(table["topology"].notna(), "-")
    return table


# ---------------------------------------------------------------------------------------------- #
# Statistics


def placement_pairs(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (update, worker) pair with its baseline: ``ref``, accuracies, loss, gain.

    Pairs where a run or the baseline is missing or has no accuracy (failed) are left out.
    """
    table = with_settings(table)
    attacked = table[table["role"] == "attacked"]
    runs = {p: attacked[attacked["momentum_at"] == p].set_index("pair_id") for p in PLACEMENTS}
    common = runs["update"].index.intersection(runs["worker"].index)
    update, worker = runs["update"].loc[common], runs["worker"].loc[common]
    baselines = table[table["role"] == "baseline"].set_index("run_id")["best_accuracy"]
    keep = [*setting_keys(table), *(c for c in ("gar", "attack", "seed") if c in table)]
    pairs = update[keep].copy()
    pairs["ref"] = baselines.reindex(update["baseline_id"]).to_numpy(dtype=float)
    pairs["acc_update"] = update["best_accuracy"].to_numpy(dtype=float)
    pairs["acc_worker"] = worker["best_accuracy"].to_numpy(dtype=float)
    pairs["loss"] = pairs["ref"] - pairs["acc_update"]
    pairs["gain"] = pairs["acc_worker"] - pairs["acc_update"]
    complete = pairs[["ref", "acc_update", "acc_worker"]].notna().all(axis=1)
    return pairs[complete].reset_index()


def headline(pairs: pd.DataFrame) -> dict[str, Any]:
    """The paper's counts over ``pairs`` (see the module docstring) and whether its claim holds."""
    loss, gain = pairs["loss"].to_numpy(), pairs["gain"].to_numpy()
    optimality = (pairs["ref"] - pairs["acc_worker"]).to_numpy()
    stats: dict[str, Any] = {"pairs": len(pairs)}
    for t in THRESHOLDS:
        stats[f"loss>{t}"] = int(np.sum(loss > t))
        stats[f"loss>{t},gain>{t}"] = int(np.sum((loss > t) & (gain > t)))
    stats["loss>0.2,gain>0"] = int(np.sum((loss > 0.2) & (gain > 0)))
    for t in (0, -0.02, -0.05):
        stats[f"gain<{t}"] = int(np.sum(gain < t))
    for t in (0.05, 0.1):
        stats[f"gain<0,ref-worker>{t}"] = int(np.sum((gain < 0) & (optimality > t)))
    effective = stats["loss>0.2"]
    stats["claim_holds"] = bool(
        effective > 0
        and stats["loss>0.2,gain>0"] == effective
        and stats["loss>0.2,gain>0.2"] > 0.6 * effective
    )
    return stats


def subsets(pairs: pd.DataFrame) -> Iterable[tuple[str, pd.DataFrame]]:
    """All pairs, then per dataset, f, learning rate, attack and rule (as the paper's subsets)."""
    yield "everything", pairs
    for column, label in (
        ("dataset", "{}"),
        ("nb_decl_byz", "f = {}"),
        ("learning_rate", "lr = {}"),
        ("momentum_nesterov", "nesterov = {}"),
        ("nb_local_steps", "K = {} local steps"),
        ("clients_per_round", "{} clients per round"),
        ("topology", "topology {}"),
        ("mixing", "mixing {}"),
        ("attack", "attack {}"),
        ("gar", "rule {}"),
    ):
        if column in pairs.columns and pairs[column].nunique() > 1:
            for value, part in pairs.groupby(column, sort=True):
                yield label.format(value), part


def headline_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """The headline counts per subset, as printed by the paper's ``reproduce.py``."""
    rows = []
    for label, part in subsets(pairs):
        s = headline(part)
        row = {"subset": label, "pairs": s["pairs"]}
        for t in THRESHOLDS:
            row[f"loss > {t}"] = s[f"loss>{t}"]
            row[f"... and gain > {t}"] = s[f"loss>{t},gain>{t}"]
        row["loss > 0.2 and gain > 0"] = s["loss>0.2,gain>0"]
        row["gain < 0"] = s["gain<0"]
        row["gain < -0.02"] = s["gain<-0.02"]
        row["gain < -0.05"] = s["gain<-0.05"]
        row["claim holds"] = "yes" if s["claim_holds"] else "no"
        rows.append(row)
    return pd.DataFrame(rows)


def claim_text(stats: dict[str, Any]) -> str:
    """One paragraph saying whether the paper's claim holds on these pairs, with the numbers."""
    effective = stats["loss>0.2"]
    if effective == 0:
        return (
            f"No pair among {stats['pairs']} has an attack that costs more than 0.2 of accuracy "
            "with update momentum, so the paper's claim cannot be tested on these runs."
        )
    positive, above = stats["loss>0.2,gain>0"], stats["loss>0.2,gain>0.2"]
    verdict = "holds" if stats["claim_holds"] else "does not hold"
    return (
        f"The paper's claim {verdict} here: of the {stats['pairs']} pairs, {effective} have an "
        f"attack costing more than 0.2 with update momentum; worker momentum raises the best "
        f"accuracy in {positive} of them ({_pct(positive, effective)}; the paper: all) and by "
        f"more than 0.2 in {above} ({_pct(above, effective)}; the paper: more than 60%). "
        f"Worker momentum lowers the best accuracy in {stats['gain<0']} of all pairs "
        f"(by more than 0.02 in {stats['gain<-0.02']}, more than 0.05 in {stats['gain<-0.05']})."
    )


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "n/a"


def placement_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Worker vs update momentum per setting, rule and attack: mean and spread over seeds."""
    table = with_settings(table)
    attacked = table[(table["role"] == "attacked") & table["momentum_at"].isin(PLACEMENTS)]
    if attacked.empty:
        return pd.DataFrame()
    baselines = table[table["role"] == "baseline"].set_index("run_id")["best_accuracy"]
    keys = [*setting_keys(table), *(c for c in ("gar", "attack") if c in table.columns)]
    rows = []
    for values, group in attacked.groupby(keys, sort=True):
        row = dict(zip(keys, values, strict=True))
        refs = baselines.reindex(group["baseline_id"].unique()).to_numpy(dtype=float)
        row["baseline"] = _mean_std(refs)
        means = {}
        for placement in PLACEMENTS:
            accs = group.loc[group["momentum_at"] == placement, "best_accuracy"].to_numpy(float)
            row[placement] = _mean_std(accs)
            means[placement] = np.nanmean(accs) if np.isfinite(accs).any() else np.nan
        row["gain (mean)"] = f"{means['worker'] - means['update']:+.3f}"
        row["seeds"] = int(group["seed"].nunique()) if "seed" in group else len(group)
        rows.append(row)
    return pd.DataFrame(rows)


def extras_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Federated and graph runs: per setting, rule, attack and placement, the mean over seeds
    of the best accuracy and of :data:`EXTRA_FIGURES` (empty for a synchronous grid)."""
    figures = [c for c in EXTRA_FIGURES if c in table and table[c].notna().any()]
    if not figures or table.empty:
        return pd.DataFrame()
    table = with_settings(table)
    attacked = table[table["role"] == "attacked"]
    keys = [*setting_keys(table), "gar", "attack", "momentum_at"]
    keys = [k for k in dict.fromkeys(keys) if k in attacked]
    out = attacked.groupby(keys, sort=True)[["best_accuracy", *figures]].mean()
    return out.reset_index().round(4)


def ratio_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per rule and placement: the mean variance-norm ratio, the bound, the share under it."""
    attacked = table[(table["role"] == "attacked") & table["bound"].notna()]
    if attacked.empty:
        return pd.DataFrame()
    keys = [c for c in ("dataset", "nb_decl_byz", "gar", "momentum_at") if c in table.columns]
    if "mean_sampled_ratio" not in attacked.columns:  # tables written before it was recorded
        attacked = attacked.assign(mean_sampled_ratio=np.nan)
    out = attacked.groupby(keys, sort=True).agg(
        bound=("bound", "mean"),
        mean_ratio=("mean_ratio", "mean"),
        mean_sampled_ratio=("mean_sampled_ratio", "mean"),
        share_under_bound=("share_under_bound", "mean"),
        paper_share_under_bound=("paper_share_under_bound", "mean"),
        runs=("run_id", "count"),
    )
    return out.reset_index().round(4)


def _mean_std(values: np.ndarray) -> str:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "n/a"
    return f"{values.mean():.3f} ± {values.std():.3f}"  # std over seeds, as reproduce.py


# ---------------------------------------------------------------------------------------------- #
# Markdown


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (no extra dependency)."""
    if frame.empty:
        return "(none)\n"
    columns = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:g}"
    return str(value).replace("|", "\\|")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def write_report(
    root: str | Path,
    table: pd.DataFrame,
    curves: pd.DataFrame | None,
    meta: dict[str, Any],
    plots: bool = True,
) -> Path:
    """Write ``report.md`` (and ``plots/*.png``) in ``root``; return the report's path."""
    root = Path(root)
    pairs = placement_pairs(table) if not table.empty else pd.DataFrame()
    plots = plots and curves is not None
    if plots and not plotting_available():
        print(
            "note: plots skipped: matplotlib is not installed (pip install 'jaxbyz[plot]')",
            file=sys.stderr,
        )
        plots = False
    figures = make_plots(table, curves, root / "plots") if plots else []
    lines = _header(table, meta)
    lines += ["## Headline statistic (the paper's)", "", HEADLINE_TEXT, ""]
    if pairs.empty:
        lines += ["No complete (update, worker, baseline) triple yet.", ""]
    else:
        lines += [claim_text(headline(pairs)), "", markdown_table(headline_table(pairs))]
    lines += ["## Worker vs update momentum per rule and attack", ""]
    lines += [
        "Best top-1 accuracy, mean ± standard deviation over seeds; the baseline is the "
        "unattacked average with n - f workers.",
        "",
        markdown_table(placement_summary(table)),
    ]
    extras = extras_summary(table)
    if not extras.empty:
        lines += ["## Federated rounds and graphs", ""]
        lines += [
            "Mean over seeds: best top-1 accuracy (a graph: of the honest nodes' average model), "
            "Byzantine clients per round (partial participation), final consensus distance "
            "mean_i ||x_i - mean x||^2 and the final accuracy of the worst, mean and best honest "
            "node (graphs).",
            "",
            markdown_table(extras),
        ]
    lines += ["## Variance-norm ratio and the rules' bounds", ""]
    lines += [
        "Mean over steps and runs of the variance-norm ratio of the honest submissions (momenta "
        "with worker momentum) and of the sampled gradients; share of steps with the submissions' "
        "ratio under the rule's bound (the paper's count also requires the loss to stay at most "
        "its initial value).",
        "",
        markdown_table(ratio_summary(table)),
    ]
    if matrix.applies(table):
        lines += matrix.section(table, root / "plots" if plots else None)
    if figures:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}](plots/{p.name})" for p in figures] + [""]
    lines += _failures(table)
    path = root / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _header(table: pd.DataFrame, meta: dict[str, Any]) -> list[str]:
    sessions = meta.get("sessions", [])
    wall = sum(s.get("wall_s", 0.0) for s in sessions)
    compile_s = sum(s.get("compile_s", 0.0) for s in sessions)
    compiled = sum(s.get("compiled", 0) for s in sessions)
    counts = table["status"].value_counts().to_dict() if not table.empty else {}
    lines = [f"# Sweep `{meta.get('name', '?')}`", "", meta.get("description", ""), ""]
    if sessions:
        lines += [f"Command: `{sessions[-1].get('command', '')}`", ""]
    lines += [
        f"- runs recorded: {len(table)} of {meta.get('runs_total', len(table))} "
        f"({', '.join(f'{v} {k}' for k, v in sorted(counts.items())) or 'none'})",
        f"- wall time: {_duration(wall)} over {len(sessions)} session(s), of which compilation "
        f"{_duration(compile_s)} for {compiled} compiled program(s)",
        f"- devices: {', '.join(sorted({d for s in sessions for d in s.get('devices', [])}))}",
        "",
    ]
    return lines


def _failures(table: pd.DataFrame) -> list[str]:
    if table.empty:
        return []
    failed = table[table["status"] != "completed"]
    if failed.empty:
        return ["All runs completed.", ""]
    lines = ["## Runs that did not complete", ""]
    lines += [f"- `{r.name}`: {r.status} ({r.reason})" for r in failed.itertuples()]
    return [*lines, ""]


# ---------------------------------------------------------------------------------------------- #
# Plots


def plotting_available() -> bool:
    """Whether matplotlib (the ``plot`` extra) is installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def make_plots(table: pd.DataFrame, curves: pd.DataFrame, folder: Path) -> list[Path]:
    """Accuracy and variance-norm ratio curves per setting: rows attacks, columns rules."""
    import matplotlib

    matplotlib.use("Agg")
    table = with_settings(table)
    attacked = table[table["role"] == "attacked"]
    if attacked.empty or curves.empty:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    by_run = {k: g.sort_values("step") for k, g in curves.groupby("run_id")}
    baselines = table[table["role"] == "baseline"]
    paths = []
    keys = setting_keys(table)
    for values, group in attacked.groupby(keys, sort=True):
        if not group["run_id"].isin(list(by_run)).any():
            continue  # every run of this setting failed: nothing to draw
        stem = _setting_stem(dict(zip(keys, values, strict=True)))
        refs = baselines[baselines["run_id"].isin(group["baseline_id"])]
        paths.append(_figure(group, refs, by_run, "accuracy", folder / f"accuracy-{stem}.png"))
        paths.append(_figure(group, refs, by_run, "ratio", folder / f"ratio-{stem}.png"))
    return paths


def _setting_stem(setting: dict[str, Any]) -> str:
    stem = (
        f"{setting['dataset']}-n_{setting['nb_workers']}-f_{setting['nb_decl_byz']}"
        f"-lr_{setting['learning_rate']:g}"
    )
    stem += "-nesterov" if setting["momentum_nesterov"] else ""
    short = {"nb_local_steps": "K", "clients_per_round": "M", "nb_real_byz": "byz"}
    for name in EXTRA_SETTING:
        if name in setting:
            value = str(setting[name]).replace(":", "").replace("/", "")
            stem += f"-{short[name]}_{value}" if name in short else f"-{value}"
    return stem


def _mean_curve(run_ids: Iterable[str], by_run: dict, column: str):
    """(steps, mean, std) over the runs' curves (same steps), or None when there is none."""
    frames = [by_run[r] for r in run_ids if r in by_run]
    if not frames or column not in frames[0]:
        return None
    steps = frames[0]["step"].to_numpy()
    stack = np.stack([f[column].to_numpy(float) for f in frames if len(f) == len(steps)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN steps (step 0 of the ratio)
        return steps, np.nanmean(stack, axis=0), np.nanstd(stack, axis=0)


PANEL_TITLE_WIDTH = 28  # characters of a curve panel's title per line, at its 1.9 in width


def panel_title(rule: str, attack: str) -> str:
    """A curve panel's title, ``rule / attack``, wrapped to :data:`PANEL_TITLE_WIDTH` characters a
    line (an attack named with its arguments is longer than the panel is wide)."""
    return textwrap.fill(f"{rule} / {attack}", PANEL_TITLE_WIDTH)


def _figure(group, refs, by_run, column: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    attacks, rules = sorted(group["attack"].unique()), list(dict.fromkeys(group["gar"]))
    titles = {(a, r): panel_title(r, a) for a in attacks for r in rules}
    title_lines = max(t.count("\n") + 1 for t in titles.values())
    fig, axes = plt.subplots(
        len(attacks),
        len(rules),
        figsize=(1.9 * len(rules), (1.5 + 0.12 * (title_lines - 1)) * len(attacks) + 0.4),
        squeeze=False,
        sharex=True,
        sharey=column == "accuracy",
    )
    for i, attack in enumerate(attacks):
        for j, rule in enumerate(rules):
            ax = axes[i, j]
            cell = group[(group["attack"] == attack) & (group["gar"] == rule)]
            _draw_cell(ax, cell, refs, by_run, column)
            ax.set_title(titles[attack, rule], fontsize=7)
            ax.tick_params(which="both", labelsize=6)
    legend: dict[str, Any] = {}  # every cell's entries, once: the first cell may be empty
    for ax in axes.flat:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(text, handle)
    if legend:
        axes[0, 0].legend(list(legend.values()), list(legend), fontsize=5, loc="best")
    label = "top-1 accuracy" if column == "accuracy" else "variance-norm ratio"
    fig.supylabel(label, fontsize=7)
    fig.supxlabel("step", fontsize=7)
    fig.suptitle(path.stem.split("-", 1)[1], fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.2 / fig.get_figheight()))  # 0.2 in: the suptitle
    _save_small(fig, path)
    plt.close(fig)
    return path


def _save_small(fig, path: Path) -> None:
    """Save as a 72-dpi PNG with an adaptive 64-colour palette (a few tens of kilobytes)."""
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=72, format="png")
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=64).save(path, optimize=True)


def _draw_sampled(ax, cell, by_run) -> None:
    """The worker runs' sampled-gradient ratio (the paper's "sample" curve), when recorded."""
    ids = cell.loc[cell["momentum_at"] == "worker", "run_id"]
    curve = _mean_curve(ids, by_run, "sampled_ratio")
    if curve is not None and np.isfinite(curve[1]).any():
        ax.plot(curve[0], curve[1], color="C1", lw=0.8, ls="--", label="worker: sampled")


def _draw_cell(ax, cell, refs, by_run, column: str) -> None:
    from matplotlib.ticker import NullFormatter

    for k, placement in enumerate(PLACEMENTS):
        ids = cell.loc[cell["momentum_at"] == placement, "run_id"]
        curve = _mean_curve(ids, by_run, column)
        if curve is None:
            continue
        steps, mean, std = curve
        ax.plot(steps, mean, color=f"C{k}", lw=1, label=placement)
        ax.fill_between(steps, mean - std, mean + std, color=f"C{k}", alpha=0.2, lw=0)
    if column == "accuracy":
        ref = _mean_curve(refs["run_id"], by_run, column)
        if ref is not None:
            ax.plot(ref[0], ref[1], color="k", lw=0.8, ls="--", label="no attack")
        ax.set_ylim(0, 1)
    else:
        _draw_sampled(ax, cell, by_run)
        bounds = cell["bound"].dropna()
        if not bounds.empty:
            ax.axhline(bounds.iloc[0], color="r", lw=0.8, ls=":", label="bound")
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(NullFormatter())
