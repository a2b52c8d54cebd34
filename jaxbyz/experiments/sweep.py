"""``python -m jaxbyz.experiments.sweep``: a grid of runs, batched, resumable, with its report.

Reproduces the experiments of El-Mhamdi, Guerraoui & Rouault, "Distributed Momentum for
Byzantine-resilient SGD" (ICLR 2021) in one command, and runs user grids from TOML files. Runs that
share shapes run as one compiled ``jit(vmap(run))`` program over seeds and traced
hyper-parameters; finished batches are stored atomically, so the same command resumes a killed
sweep; ``report.md`` (the paper's headline statistics), ``runs.csv``, ``curves.csv.gz`` and
``plots/`` are written in the output folder.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

EPILOG = """\
presets (experiments/presets/*.toml):
{presets}

examples:
  python -m jaxbyz.experiments.sweep smoke                       # < 2 minutes, synthetic data
  python -m jaxbyz.experiments.sweep paper-fashion-mnist --seeds 1 \\
      --set momentum_nesterov=false --output experiments/results/paper-fashion-mnist-seed1
  python -m jaxbyz.experiments.sweep --grid my-grid.toml --dry-run
  python -m jaxbyz.experiments.sweep paper --report-only --output results/paper

A grid file sets Config fields by name (see python -m jaxbyz.train --help); any field may be a
list, and the runs are the product of the lists; [[axis.NAME]] tables set several fields together
(e.g. an attack and its arguments); baseline = true adds the unattacked average with n - f
workers for every attacked setting; include = ["preset", ...] unites grids. Killed sweeps resume
with the same command: finished runs are skipped.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser; ``--help`` lists the presets."""
    from jaxbyz.experiments import grid

    presets = "\n".join(
        f"  {name:22s}{grid.read_spec(name).get('description', '')}" for name in grid.preset_names()
    )
    p = argparse.ArgumentParser(
        prog="python -m jaxbyz.experiments.sweep",
        description="Run a grid of simulated Byzantine-resilient SGD runs (El-Mhamdi, Guerraoui "
        "& Rouault, ICLR 2021): a preset (the paper's grids) or a TOML file; runs that share "
        "shapes are one compiled, vmapped program; finished batches are stored atomically, so "
        "the same command resumes a killed sweep; a Markdown report with the paper's headline "
        "statistics, tables and plots is written at the end.",
        epilog=EPILOG.format(presets=presets),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("preset", nargs="?", help="a preset name (see the list below); or use --grid")
    add("--grid", metavar="FILE.toml", help="a grid file (TOML) instead of a preset")
    add("--output", metavar="DIR", help="result folder (default: results/<grid name>)")
    add(
        "--seeds",
        metavar="SEEDS",
        help="replace the grid's seeds, e.g. 1-5 or 1,3 (PRNG seeds of the runs)",
    )
    add(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="replace a configuration field of the grid; VALUE is a TOML value, lists allowed "
        "(--set learning_rate=[0.5,0.02] --set momentum_nesterov=false); repeatable",
    )
    add(
        "--max-batch",
        type=int,
        default=8,
        help="at most this many runs vmapped in one program call (memory bound; default "
        "%(default)s)",
    )
    add(
        "--devices",
        default="all",
        help="local devices to spread batches over: all, a count N, or indices 0,2 "
        "(default %(default)s)",
    )
    add(
        "--compile-workers",
        type=int,
        default=None,
        help="threads compiling programs ahead of the one running (default: one per core, at "
        "most 8); 1 compiles one program at a time, still overlapped with execution",
    )
    add("--platform", default=None, help="device platform: cpu, gpu or tpu (default: JAX's)")
    add(
        "--cache-dir",
        default=str(Path.home() / ".cache" / "jaxbyz" / "xla"),
        help="persistent compilation cache, so a resumed sweep does not compile again; 'none' "
        "turns it off (default %(default)s)",
    )
    add("--dry-run", action="store_true", help="list the runs and programs; compile nothing")
    add(
        "--report-only",
        action="store_true",
        help="rebuild the tables, report and plots from the output folder; run nothing",
    )
    add("--retry-failed", action="store_true", help="run again the runs recorded as errors")
    add("--no-plots", action="store_true", help="write the report without the PNG plots")
    add("--no-progress", action="store_true", help="no progress bar")
    return p


def parse_overrides(items: list[str], seeds: str | None) -> dict[str, Any]:
    """``FIELD=VALUE`` items and ``--seeds`` into grid overrides."""
    from jaxbyz.experiments.grid import parse_seeds, parse_value

    overrides: dict[str, Any] = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE, e.g. learning_rate=0.5")
        overrides[field.strip()] = parse_value(value.strip())
    if seeds is not None:
        overrides["seed"] = parse_seeds(seeds)
    return overrides


def dry_run(sweep: Any) -> None:
    """Print the grid's runs grouped by program, marking those already done."""
    grid = sweep.grid
    seeds = len({r.config.seed for r in grid.runs})
    print(
        f"grid {grid.name}: {len(grid.runs)} runs ({grid.count('attacked')} attacked, "
        f"{grid.count('baseline')} baseline): {grid.configurations()} configurations, "
        f"{seeds} seed(s)"
    )
    if grid.left_out:
        reasons = sorted({reason for _, reason in grid.left_out})
        print(f"left out by rule constraints: {len(grid.left_out)} combinations ({reasons[0]}...)")
    plan = sweep.plan()
    pending = sum(len(b) for _, batches in plan for b in batches)
    print(f"{len(grid.runs) - pending} runs already done; {pending} to run in {len(plan)} programs")
    for i, (program, batches) in enumerate(plan, 1):
        sizes = ", ".join(str(len(b)) for b in batches)
        print(f"program {i} [{program.id}] {program.label}: batches of {sizes}")
        for run in program.runs:
            print(f"    {run.id}  {run.name}")


def report(store: Any, meta: dict[str, Any], plots: bool) -> Path:
    """Rebuild the tables from the stored parts (when present) and write the report."""
    import pandas as pd

    from jaxbyz.experiments.report import write_report

    if store.parts.exists():
        rows, curves = store.load()
        store.write_tables(rows, curves)
    table_path, curves_path = store.root / "runs.csv", store.root / "curves.csv.gz"
    if not table_path.exists():
        raise ValueError(f"--output {str(store.root)!r} holds no results (no runs.csv)")
    table = pd.read_csv(table_path, dtype={"reason": str})
    table["reason"] = table["reason"].fillna("")
    curves_frame = pd.read_csv(curves_path) if curves_path.exists() else None
    return write_report(store.root, table, curves_frame, meta, plots=plots)


def check_datasets(sweep: Any) -> None:
    """Load every dataset of the grid now, so that a missing one stops the sweep with one line
    (instead of failing each of its runs)."""
    from jaxbyz.data import DatasetNotFoundError

    seen = set()
    for run in sweep.grid.runs:
        key = (run.config.dataset, run.config.data_dir)
        if key in seen:
            continue
        seen.add(key)
        try:
            sweep.dataset(run.config)
        except DatasetNotFoundError as err:
            raise ValueError(f"{err}; for a sweep: --set dataset=synthetic") from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m jaxbyz.experiments.sweep``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _main(args, argv)
    except ValueError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    return 2


def _main(args: argparse.Namespace, argv: list[str] | None) -> int:
    from jaxbyz.experiments import grid as grid_lib
    from jaxbyz.experiments import runner

    if (args.preset is None) == (args.grid is None) and not args.report_only:
        raise ValueError("give exactly one of a preset name or --grid FILE.toml")
    source = args.grid or args.preset
    if args.report_only and source is None:
        if args.output is None:
            raise ValueError("--report-only needs --output DIR (or the grid)")
        store = runner.Store(args.output)
        print(report(store, store.read_meta(), plots=not args.no_plots))
        return 0
    grid = grid_lib.load_grid(source, parse_overrides(args.overrides, args.seeds))
    store = runner.Store(args.output or Path("results") / grid.name)
    meta = store.read_meta()
    meta.update(name=grid.name, description=grid.description, runs_total=len(grid.runs))
    if args.report_only:
        print(report(store, meta, plots=not args.no_plots))
        return 0
    devices = runner.resolve_devices(args.devices, args.platform)
    sweep = runner.Sweep(
        grid,
        store,
        max_batch=args.max_batch,
        devices=devices,
        retry_failed=args.retry_failed,
        progress=not args.no_progress,
        compile_workers=args.compile_workers,
    )
    if args.dry_run:
        dry_run(sweep)
        return 0
    check_datasets(sweep)
    runner.enable_compilation_cache(None if args.cache_dir.lower() == "none" else args.cache_dir)
    command = "python -m jaxbyz.experiments.sweep " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    session = {"command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    meta.setdefault("sessions", []).append(session)
    sweep.after_batch = lambda stats: _save_session(store, meta, session, stats)
    stats = sweep.run()
    _save_session(store, meta, session, stats)
    path = report(store, meta, plots=not args.no_plots)
    print(f"report: {path}")
    failed = stats.failed
    return 0 if failed == 0 else 1


def _save_session(store: Any, meta: dict[str, Any], session: dict[str, Any], stats: Any) -> None:
    import dataclasses

    session.update(dataclasses.asdict(stats))
    store.write_meta(meta)


if __name__ == "__main__":
    sys.exit(main())
