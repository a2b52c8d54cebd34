"""``python -m jaxbyz.train``: one simulated run from the command line.

Flags are named as in the paper's ``attack.py`` (LPD-EPFL/ByzantineMomentum), so that its command
lines work unchanged; ``--gar-args`` and ``--attack-args`` take space-separated ``key:value`` pairs.
The result directory receives ``config.json``, ``eval.csv`` (step, cross-accuracy), ``study.csv``
(one line of study metrics per step) and ``summary.json``, written as the run goes so that an
interrupted run keeps what it computed.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxbyz import aggregators, attacks
from jaxbyz.config import CLIP_MODES, Config, parse_keyval
from jaxbyz.data import DATASETS, DatasetNotFoundError
from jaxbyz.metrics import NAMES
from jaxbyz.models import MODELS
from jaxbyz.momentum import PLACEMENTS

EXAMPLES = """\
examples:
  # the paper's Fashion-MNIST run: krum against "a little is enough", momentum at the workers
  python -m jaxbyz.train --dataset fashion-mnist --nb-workers 51 --nb-decl-byz 12 \\
      --nb-real-byz 12 --gar krum --attack little --attack-args factor:1.5 negative:True \\
      --momentum 0.9 --momentum-at worker --learning-rate 0.5 --batch-size 83 \\
      --gradient-clip 2 --l2-regularize 1e-4 --nb-steps 300 --evaluation-delta 5 \\
      --result-directory results/krum-little-worker

  # a quick look without the real data
  python -m jaxbyz.train --dataset synthetic --nb-steps 50 --gar median --attack empire

rules:   {rules}
attacks: {attacks}
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (flags of the paper's ``attack.py`` where they exist)."""
    d = Config()
    p = argparse.ArgumentParser(
        prog="python -m jaxbyz.train",
        description="Simulate one Byzantine-resilient SGD run (El-Mhamdi, Guerraoui & Rouault, "
        "ICLR 2021): n workers, f of them Byzantine, a robust aggregation rule at the server, "
        "momentum at the update, the server or the workers. All workers are one vectorised JAX "
        "program.",
        epilog=EXAMPLES.format(
            rules=", ".join(aggregators.names()), attacks=", ".join(attacks.names())
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--seed", type=int, default=d.seed, help="PRNG seed of the run (default %(default)s)")
    add("--dataset", default=d.dataset, help=f"one of {', '.join(DATASETS)} (default %(default)s)")
    add(
        "--data-dir",
        default=None,
        help="folder holding the dataset's files (else JAXBYZ_DATA_DIR, "
        "Debian's /usr/share/datasets, then a one-time download into ~/.cache/jaxbyz)",
    )
    add("--model", default=d.model, help=f"one of {', '.join(MODELS)} (default %(default)s)")
    add(
        "--nb-workers", type=int, default=d.nb_workers, help="total workers n (default %(default)s)"
    )
    add(
        "--nb-decl-byz",
        type=int,
        default=d.nb_decl_byz,
        help="Byzantine workers f the rule tolerates (default %(default)s)",
    )
    add(
        "--nb-real-byz",
        type=int,
        default=None,
        help="Byzantine workers that really attack (default: as declared); the rest are honest",
    )
    add("--gar", default=d.gar, help="aggregation rule (default %(default)s); see the list below")
    add(
        "--gar-args", nargs="*", default=None, metavar="KEY:VALUE", help="rule parameters, e.g. m:1"
    )
    add("--attack", default=d.attack, help="attack (default %(default)s); see the list below")
    add(
        "--attack-args",
        nargs="*",
        default=None,
        metavar="KEY:VALUE",
        help="attack parameters, e.g. factor:1.5 negative:True",
    )
    add("--momentum", type=float, default=d.momentum, help="momentum beta (default %(default)s)")
    add(
        "--momentum-at",
        default=d.momentum_at,
        choices=PLACEMENTS,
        help="where momentum is computed: update (classic), server, worker (default %(default)s)",
    )
    add("--momentum-nesterov", action="store_true", help="Nesterov momentum")
    add(
        "--dampening", type=float, default=d.dampening, help="dampening delta (default %(default)s)"
    )
    add(
        "--learning-rate",
        type=float,
        default=d.learning_rate,
        help="initial learning rate gamma_0 (default %(default)s)",
    )
    add(
        "--learning-rate-decay",
        type=int,
        default=d.learning_rate_decay,
        help="hyperbolic half-decay time: gamma_0 / (1 + t/decay); <= 0 for none "
        "(default %(default)s)",
    )
    add(
        "--learning-rate-decay-delta",
        type=int,
        default=d.learning_rate_decay_delta,
        help="steps between two learning-rate updates (default %(default)s)",
    )
    add(
        "--learning-rate-schedule",
        default=None,
        metavar="LR0[,STEP,LR]*",
        help="piecewise-constant schedule; supersedes the other learning-rate flags",
    )
    add(
        "--l2-regularize",
        type=float,
        default=d.l2_regularize,
        help="adds lambda * ||theta||_2 to the loss (default %(default)s)",
    )
    add(
        "--gradient-clip",
        type=float,
        default=d.gradient_clip,
        help="clip each gradient to this L2 norm (default %(default)s); <= 0 for none",
    )
    add(
        "--clip-mode",
        default=d.clip_mode,
        choices=CLIP_MODES,
        help="scale: g * C/||g|| (default); paper: g/||g|| as the paper's code does",
    )
    add(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help="per-worker batch (default %(default)s)",
    )
    add("--nb-steps", type=int, default=d.nb_steps, help="training steps (default %(default)s)")
    add(
        "--evaluation-delta",
        type=int,
        default=d.evaluation_delta,
        help="steps between two evaluations on the full test set (default %(default)s)",
    )
    add(
        "--dirichlet-alpha",
        type=float,
        default=None,
        help="non-IID: split the training set across honest workers with Dirichlet(alpha)",
    )
    add(
        "--result-directory",
        default=None,
        help="where to write config.json, eval.csv, study.csv, summary.json (must not exist yet)",
    )
    add("--no-progress", action="store_true", help="no progress bar")
    add(
        "--shard-workers",
        action="store_true",
        help="split the worker axis over every device (of every host with the flags below); "
        "see jaxbyz/sharding.py",
    )
    add(
        "--coordinator-address",
        default=None,
        metavar="HOST:PORT",
        help="several hosts: process 0's address, and call jax.distributed.initialize with "
        "--num-processes and --process-id; 'auto' detects all three (Slurm, Open MPI, TPU)",
    )
    add("--num-processes", type=int, default=None, help="several hosts: number of processes")
    add("--process-id", type=int, default=None, help="several hosts: this process's index")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    """The run configuration the parsed flags describe."""
    return Config(
        dataset=args.dataset,
        data_dir=args.data_dir,
        model=args.model,
        nb_workers=args.nb_workers,
        nb_decl_byz=args.nb_decl_byz,
        nb_real_byz=args.nb_real_byz,
        gar=args.gar,
        gar_args=parse_keyval(args.gar_args, "--gar-args"),
        attack=args.attack,
        attack_args=parse_keyval(args.attack_args, "--attack-args"),
        momentum=args.momentum,
        momentum_at=args.momentum_at,
        momentum_nesterov=args.momentum_nesterov,
        dampening=args.dampening,
        learning_rate=args.learning_rate,
        learning_rate_decay=args.learning_rate_decay,
        learning_rate_decay_delta=args.learning_rate_decay_delta,
        learning_rate_schedule=args.learning_rate_schedule,
        l2_regularize=args.l2_regularize,
        gradient_clip=None
        if args.gradient_clip is None or args.gradient_clip <= 0
        else args.gradient_clip,
        clip_mode=args.clip_mode,
        batch_size=args.batch_size,
        nb_steps=args.nb_steps,
        evaluation_delta=args.evaluation_delta,
        dirichlet_alpha=args.dirichlet_alpha,
        seed=args.seed,
    )


def check_result_directory(path: str | None) -> Path | None:
    """Refuse an existing, non-empty result directory (never overwrite silently)."""
    if path is None:
        return None
    directory = Path(path)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ValueError(
            f"--result-directory {path!r} already exists and is not empty; "
            "fix: choose a new directory or remove this one"
        )
    return directory


class ResultWriter:
    """Writes the result files line by line, flushed, so an interrupted run keeps its results."""

    def __init__(self, directory: Path | None, config: Config) -> None:
        self.directory = directory
        if directory is None:
            return
        directory.mkdir(parents=True, exist_ok=True)
        _write_json(directory / "config.json", config.to_dict())
        self._eval = open(directory / "eval.csv", "w", newline="")
        self._study = open(directory / "study.csv", "w", newline="")
        self._eval_csv = csv.writer(self._eval)
        self._study_csv = csv.writer(self._study)
        self._eval_csv.writerow(["step", "accuracy"])
        self._study_csv.writerow(["step", *NAMES])

    def evaluation(self, step: int, accuracy: float) -> None:
        if self.directory is not None:
            self._eval_csv.writerow([step, f"{accuracy:.6f}"])
            self._eval.flush()

    def study(self, first_step: int, study: dict[str, np.ndarray]) -> None:
        if self.directory is None:
            return
        columns = [np.asarray(study[name]) for name in NAMES]
        for i in range(columns[0].shape[0]):
            self._study_csv.writerow([first_step + i, *(f"{c[i]:.8e}" for c in columns)])
        self._study.flush()

    def close(self, summary: dict[str, Any]) -> None:
        if self.directory is None:
            return
        self._eval.close()
        self._study.close()
        _write_json(self.directory / "summary.json", summary)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def compile_programs(
    sim: Any, key: jax.Array, hp: dict, data: dict
) -> tuple[Callable, dict[int, Callable]]:
    """The compiled start program (``key, data -> state, accuracy``) and one segment program
    per segment length (``state, hp, data -> state, study, accuracy``; the state is donated).

    With a mesh, the state keeps its layout from one program to the next (the worker momenta
    split by rows, :meth:`jaxbyz.sharding.Layout.state_shardings`).
    """
    layout, state = sim.layout, jax.eval_shape(sim.init, key)
    start_kw = layout.program_shardings(state, outputs=1)  # state, accuracy
    segment_kw = layout.program_shardings(state, outputs=2)  # state, study, accuracy
    start = jax.jit(functools.partial(_start, sim), **start_kw).lower(key, data).compile()
    if start_kw:  # the segments receive the state as the start program returns it
        state = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            state,
            start_kw["out_shardings"][0],
        )
    segment = jax.jit(sim.segment, static_argnums=3, donate_argnums=0, **segment_kw)
    segments = {
        length: segment.lower(state, hp, data, length).compile()
        for length in sorted(set(sim.segment_lengths()))
    }
    return start, segments


def _start(sim: Any, key: jax.Array, data: dict) -> tuple[Any, jax.Array]:
    """The initial state and its accuracy (one program: initialisation and first evaluation)."""
    state = sim.init(key)
    return state, sim.evaluate(state, data)


def run(
    config: Config,
    result_directory: str | None = None,
    progress: bool = True,
    shard_workers: bool = False,
) -> dict[str, Any]:
    """Validate, compile, run with a progress bar, write results; return the summary.

    ``shard_workers`` splits the worker axis over ``jax.devices()`` (every host's, after
    ``jax.distributed.initialize``); then only process 0 writes the results.
    """
    from tqdm import tqdm

    from jaxbyz.sharding import to_host, worker_mesh
    from jaxbyz.simulator import make_simulation

    writes = jax.process_index() == 0
    directory = check_result_directory(result_directory) if writes else None
    sim = make_simulation(config, mesh=worker_mesh() if shard_workers else None)
    hp = sim.layout.place(sim.default_hparams())
    key = sim.layout.place(jax.random.key(config.seed))

    started = time.perf_counter()
    data = sim.arrays
    start, segments = compile_programs(sim, key, hp, data)
    state, accuracy = start(key, data)
    compile_s = time.perf_counter() - started

    writer = ResultWriter(directory, config)
    begun = time.perf_counter()
    accuracy = float(to_host(accuracy))
    writer.evaluation(0, accuracy)
    curve = [(0, accuracy)]
    step, status = 0, "completed"
    bar = tqdm(
        total=config.nb_steps,
        disable=not (progress and writes),
        unit="step",
        file=sys.stderr,
        dynamic_ncols=True,
    )
    try:
        for length in sim.segment_lengths():
            state, study, acc = segments[length](state, hp, data)
            study = jax.tree.map(to_host, study)
            writer.study(step, study)
            step += length
            accuracy = float(to_host(acc))
            writer.evaluation(step, accuracy)
            curve.append((step, accuracy))
            bar.update(length)
            bar.set_postfix(acc=f"{accuracy:.4f}", loss=f"{float(study['loss'][-1]):.3f}")
            if not np.isfinite(study["loss"]).all():
                status = "diverged"
                break
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        bar.close()
    run_s = time.perf_counter() - begun
    best_step, best = max(curve, key=lambda p: (p[1], -p[0]))
    summary = {
        "status": status,
        "steps": step,
        "best_accuracy": best,
        "best_step": best_step,
        "final_accuracy": curve[-1][1],
        "compile_seconds": compile_s,
        "run_seconds": run_s,
        "steps_per_second": step / run_s if run_s > 0 else float("nan"),
        "variance_norm_bound": sim.bound,
        "parameters": sim.dim,
        "device": str(jax.devices()[0]),
        "devices": sim.layout.devices,
        "processes": jax.process_count(),
    }
    writer.close(summary)
    return summary


def distributed_args(
    args: argparse.Namespace,
) -> tuple[str | None, int | None, int | None] | None:
    """``(coordinator_address, num_processes, process_id)`` for ``jax.distributed.initialize``
    from the host flags, None without them; a ValueError names a bad or missing flag."""
    address, count, index = args.coordinator_address, args.num_processes, args.process_id
    if address is None and count is None and index is None:
        return None
    if not args.shard_workers:
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m jaxbyz.train``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        distributed = distributed_args(args)
        # every process checks, before any can create it (process 0 does after the join)
        check_result_directory(args.result_directory)
        if distributed is not None:
            from jaxbyz.sharding import initialize_distributed

            initialize_distributed(*distributed)
        summary = run(
            config,
            args.result_directory,
            progress=not args.no_progress,
            shard_workers=args.shard_workers,
        )
    except (ValueError, DatasetNotFoundError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(
        f"{summary['status']}: best top-1 accuracy {summary['best_accuracy']:.4f} at step "
        f"{summary['best_step']}; {summary['steps']} steps in {summary['run_seconds']:.1f} s "
        f"({summary['steps_per_second']:.1f} steps/s) + {summary['compile_seconds']:.1f} s compile"
    )
    return 0 if summary["status"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
