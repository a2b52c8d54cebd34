"""``python -m jaxbyz.train``: one simulated run from the command line.

Every flag of the paper's ``attack.py`` (LPD-EPFL/ByzantineMomentum) is accepted with its meaning,
so that its command lines work unchanged; a flag without meaning here is accepted and says so,
a value that cannot be honoured is refused in one line. The flags are generated from the fields
of :class:`jaxbyz.config.Config` (the run's science) and :class:`RunOptions` (how it is run).

The result directory receives ``config.json``, ``eval.csv`` (step, accuracy), ``study.csv`` (one
line of study metrics per step) and ``summary.json``, written as the run goes so that an
interrupted run keeps what it computed; with ``--checkpoint-delta K`` the run state is saved every
``K`` steps in ``checkpoints/`` and the same command, run again on the interrupted directory,
resumes from the last checkpoint and ends with the files an uninterrupted run writes.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxbyz import aggregators, attacks, checkpoint, cli
from jaxbyz import cache as compilation_cache
from jaxbyz.cache import CACHE_HELP
from jaxbyz.config import Config, flag
from jaxbyz.data import DATASET_ALIASES, DatasetNotFoundError
from jaxbyz.metrics import NAMES, divergence

ACCURACY_DIGITS = 6  # decimals of the accuracies in eval.csv and summary.json

EXAMPLES = """\
examples:
  # the paper's Fashion-MNIST run: krum against "a little is enough", momentum at the workers
  python -m jaxbyz.train --dataset fashion-mnist --nb-workers 51 --nb-decl-byz 12 \\
      --nb-real-byz 12 --gar krum --attack little --attack-args factor:1.5 negative:True \\
      --momentum 0.9 --momentum-at worker --learning-rate 0.5 --batch-size 83 \\
      --gradient-clip 2 --l2-regularize 1e-4 --nb-steps 300 --evaluation-delta 5 \\
      --result-directory results/krum-little-worker --checkpoint-delta 100

  # the same with Adam at the server, and a quick look without the real data
  python -m jaxbyz.train --server-optimizer adam --learning-rate 1e-3 --dry-run
  python -m jaxbyz.train --dataset synthetic --nb-steps 50 --gar median --attack empire

rules:   {rules}
attacks: {attacks}
"""


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a run is executed and stored (not part of its science: not in ``config.json``)."""

    result_directory: str | None = flag(
        None,
        "where to write config.json, eval.csv, study.csv, summary.json (and checkpoints/); an "
        "interrupted run's directory resumes with the same command",
    )
    checkpoint_delta: int = flag(
        0, "steps between two checkpoints of the run state in the result directory; 0: none"
    )
    load_checkpoint: str | None = flag(
        None,
        "start from a saved state (a result directory, its checkpoints/ or one checkpoint "
        "folder); --nb-steps more steps are run, as in the paper's code",
        metavar="PATH",
    )
    device: str = flag("auto", "device: auto, cpu, cuda[:N] or gpu[:N], tpu[:N]")
    device_gar: str = flag(
        "same",
        "the paper's device for the rule",
        ignored="the rule runs inside the step's compiled program, on the run's device",
    )
    user_input_delta: int = flag(
        0,
        "the paper's interactive prompt every N steps",
        ignored="runs are not interactive; use the result files and --checkpoint-delta",
    )
    cache_dir: str | None = flag(None, CACHE_HELP, metavar="DIR")
    dry_run: bool = flag(
        False, "check the flags, print the resolved configuration, compile nothing", kind="switch"
    )
    no_progress: bool = flag(False, "no progress bar", kind="switch")
    shard_workers: bool = flag(
        False,
        "split the worker axis over every device (of every host with the flags below)",
        kind="switch",
    )
    coordinator_address: str | None = flag(
        None,
        "several hosts: process 0's address, and call jax.distributed.initialize with "
        "--num-processes and --process-id; 'auto' detects all three (Slurm, Open MPI, TPU)",
        metavar="HOST:PORT",
    )
    num_processes: int | None = flag(None, "several hosts: number of processes")
    process_id: int | None = flag(None, "several hosts: this process's index")


def build_parser() -> cli.Parser:
    """The argument parser: one flag per :class:`Config` and :class:`RunOptions` field."""
    p = cli.Parser(
        prog="python -m jaxbyz.train",
        description="Simulate one Byzantine-resilient SGD run (El-Mhamdi, Guerraoui & Rouault, "
        "ICLR 2021): n workers, f of them Byzantine, a robust aggregation rule at the server, "
        "momentum at the update, the server or the workers, any optax optimiser at the server. "
        "All workers are one vectorised JAX program. The flags, and their defaults, are those of "
        "the paper's attack.py (jaxbyz.config.Config, for Python and grid files, defaults to "
        "the paper's Fashion-MNIST protocol instead: shown as 'Config: ...').",
        epilog=EXAMPLES.format(
            rules=", ".join(aggregators.names()), attacks=", ".join(attacks.names())
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cli.add_fields(p.add_argument_group("the run (config.json)"), Config)
    cli.add_fields(p.add_argument_group("running it"), RunOptions)
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    """The run configuration the parsed flags describe (a negative seed: see :func:`seeded`)."""
    fields = cli.values(Config, args)
    fields["dataset"] = DATASET_ALIASES.get(fields["dataset"], fields["dataset"])
    return Config(**fields)


def seeded(config: Config) -> Config:
    """``config`` with the paper's "random seed" (a negative ``--seed``) drawn, and recorded in
    ``config.json``; with several processes, process 0's draw for all."""
    if config.seed >= 0:
        return config
    seed = secrets.randbelow(2**31)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        seed = int(multihost_utils.broadcast_one_to_all(np.int32(seed)))
    return config.replace(seed=seed)


def options_from_args(args: argparse.Namespace) -> RunOptions:
    return RunOptions(**cli.values(RunOptions, args))


# ---------------------------------------------------------------------------------------------- #
# The result directory


@dataclasses.dataclass(frozen=True)
class Start:
    """Where a run starts: fresh, from a checkpoint of its own directory, or a loaded one."""

    step: int = 0
    checkpoint: tuple[Path, int] | None = None  # (checkpoints folder, step)
    total: int | None = None  # the run's last step (more than nb_steps after a loaded state)


def prepare_directory(path: str | None, config: Config) -> Start | None:
    """Check the result directory: None when it is new or empty; where to resume when it holds
    an interrupted run of the same configuration. Refuses any other non-empty directory."""
    if path is None:
        return None
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"--result-directory {path!r} is a file; fix: choose a directory")
    if not directory.exists() or not any(directory.iterdir()):
        return None
    stored = directory / "config.json"
    if not stored.is_file():
        raise ValueError(
            f"--result-directory {path!r} already exists and holds no jaxbyz run; "
            "fix: choose a new directory or remove this one"
        )
    previous = json.loads(stored.read_text())
    differing = sorted(k for k, v in config.to_dict().items() if previous.get(k, v) != v)
    if differing:
        first = differing[0]
        raise ValueError(
            f"--result-directory {path!r} already exists and holds another configuration "
            f"({', '.join(differing)} differ; e.g. {first}: {previous.get(first)!r} there, "
            f"{getattr(config, first)!r} here); fix: choose a new directory"
        )
    summary = directory / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("status") == "completed":
        raise ValueError(
            f"--result-directory {path!r} already exists and holds this run, completed; fix: "
            "choose a new directory or remove this one"
        )
    return _resumable(directory, config)


def check_writable(path: str | None, create: bool) -> None:
    """Refuse, before anything is computed, a result directory that cannot be written: one under
    a file, or one where a probe file cannot be created (``create``: make the directory, probe
    it and remove what was made; else only look at the nearest existing folder)."""
    if path is None:
        return
    directory = Path(path)
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(
            f"--result-directory {path!r} cannot be created: {str(existing)!r} is a file; "
            "fix: choose another directory"
        )
    try:
        if not create:
            if not os.access(existing, os.W_OK | os.X_OK):
                raise PermissionError(f"no write permission on {existing}")
            return
        created = [p for p in (directory, *directory.parents) if not p.exists()]
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".jaxbyz-write-probe"
        probe.write_bytes(b"")
        probe.unlink()
        for folder in created:  # leave nothing behind: the run creates it when it writes
            folder.rmdir()
    except OSError as err:
        raise ValueError(
            f"--result-directory {path!r} cannot be written ({err.strerror or err}); fix: "
            "choose a writable directory"
        ) from None


def _resumable(directory: Path, config: Config) -> Start:
    """The latest checkpoint whose results are all in the files (rows of the study for every
    step before it, every evaluation up to it); none: start over."""
    from jaxbyz.simulator import evaluation_steps

    folder = directory / "checkpoints"
    studied = _last_row(directory / "study.csv") if config.nb_for_study > 0 else None
    evaluated = _last_row(directory / "eval.csv")
    for step in reversed(checkpoint.steps(folder)):
        total = checkpoint.read_metadata(folder / str(step)).get("total_steps", config.nb_steps)
        due = [e for e in evaluation_steps(total, config.evaluation_delta) if e <= step]
        if (studied is None or studied >= step - 1) and (not due or evaluated >= due[-1]):
            return Start(step=step, checkpoint=(folder, step), total=total)
    return Start()


def _last_row(path: Path) -> int:
    """The step of the last complete row of a result file (-1: none)."""
    lines = path.read_bytes().splitlines(keepends=True)[1:] if path.exists() else []
    complete = [line for line in lines if line.endswith(b"\n")]
    return int(complete[-1].split(b",", 1)[0]) if complete else -1


class ResultWriter:
    """Writes the result files line by line, flushed, so an interrupted run keeps its results;
    resuming at step ``s`` keeps the lines up to ``s`` and appends after them."""

    def __init__(self, directory: Path | None, config: Config, resume_at: int | None) -> None:
        self.directory = directory
        self._nodes = config.topology is not None  # eval.csv has the node columns
        self.study_on = config.nb_for_study > 0
        if directory is None:
            return
        directory.mkdir(parents=True, exist_ok=True)
        if resume_at is None:
            _write_json(directory / "config.json", config.to_dict())
        columns = ["step", "accuracy"]
        if config.topology is not None:  # the honest nodes' own models
            columns += ["node_min", "node_mean", "node_max"]
        self._eval = _open_csv(directory / "eval.csv", columns, resume_at, True)
        self._study = (
            _open_csv(directory / "study.csv", ["step", *NAMES], resume_at, False)
            if self.study_on
            else None
        )
        self._eval_csv = csv.writer(self._eval)
        self._study_csv = csv.writer(self._study) if self._study else None

    def evaluation(self, step: int, accuracy: float, nodes: Any = None) -> None:
        """One evaluation; ``nodes``: the min, mean, max over a graph's nodes (step 0, where
        every node holds the same model: the accuracy three times)."""
        if self.directory is not None:
            row = [accuracy, *(nodes or [accuracy] * 3)] if self._nodes else [accuracy]
            self._eval_csv.writerow([step, *(f"{a:.{ACCURACY_DIGITS}f}" for a in row)])
            self._eval.flush()

    def study(self, first_step: int, study: dict[str, np.ndarray]) -> None:
        if self.directory is None or self._study_csv is None:
            return
        columns = [np.asarray(study[name]) for name in NAMES]
        for i in range(columns[0].shape[0]):
            self._study_csv.writerow([first_step + i, *(f"{c[i]:.8e}" for c in columns)])
        self._study.flush()

    def close(self, summary: dict[str, Any]) -> None:
        if self.directory is None:
            return
        self._eval.close()
        if self._study is not None:
            self._study.close()
        _write_json(self.directory / "summary.json", summary)


def _open_csv(path: Path, header: list[str], resume_at: int | None, inclusive: bool):
    """``path`` opened for appending rows: new with ``header``, or on resuming at step ``s``
    cut after its last complete row of step ``<= s`` (``inclusive``) or ``< s``."""
    if resume_at is None or not path.exists():
        handle = open(path, "w", newline="")
        csv.writer(handle).writerow(header)
        return handle
    keep, lines = [], path.read_bytes().splitlines(keepends=True)
    for line in lines[1:]:
        if not line.endswith(b"\n"):
            break  # cut short by the interruption
        step = int(line.split(b",", 1)[0])
        if step > resume_at or (step == resume_at and not inclusive):
            break
        keep.append(line)
    path.write_bytes(lines[0] + b"".join(keep))
    return open(path, "a", newline="")


@jax.jit
def _finite(theta: jax.Array) -> jax.Array:
    """Whether every parameter is finite (a divergence the loss may not show yet)."""
    return jax.numpy.all(jax.numpy.isfinite(theta))


def _as_written(accuracy: Any) -> float:
    """An accuracy as ``eval.csv`` holds it, so that the summary of a resumed run (read back
    from the file) equals that of an uninterrupted one."""
    return round(float(accuracy), ACCURACY_DIGITS)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- #
# Running


def resolve_device(spec: str) -> jax.Device | None:
    """The device ``--device`` names (None for auto); refuses one JAX does not see."""
    if spec == "auto":
        return None
    name, _, index = spec.partition(":")
    platform = {"cuda": "gpu"}.get(name, name)
    try:
        return jax.devices(platform)[int(index or 0)]
    except (RuntimeError, IndexError, ValueError):
        seen = ", ".join(str(d) for d in jax.devices())
        raise ValueError(
            f"--device {spec!r} cannot be honoured: JAX sees no such device (devices: {seen}); "
            "fix: --device auto"
        ) from None


def run(
    config: Config,
    result_directory: str | None = None,
    progress: bool = True,
    shard_workers: bool = False,
    checkpoint_delta: int = 0,
    load_checkpoint: str | None = None,
) -> dict[str, Any]:
    """Validate, compile, run with a progress bar, write results; return the summary.

    ``shard_workers`` splits the worker axis over ``jax.devices()`` (every host's, after
    ``jax.distributed.initialize``); then only process 0 writes the results.
    """
    from tqdm import tqdm

    from jaxbyz.driver import Driver
    from jaxbyz.sharding import to_host, worker_mesh
    from jaxbyz.simulator import make_simulation

    writes = jax.process_index() == 0
    start = (prepare_directory(result_directory, config) if writes else None) or Start()
    if start.checkpoint is None and load_checkpoint is not None:
        loaded = checkpoint.resolve(load_checkpoint)  # (checkpoints folder, step)
    else:
        loaded = None
    total = start.total or config.nb_steps
    if loaded is not None:
        total = loaded[1] + config.nb_steps
    sim = make_simulation(
        config.replace(nb_steps=total), mesh=worker_mesh() if shard_workers else None
    )
    driver = Driver(sim, checkpoint_delta=checkpoint_delta)
    evaluated = {int(s) for s in sim.evaluation_steps()}
    hp = sim.layout.place(sim.default_hparams())
    key = sim.layout.place(jax.random.key(config.seed))
    data = sim.arrays

    saved = start.checkpoint or loaded
    if saved:  # restored before compiling: a checkpoint that does not fit fails fast
        restored, step = _restore(saved, driver.abstract_state(key))
    programs = driver.compile(key, hp, data)
    if saved:
        state = restored
        accuracy, nodes = None, None
        if loaded and step in evaluated:
            accuracy, nodes = driver.evaluation(programs, state, data)
    else:
        (state, accuracy), step, nodes = programs.start(key, data), 0, None
    compile_s = programs.compile_seconds

    resume_at = start.step if start.checkpoint else None
    directory = Path(result_directory) if writes and result_directory else None
    if directory is not None and (directory / "checkpoints").is_dir():
        checkpoint.discard(directory / "checkpoints", after=start.step)
    writer = ResultWriter(directory, config, resume_at)
    begun = time.perf_counter()
    curve = _read_curve(directory, step) if directory and resume_at is not None else []
    if accuracy is not None:
        accuracy = _as_written(to_host(accuracy))
        if np.isfinite(accuracy):  # NaN: step 0 is not evaluated (--evaluation-delta 0)
            nodes = None if nodes is None else [_as_written(a) for a in to_host(nodes)]
            writer.evaluation(step, accuracy, nodes)
            curve.append((step, accuracy))
    status, first = "completed", step
    bar = tqdm(
        total=total,
        initial=step,
        disable=not (progress and writes),
        unit="step",
        file=sys.stderr,
        dynamic_ncols=True,
    )
    diverged_at = None
    try:
        for result in driver.run(programs, state, hp, data, start=step):
            study = jax.tree.map(to_host, result.study)
            writer.study(result.segment.start, study)
            step = result.segment.stop
            bad = divergence(study["loss"], bool(to_host(_finite(result.state.theta))))
            if bad is not None:  # no evaluation at or after the divergence counts
                diverged_at = result.segment.start + bad
            if result.accuracy is not None:
                accuracy = _as_written(to_host(result.accuracy))
                nodes = None
                if result.node_accuracy is not None:
                    nodes = [_as_written(a) for a in to_host(result.node_accuracy)]
                writer.evaluation(step, accuracy, nodes)
                if diverged_at is None:
                    curve.append((step, accuracy))
                bar.set_postfix(acc=f"{accuracy:.4f}", loss=f"{float(study['loss'][-1]):.3f}")
            bar.update(result.segment.length)
            if diverged_at is not None:
                status = "diverged"
                break
            if result.segment.checkpoint and directory is not None:
                _save(directory / "checkpoints", step, result.state, config, total)
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        bar.close()
    run_s = time.perf_counter() - begun
    best_step, best = max(curve, key=lambda p: (p[1], -p[0])) if curve else (-1, float("nan"))
    summary = {
        "status": status,
        "steps": step,
        "first_step": first,
        "diverged_step": diverged_at,
        "best_accuracy": best,
        "best_step": best_step,
        "final_accuracy": curve[-1][1] if curve else float("nan"),
        "compile_seconds": compile_s,
        "run_seconds": run_s,
        "steps_per_second": (step - first) / run_s if run_s > 0 else float("nan"),
        "variance_norm_bound": sim.bound,
        "parameters": sim.dim,
        "device": str(jax.devices()[0]),
        "devices": sim.layout.devices,
        "processes": jax.process_count(),
    }
    writer.close(summary)
    return summary


def _save(folder: Path, step: int, state: Any, config: Config, total: int) -> None:
    metadata = {"total_steps": total, "config": config.to_dict()}
    checkpoint.save(folder, step, state, metadata)


def _restore(where: tuple[Path, int], like: Any) -> tuple[Any, int]:
    """The state saved at ``where`` (checkpoints folder, step), laid out like ``like``."""
    folder, step = where
    try:
        state, _ = checkpoint.restore(folder, step, like)
    except ValueError as err:
        raise ValueError(
            f"checkpoint {folder / str(step)} does not fit this run ({err}); fix: the same "
            "dataset, model, workers and momentum placement as the checkpointed run"
        ) from None
    return state, int(np.asarray(state.step))


def _read_curve(directory: Path, step: int) -> list[tuple[int, float]]:
    """The evaluations already written up to ``step`` (resuming)."""
    path = directory / "eval.csv"
    rows = list(csv.reader(path.read_text().splitlines()[1:])) if path.exists() else []
    return [(int(s), float(a)) for s, a in rows if int(s) <= step]


def distributed_args(
    options: RunOptions,
) -> tuple[str | None, int | None, int | None] | None:
    """``(coordinator_address, num_processes, process_id)`` for ``jax.distributed.initialize``
    from the host flags, None without them; a ValueError names a bad or missing flag."""
    address, count, index = options.coordinator_address, options.num_processes, options.process_id
    if address is None and count is None and index is None:
        return None
    if not options.shard_workers:
        raise ValueError(
            "--coordinator-address/--num-processes/--process-id join several processes, which "
            "only helps with --shard-workers (without it each would run the whole simulation); "
            "fix: add --shard-workers"
        )
    if address == "auto":  # Slurm, Open MPI, Cloud TPU detect all three
        return None, count, index
    host, _, port = (address or "").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"--coordinator-address {address!r}: expected HOST:PORT of process 0 (e.g. "
            "10.0.0.1:1234), or auto on Slurm, Open MPI or Cloud TPU"
        )
    if count is None or index is None:
        raise ValueError(
            f"--coordinator-address {address} needs --num-processes N and --process-id I "
            "(0 <= I < N) on every process"
        )
    if count < 1 or not 0 <= index < count:
        raise ValueError(
            f"--num-processes {count} and --process-id {index}: need N >= 1 and 0 <= I < N"
        )
    return address, count, index


def check_options(options: RunOptions) -> None:
    """The run options that cannot be honoured, refused in one line."""
    if isinstance(options.checkpoint_delta, bool) or options.checkpoint_delta < 0:
        raise ValueError(
            f"--checkpoint-delta must be an integer >= 0, got {options.checkpoint_delta!r}"
        )
    if options.checkpoint_delta and options.result_directory is None:
        raise ValueError(
            "--checkpoint-delta saves into the result directory; fix: add --result-directory"
        )
    if options.coordinator_address is not None and (
        options.checkpoint_delta or options.load_checkpoint
    ):
        raise ValueError(
            "--checkpoint-delta and --load-checkpoint cannot be honoured over several processes "
            "yet (every process would have to save and restore its own shards); fix: run them "
            "on one host"
        )
    if options.shard_workers and options.device != "auto":
        raise ValueError(
            f"--device {options.device} with --shard-workers: the workers are split over every "
            "device; fix: drop --device"
        )


def dry_run(config: Config, options: RunOptions) -> None:
    """Print the resolved configuration and where the data would come from; compile nothing."""
    from jaxbyz.validation import check_config

    rule, attack = check_config(config)
    print(json.dumps({"config": config.to_dict(), "run": dataclasses.asdict(options)}, indent=2))
    print(f"rule: {rule!r}; attack: {attack!r}")
    print(f"data: {_data_status(config)}")


def _data_status(config: Config) -> str:
    from jaxbyz import data

    if config.dataset == "synthetic":
        return "generated"
    if config.dataset not in data.IDX_URLS:
        return "read through tensorflow-datasets when the run starts"
    for folder in data.idx_folders(config.dataset, config.data_dir):
        if data.idx_complete(folder):
            return f"found in {folder}"
    return "not found locally (the run would stop with the dataset's remedies)"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m jaxbyz.train``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config, options = config_from_args(args), options_from_args(args)
        for note in cli.notes(RunOptions, options):
            print(note, file=sys.stderr)
        check_options(options)
        device = resolve_device(options.device)
        if options.dry_run:
            prepare_directory(options.result_directory, config)
            check_writable(options.result_directory, create=False)
            dry_run(config, options)
            return 0
        distributed = distributed_args(options)
        # every process checks, before any can create it (process 0 does after the join)
        prepare_directory(options.result_directory, config)
        check_writable(options.result_directory, create=distributed is None)
        if distributed is not None:
            from jaxbyz.sharding import initialize_distributed

            initialize_distributed(*distributed)
        config = seeded(config)
        compilation_cache.enable(options.cache_dir)
        with jax.default_device(device):
            summary = run(
                config,
                options.result_directory,
                progress=not options.no_progress,
                shard_workers=options.shard_workers,
                checkpoint_delta=options.checkpoint_delta,
                load_checkpoint=options.load_checkpoint,
            )
    except (ValueError, DatasetNotFoundError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    if summary["diverged_step"] is not None:
        print(f"diverged at step {summary['diverged_step']}: no evaluation from then on counts")
    print(
        f"{summary['status']}: best top-1 accuracy {summary['best_accuracy']:.4f} at step "
        f"{summary['best_step']}; {summary['steps'] - summary['first_step']} steps in "
        f"{summary['run_seconds']:.1f} s ({summary['steps_per_second']:.1f} steps/s) + "
        f"{summary['compile_seconds']:.1f} s compile"
    )
    return 0 if summary["status"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
