"""``python -m jaxbyz.experiments.sweep``: a grid of runs, batched, resumable, with its report.

Reproduces the experiments of El-Mhamdi, Guerraoui & Rouault, "Distributed Momentum for
Byzantine-resilient SGD" (ICLR 2021) in one command, and runs user grids from TOML files. Runs that
share shapes run as one compiled ``jit(vmap(run))`` program over seeds and traced
hyper-parameters; finished batches are stored atomically, so the same command resumes a killed
sweep; ``report.md`` (the paper's headline statistics), ``runs.csv``, ``curves.csv.gz`` and
``plots/`` are written in the output folder.

Hostile input and damaged state: the output folder is checked writable before anything is
compiled; one sweep at a time holds it (``.lock``, a stale one taken over); a part file that
cannot be read is moved into ``parts/damaged/`` with one warning and its runs run again; a folder
that holds another grid's runs is refused unless ``--add`` adds this grid's runs to it
(``sweep.json`` records the folder's run ids). Every refusal is one line, exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jaxbyz.cache import CACHE_HELP

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
with the same command: finished runs are skipped. One sweep at a time runs in an output folder
(.lock); a folder that holds another grid is refused, unless --add adds this grid's runs to it.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser; ``--help`` lists the presets."""
    from jaxbyz.cli import Parser
    from jaxbyz.experiments import grid

    presets = "\n".join(
        f"  {name:22s}{grid.read_spec(name).get('description', '')}" for name in grid.preset_names()
    )
    p = Parser(
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
    add("--cache-dir", default=None, metavar="DIR", help=CACHE_HELP)
    add(
        "--dedicated-programs",
        action="store_true",
        help="compile one program per momentum placement, Nesterov setting and attack; by "
        "default runs differing only in those share one program, the choices traced values "
        "(attacks of the form mu + a sigma + b mu as coefficients, other attacks on the "
        "submitted vectors as branches of a switch, batched per attack), which rounds "
        "differently; with --max-batch 1, a run's numbers depend on its configuration only, "
        "not on the grid around it",
    )
    add("--dry-run", action="store_true", help="list the runs and programs; compile nothing")
    add(
        "--report-only",
        action="store_true",
        help="rebuild the tables, report and plots from the output folder; run nothing",
    )
    add("--retry-failed", action="store_true", help="run again the runs recorded as errors")
    add(
        "--add",
        action="store_true",
        help="run this grid in an --output folder that holds another grid: its runs are added "
        "to the folder's (without it such a folder is refused); the report covers every run",
    )
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
        traced = program.traced
        shared = f"; traced: {traced.describe()}" if traced else ""
        print(f"program {i} [{program.id}] {program.label}: batches of {sizes}{shared}")
        for run in program.runs:
            print(f"    {run.id}  {run.name}")


def warn(line: str | None) -> None:
    """A warning or note line, on stderr."""
    if line:
        print(line, file=sys.stderr, flush=True)


def load_parts(
    store: Any, tail: str, quarantine: bool = True, empty_is_error: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The store's recorded runs and curves, a damaged part named in one warning line (or, with
    ``empty_is_error`` and nothing readable, in the one error line)."""
    rows, curves = store.load(quarantine=quarantine)
    warn(store.adoption_line())
    line = store.damage_line(tail)
    if line is not None and empty_is_error and not rows:
        raise ValueError(
            f"--output {str(store.root)!r} holds no readable results: "
            f"{store.damage_text()}; rerun the sweep's command to "
            "compute their runs again"
        )
    warn(line)
    return rows, curves


def read_meta(store: Any, quarantine: bool = True, tail: str = "") -> dict[str, Any]:
    """``sweep.json``, a damaged one named in one warning line."""
    meta = store.read_meta(quarantine=quarantine)
    damaged = store.meta_damaged
    if damaged is not None:
        where = f"moved to {damaged.moved}" if damaged.moved else "left in place"
        warn(f"warning: {damaged.path} cannot be read ({damaged.reason}): {where}; {tail}")
    return meta


def warn_damaged_tables(store: Any) -> None:
    """One warning line per damaged ``runs.csv`` or ``curves.csv.gz`` (rebuilt from parts/)."""
    for damaged in store.damaged_tables():
        warn(f"warning: {damaged.path} cannot be read ({damaged.reason}): rebuilt from parts/")


def load_readable(store: Any) -> tuple:
    """For ``--report-only``: the readable parts, every damaged table and part named in one
    warning line (refused in one line when none is readable)."""
    warn_damaged_tables(store)
    return load_parts(
        store,
        "the report covers the readable parts; the sweep's command computes the other runs again",
        empty_is_error=True,
    )


def grid_identity(
    store: Any, meta: dict[str, Any], grid: Any, recorded: set[str], add: bool, hint: str
) -> dict[str, Any]:
    """``meta`` with the folder's grid identity (``run_ids``, ``grids``, ``name``,
    ``runs_total``) once this grid runs there; ``ValueError`` (one line) when the folder holds
    runs of another grid, unless ``add`` (the identity becomes the union)."""
    grid_ids = {r.id for r in grid.runs}
    names = list(meta.get("grids") or ([meta["name"]] if meta.get("name") else []))
    if "run_ids" in meta:
        folder = set(meta["run_ids"]) | recorded
        differs = folder != grid_ids
    else:  # written before the identity was recorded, or sweep.json lost: the parts say
        folder = set(recorded)
        differs = bool(folder - grid_ids) or bool(names and names != [grid.name])
    if not recorded:  # nothing recorded: nothing to mix up
        folder, differs = (folder if add else set()), False
    if differs and not add:
        there = " + ".join(repr(n) for n in names) or "(unnamed)"
        count = f"{len(folder)} runs" if "run_ids" in meta else f"{len(folder)} runs recorded"
        raise ValueError(
            f"--output {str(store.root)!r} holds another grid: {there} there ({count}), "
            f"{grid.name!r} here ({len(grid_ids)} runs): {len(grid_ids - folder)} run(s) added, "
            f"{len(folder - grid_ids)} removed; {hint}"
        )
    identity = folder | grid_ids
    if not (add and differs):
        names = []
    names = [*names, grid.name] if grid.name not in names else names
    meta = dict(meta)
    meta.update(
        name=" + ".join(names),
        description=meta.get("description") or grid.description
        if add and differs
        else grid.description,
        grids=names,
        runs_total=len(identity),
        run_ids=sorted(identity),
    )
    return meta


def report(
    store: Any,
    meta: dict[str, Any],
    plots: bool,
    recorded: tuple[dict[str, Any], dict[str, Any]] | None = None,
) -> Path:
    """Rebuild the tables from the stored parts (``recorded``: already loaded) and write the
    report."""
    import pandas as pd

    from jaxbyz.experiments.report import write_report
    from jaxbyz.experiments.storage import REQUIRED_ROW_KEYS, read_run_table

    root = repr(str(store.root))
    if recorded is None and store.parts.is_dir():
        recorded = load_readable(store)
    if recorded is not None:
        rows, curves = recorded
        if not rows:
            raise ValueError(f"--output {root} holds no results yet (no finished batch in parts/)")
        store.write_tables(rows, curves)
    table_path, curves_path = store.root / "runs.csv", store.root / "curves.csv.gz"
    if not table_path.exists():
        raise ValueError(f"--output {root} holds no results (no runs.csv)")
    try:
        table = read_run_table(table_path)
        missing = [k for k in REQUIRED_ROW_KEYS if k not in table.columns]
        if missing:
            raise ValueError(f"no {', '.join(missing)} column(s)")
    except Exception as err:
        reason = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}"
        raise ValueError(
            f"{table_path} cannot be read ({reason}) and there are no parts/ to rebuild it from"
        ) from None
    if "reason" not in table.columns:
        table["reason"] = ""
    table["reason"] = table["reason"].fillna("")
    curves_frame = None
    if curves_path.exists():
        try:
            curves_frame = pd.read_csv(curves_path)
        except Exception as err:
            warn(f"warning: {curves_path} cannot be read ({type(err).__name__}): no plots")
    shown = dict(meta)  # the count of runs: those of the folder's grid, and any recorded
    if "run_ids" in meta:
        shown["runs_total"] = len(set(meta["run_ids"]) | set(table["run_id"]))
    elif shown.get("runs_total", 0) < len(table):
        shown.pop("runs_total", None)
    return write_report(store.root, table, curves_frame, shown, plots=plots)


def load_datasets(grid: Any) -> dict[tuple, Any]:
    """Load every dataset of the grid's runs now, before anything is written or compiled, so
    that a missing or damaged one stops the sweep with one line (instead of failing each of its
    runs); returned by ``(dataset, data_dir)`` for the sweep to use."""
    from jaxbyz.data import DatasetError, DatasetNotFoundError, load_dataset

    loaded: dict[tuple, Any] = {}
    for run in grid.runs:
        key = (run.config.dataset, run.config.data_dir)
        if key in loaded:
            continue
        try:
            loaded[key] = load_dataset(*key)
        except DatasetNotFoundError as err:
            raise ValueError(f"{err}; for a sweep: --set dataset=synthetic") from None
        except DatasetError as err:
            raise ValueError(str(err)) from None
    return loaded


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
    from jaxbyz import cache as compilation_cache
    from jaxbyz.experiments import grid as grid_lib
    from jaxbyz.experiments import runner

    if (args.preset is None) == (args.grid is None) and not args.report_only:
        raise ValueError("give exactly one of a preset name or --grid FILE.toml")
    if args.add and args.report_only:
        raise ValueError(
            "--add adds a grid's runs to a folder by running them: not with --report-only"
        )
    source = args.grid or args.preset
    if args.report_only and source is None:
        if args.output is None:
            raise ValueError("--report-only needs --output DIR (or the grid)")
        store = runner.Store(args.output)
        store.check_writable(create=False)
        meta = read_meta(store, tail="the report has no session history")
        print(report(store, meta, plots=not args.no_plots))
        return 0
    grid = grid_lib.load_grid(source, parse_overrides(args.overrides, args.seeds))
    store = runner.Store(args.output or Path("results") / grid.name)
    another = "give another --output DIR, or --add to add this grid's runs to the folder"
    if args.report_only:
        store.check_writable(create=False)
        meta = read_meta(store, tail="the report has no session history")
        recorded = load_readable(store)
        hint = "to report the folder as it is: --report-only --output DIR without the grid"
        meta = grid_identity(store, meta, grid, set(recorded[0]), False, hint)
        print(report(store, meta, plots=not args.no_plots, recorded=recorded))
        return 0
    if args.dry_run:  # writes nothing: a damaged file is only named
        meta = read_meta(store, quarantine=False, tail="the sweep moves it aside")
        recorded = load_parts(
            store, "their runs count as to run (the sweep moves them aside)", quarantine=False
        )
        grid_identity(store, meta, grid, set(recorded[0]), args.add, another)
        devices = runner.resolve_devices(args.devices, args.platform)
        dry_run(_sweep(args, grid, store, devices, recorded))
        return 0
    devices = runner.resolve_devices(args.devices, args.platform)
    datasets = load_datasets(grid)  # a missing dataset leaves no folder behind
    store.check_writable(create=True)  # before anything is computed
    command = "python -m jaxbyz.experiments.sweep " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    with store.lock(command, note=warn), _terminate_as_exit():
        meta = read_meta(store, tail="the sweep's metadata is rebuilt (sessions anew)")
        warn_damaged_tables(store)
        recorded = load_parts(store, "their runs are not recorded and run again")
        meta = grid_identity(store, meta, grid, set(recorded[0]), args.add, another)
        sweep = _sweep(args, grid, store, devices, recorded, datasets)
        compilation_cache.enable(args.cache_dir)
        session = {"command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        meta.setdefault("sessions", []).append(session)
        store.write_meta(meta)  # the folder's grid, before the first batch ends
        sweep.after_batch = lambda stats: _save_session(store, meta, session, stats)
        stats = sweep.run()
        _save_session(store, meta, session, stats)
        path = report(store, meta, plots=not args.no_plots, recorded=(sweep.rows, sweep.curves))
    print(f"report: {path}")
    failed = stats.failed
    return 0 if failed == 0 else 1


def _sweep(
    args: argparse.Namespace,
    grid: Any,
    store: Any,
    devices: list,
    recorded: tuple,
    datasets: dict[tuple, Any] | None = None,
):
    from jaxbyz.experiments import runner

    return runner.Sweep(
        grid,
        store,
        max_batch=args.max_batch,
        devices=devices,
        retry_failed=args.retry_failed,
        progress=not args.no_progress,
        compile_workers=args.compile_workers,
        recorded=recorded,
        datasets=datasets,
        trace_structure=not args.dedicated_programs,
    )


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM ends the sweep as an exception would (the lock released), from the main
    thread; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _save_session(store: Any, meta: dict[str, Any], session: dict[str, Any], stats: Any) -> None:
    import dataclasses

    session.update(dataclasses.asdict(stats))
    store.write_meta(meta)


if __name__ == "__main__":
    sys.exit(main())
