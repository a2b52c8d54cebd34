"""Scheduling a sweep: batched, resumable execution of its runs on the local devices.

Runs that share every static field are one program (:func:`jaxbyz.experiments.grid.program_key`),
run by the same driver as a single run (:class:`jaxbyz.driver.Driver`), vmapped over their seeds
and traced hyper-parameters (:class:`jaxbyz.config.HyperParams`), in batches of at most
``max_batch``. Programs are built (traced, lowered and compiled) ahead of time by a pool of
``compile_workers`` threads, a few programs ahead of the one running, so compilation overlaps
execution and uses several cores (XLA compiles outside the GIL; on an accelerator compiling is
most of a small grid's time). Batches are placed with ``jax.device_put`` and dispatched
asynchronously: each program goes to the next device in turn (so it compiles once), and at most
one batch per device is in flight. Finished batches go to the sweep's :class:`Store`
(:mod:`jaxbyz.experiments.storage`), their rows computed by :mod:`jaxbyz.experiments.summaries`;
a run that raises, or whose loss becomes non-finite, is recorded with its status and reason and
the sweep goes on.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbyz import data as data_lib
from jaxbyz import structure
from jaxbyz.config import Config, HyperParams
from jaxbyz.driver import Driver, Programs, concatenate_studies
from jaxbyz.experiments.grid import Grid, Program, Run, group_programs
from jaxbyz.experiments.storage import Curves, Store
from jaxbyz.experiments.summaries import config_row, error_result, segment_means, summarize
from jaxbyz.resources import check_memory
from jaxbyz.validation import check_config

__all__ = ["Store", "Sweep", "SweepStats", "config_row", "resolve_devices"]

Log = Callable[[str], None]
DATA_KEYS = ("train_x", "train_y", "test_inputs", "test_y")


# ---------------------------------------------------------------------------------------------- #
# Devices and programs


def default_compile_workers() -> int:
    """Threads compiling programs ahead: one per core, at most 8 (each holds a compilation's
    memory, a few hundred MB for the paper's models)."""
    return max(1, min(8, os.cpu_count() or 1))


def resolve_devices(spec: str = "all", platform: str | None = None) -> list[jax.Device]:
    """``all``, a count ``N`` (the first N) or indices ``0,2`` of the local devices."""
    devices = jax.local_devices(backend=platform)
    if spec == "all":
        return devices
    try:
        if "," not in spec:
            count = int(spec)
            if not 1 <= count <= len(devices):
                raise ValueError
            return devices[:count]
        return [devices[int(i)] for i in spec.split(",")]
    except (ValueError, IndexError):
        raise ValueError(
            f"--devices {spec!r}: expected all, a count from 1 to {len(devices)}, or indices "
            f"such as 0,1 (local devices: {', '.join(str(d) for d in devices)})"
        ) from None


def stack_inputs(runs: Sequence[Run], hparams: Sequence[HyperParams], device: jax.Device):
    """Batched keys and hyper-parameters of ``runs``, placed on ``device``."""
    seeds = np.array([r.config.seed for r in runs], np.uint32)
    keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
    stacked = jax.tree.map(lambda *v: np.asarray(v, np.float32), *hparams)
    return jax.device_put((keys, stacked), device)


def _switch_hparams(hp: HyperParams, program: Program, run: Run) -> HyperParams:
    """``hp`` of ``run`` in ``program``'s attack switch: its branch, and ``attack`` holding only
    ``factor`` (the run's fixed factor, 0 for one without: the same fields for every run)."""
    return hp._replace(
        attack={"factor": np.float32(structure.switch_factor(run.config))},
        structure={**hp.structure, "attack_branch": np.int32(program.branch(run))},
    )


def dispatch(driver: Driver, programs: Programs, data: dict, keys: jax.Array, hp: HyperParams):
    """Start the batch's runs, segment by segment, asynchronously: the outputs a sweep keeps,
    as device arrays (reading them waits for the runs)."""
    state, accuracy = programs.start(keys, data)
    accuracies = [accuracy[:, None]] if driver.sim.evaluation_steps()[0] == 0 else []
    studies, nodes = [], []
    for result in driver.run(programs, state, hp, data):
        study, state = result.study, result.state
        studies.append({k: study[k] for k in KEPT_METRICS})
        if result.accuracy is not None:
            accuracies.append(result.accuracy[:, None])
        if result.node_accuracy is not None:
            nodes.append(result.node_accuracy)
    return {
        "accuracy": accuracies,
        "studies": studies,
        "theta_finite": _rows_finite(state.theta),
        "node_accuracy": nodes[-1:],  # [B, 3] at the last evaluation (a graph's nodes)
    }


KEPT_METRICS = (
    "loss",
    "variance_norm_ratio",
    "sampled_deviation",
    "sampled_norm",
    "byzantine_participants",
    "consensus_distance",
)
# per run: whether every parameter is finite (a graph's runs hold one model per node)
_rows_finite = jax.jit(lambda theta: jnp.all(jnp.isfinite(theta.reshape(theta.shape[0], -1)), 1))


# ---------------------------------------------------------------------------------------------- #
# The sweep


def _log_above_bar(message: str) -> None:
    """Print to stderr above the progress bar."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


@dataclasses.dataclass
class Batch:
    """One dispatched batch: its runs, outputs (futures) and bookkeeping."""

    program: Program
    runs: list[Run]
    device: jax.Device
    started: float
    outputs: Any = None
    error: str | None = None
    steps: np.ndarray | None = None
    bound: float | None = None


@dataclasses.dataclass
class SweepStats:
    """What one session of a sweep did."""

    runs_total: int = 0
    runs_done_before: int = 0
    runs_executed: int = 0
    programs: int = 0
    compiled: int = 0
    compile_s: float = 0.0  # summed over the compiling threads
    compile_workers: int = 1
    wall_s: float = 0.0
    failed: int = 0
    devices: list[str] = dataclasses.field(default_factory=list)


class Sweep:
    """Executes the pending runs of a grid into a ``Store``."""

    def __init__(
        self,
        grid: Grid,
        store: Store,
        *,
        max_batch: int = 8,
        devices: list[jax.Device] | None = None,
        retry_failed: bool = False,
        progress: bool = True,
        log: Log | None = None,
        compile_workers: int | None = None,
        recorded: tuple[dict[str, dict[str, Any]], dict[str, Curves]] | None = None,
        datasets: dict[tuple, data_lib.Dataset] | None = None,
        trace_structure: bool = True,
    ) -> None:
        """``recorded``: the store's runs and curves, already loaded (``Store.load``); by default
        they are loaded here, a damaged part moved aside with one warning (``log``).
        ``datasets``: data sets already loaded, by ``(dataset, data_dir)`` (the others are
        loaded when a program first needs them). ``trace_structure``: runs differing only in
        their placement, Nesterov or attack share a program (:mod:`jaxbyz.structure`);
        False compiles one program for each."""
        self.grid, self.store, self.max_batch = grid, store, max_batch
        self.trace_structure = trace_structure
        if compile_workers is None:
            compile_workers = default_compile_workers()
        if compile_workers < 1:
            raise ValueError(
                f"--compile-workers must be >= 1, got {compile_workers} (threads compiling "
                "ahead; 1 for one at a time)"
            )
        self.compile_workers = compile_workers
        self.devices = devices or jax.local_devices()
        self.retry_failed, self.progress = retry_failed, progress
        self.log = log or _log_above_bar
        if recorded is None:
            recorded = store.load()
            damage = store.damage_line("their runs are not recorded and run again")
            if damage is not None:
                self.log(damage)
        self.rows, self.curves = recorded
        self.stats = SweepStats(
            runs_total=len(grid.runs),
            devices=[str(d) for d in self.devices],
            compile_workers=self.compile_workers,
        )
        self.after_batch: Callable[[SweepStats], None] | None = None
        self._datasets: dict[tuple, data_lib.Dataset] = dict(datasets or {})
        self._arrays: dict[tuple, dict[str, jax.Array]] = {}
        self._lock = threading.Lock()  # the dataset and array caches, shared by the builders

    # -- what is left ------------------------------------------------------------------------- #

    def finished(self, run: Run) -> bool:
        row = self.rows.get(run.id)
        return row is not None and not (self.retry_failed and row["status"] == "error")

    def pending(self) -> list[Run]:
        return [r for r in self.grid.runs if not self.finished(r)]

    def plan(self) -> list[tuple[Program, list[list[Run]]]]:
        """The programs of the pending runs and their batches."""
        programs = group_programs(self.pending(), self.trace_structure)
        return [(p, p.batches(self.max_batch)) for p in programs]

    # -- execution ---------------------------------------------------------------------------- #

    def run(self) -> SweepStats:
        """Run every pending run; return this session's statistics."""
        from tqdm import tqdm

        started = self._started = time.perf_counter()
        plan = self.plan()
        pending = sum(len(b) for _, batches in plan for b in batches)
        self.stats.runs_done_before = self.stats.runs_total - pending
        self.stats.programs = len(plan)
        self.log(
            f"{self.grid.name}: {self.stats.runs_total} runs, {self.stats.runs_done_before} "
            f"already done, {pending} to run in {len(plan)} programs "
            f"({sum(len(b) for _, b in plan)} batches of at most {self.max_batch}) on "
            f"{len(self.devices)} device(s): {', '.join(self.stats.devices)}"
        )
        bar = tqdm(
            total=self.stats.runs_total,
            initial=self.stats.runs_done_before,
            unit="run",
            desc=self.grid.name,
            disable=not self.progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        inflight: deque[Batch] = deque()
        pool = ThreadPoolExecutor(self.compile_workers, thread_name_prefix="jaxbyz-compile")
        ahead: deque[tuple[Program, list[list[Run]], jax.Device, Future]] = deque()
        work = iter(enumerate(plan))

        def build_ahead() -> None:  # keep every compiling thread busy, one program spare
            while len(ahead) <= self.compile_workers:
                item = next(work, None)
                if item is None:
                    return
                index, (program, batches) = item
                device = self.devices[index % len(self.devices)]  # one compile per program
                future = pool.submit(self._build, program, batches, device)
                ahead.append((program, batches, device, future))

        try:
            build_ahead()
            while ahead:
                program, batches, device, future = ahead.popleft()
                build_ahead()
                prepared = future.result()
                self._record_compiles(prepared)
                for runs in batches:
                    inflight.append(self._dispatch(program, prepared, runs, device))
                    while len(inflight) >= len(self.devices):
                        self._finish(inflight.popleft(), bar)
            while inflight:
                self._finish(inflight.popleft(), bar)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            bar.close()
            self.store.write_tables(self.rows, self.curves)
            self.stats.wall_s = time.perf_counter() - started
        self.log(
            f"compiled {self.stats.compiled} program(s) in {self.stats.compile_s:.1f} s "
            f"(summed over {self.compile_workers} compiling thread(s)); "
            f"ran {self.stats.runs_executed} runs ({self.stats.failed} failed) in "
            f"{self.stats.wall_s:.1f} s"
        )
        return self.stats

    def dataset(self, config: Config) -> data_lib.Dataset:
        """The dataset of ``config``, loaded once per sweep."""
        key = (config.dataset, config.data_dir)
        with self._lock:
            if key not in self._datasets:
                self._datasets[key] = data_lib.load_dataset(config.dataset, config.data_dir)
            return self._datasets[key]

    def _device_arrays(self, sim: Any, device: jax.Device) -> dict[str, jax.Array]:
        """The simulation's data arrays on ``device`` (the dataset's shared across programs)."""
        key = (sim.config.dataset, sim.config.data_dir, device.id)
        with self._lock:
            if key not in self._arrays:
                host = data_lib.host_arrays(sim.dataset)
                self._arrays = {k: v for k, v in self._arrays.items() if k[:2] == key[:2]}
                self._arrays[key] = jax.device_put(host, device)
            shared = self._arrays[key]
        extra = {k: v for k, v in sim.arrays.items() if k not in shared}
        return {**shared, **jax.device_put(extra, device)}

    def _prepare(self, program: Program) -> dict[str, Any]:
        """Validate the program's runs and build its simulation (no compilation yet)."""
        from jaxbyz.simulator import make_simulation

        first = program.runs[0].config
        traced = program.traced
        try:
            attacks = {r.id: check_config(r.config)[1] for r in program.runs}
            sim = make_simulation(first, self.dataset(first), traced=traced)
        except Exception as err:  # invalid configuration or missing data: every run fails
            return {"error": f"{type(err).__name__}: {err}", "label": program.label}
        # the dataset's arrays are passed per device (_device_arrays); drop this copy
        sim = dataclasses.replace(
            sim, arrays={k: v for k, v in sim.arrays.items() if k not in DATA_KEYS}
        )
        hparams = {r.id: HyperParams.from_config(r.config, attacks[r.id]) for r in program.runs}
        if traced.attack:  # the attacks' own numbers are replaced by the moment coefficients
            hparams = {i: hp._replace(attack={}) for i, hp in hparams.items()}
        if traced.switch:  # each run's branch, and a fixed factor as a traced number
            hparams = {r.id: _switch_hparams(hparams[r.id], program, r) for r in program.runs}
        return {
            "sim": sim,
            "hparams": hparams,
            "compiled": {},
            "error": None,
            "label": program.label,
        }

    def _build(
        self, program: Program, batches: list[list[Run]], device: jax.Device
    ) -> dict[str, Any]:
        """Prepare ``program`` and compile it for each of its batch sizes on ``device`` (runs in a
        compiling thread; a failure is recorded in the result, not raised)."""
        prepared = self._prepare(program)
        prepared["compile_log"] = []
        if prepared["error"] is not None:
            return prepared
        for runs in {len(b): b for b in batches}.values():  # one batch of each size
            try:
                check_memory(prepared["sim"], runs=len(runs), device=device)
                self._compiled(prepared, self._inputs(prepared, runs, device), device, len(runs))
            except Exception as err:
                prepared["error"] = f"{type(err).__name__}: {err}"  # it would fail again
                break
        return prepared

    def _inputs(self, prepared: dict[str, Any], runs: list[Run], device: jax.Device) -> tuple:
        """The arguments of ``prepared``'s program for ``runs`` on ``device``."""
        sim = prepared["sim"]
        keys, hps = stack_inputs(runs, [prepared["hparams"][r.id] for r in runs], device)
        return self._device_arrays(sim, device), keys, hps

    def _compiled(self, prepared: dict[str, Any], args: tuple, device: jax.Device, size: int):
        """The driver and compiled programs for this batch size and device (lowered and compiled
        once; a hit in the persistent cache counts as a compilation, a short one)."""
        cache = prepared["compiled"]
        if (size, device.id) not in cache:
            driver = Driver(prepared["sim"], batch=size)
            data, keys, hps = args
            programs = driver.compile(keys, hps, data)
            cache[size, device.id] = driver, programs
            prepared.setdefault("compile_log", []).append((size, device, programs.compile_seconds))
        return cache[size, device.id]

    def _record_compiles(self, prepared: dict[str, Any]) -> None:
        """Count and log (from the main thread) what a builder compiled."""
        for size, device, elapsed in prepared.pop("compile_log", []):
            self.stats.compiled += 1
            self.stats.compile_s += elapsed
            self.log(
                f"  {prepared['label']}: batch of {size} compiled for {device} in {elapsed:.1f} s"
            )

    def _dispatch(
        self, program: Program, prepared: dict[str, Any], runs: list[Run], device: jax.Device
    ) -> Batch:
        batch = Batch(program, runs, device, time.perf_counter())
        if prepared["error"] is not None:
            batch.error = prepared["error"]
            return batch
        sim = prepared["sim"]
        batch.steps, batch.bound = np.asarray(sim.evaluation_steps()), sim.bound
        try:
            args = self._inputs(prepared, runs, device)
            driver, programs = self._compiled(prepared, args, device, len(runs))
            self._record_compiles(prepared)
            batch.started = time.perf_counter()
            batch.outputs = dispatch(driver, programs, *args)
        except Exception as err:
            batch.error = f"{type(err).__name__}: {err}"
            if not prepared["compiled"]:
                prepared["error"] = batch.error  # a program that fails to compile fails again
        return batch

    def _finish(self, batch: Batch, bar: Any) -> None:
        """Wait for ``batch``, record its runs (one part file), update the progress bar."""
        results: list[dict[str, Any]] = []
        curves: dict[str, Curves] = {}
        if batch.error is None:
            try:
                out = outputs(jax.device_get(batch.outputs))
            except Exception as err:
                batch.error = f"{type(err).__name__}: {err}"
        wall = time.perf_counter() - batch.started
        for i, run in enumerate(batch.runs):
            if batch.error is not None:
                result = error_result(batch.error[:2000])
            else:
                result = summarize(
                    out["accuracy"][i],
                    out["loss"][i],
                    out["ratio"][i],
                    out["sampled_ratio"][i],
                    bool(out["theta_finite"][i]),
                    batch.steps,
                    batch.bound,
                )
                curves[run.id] = Curves(
                    batch.steps,
                    out["accuracy"][i].astype(np.float32),
                    segment_means(out["loss"][i], batch.steps),
                    segment_means(out["ratio"][i], batch.steps),
                    segment_means(out["sampled_ratio"][i], batch.steps),
                )
                result.update(out["extras"][i])
            result.update(wall_s=wall / len(batch.runs), runs_in_batch=len(batch.runs))
            result["device"] = str(batch.device)
            results.append({**config_row(run, batch.program.id), **result})
        self.store.write_part(results, curves)
        for row in results:
            self.rows[row["run_id"]] = row
            self.curves.pop(row["run_id"], None)
        self.curves.update(curves)
        self.store.write_tables(self.rows)  # the table, live; the curves at the end
        failed = [r for r in results if r["status"] != "completed"]
        self.stats.runs_executed += len(results)
        self.stats.failed += len(failed)
        self.stats.wall_s = time.perf_counter() - self._started
        if self.after_batch is not None:
            self.after_batch(self.stats)
        for row in failed:
            bar.write(f"  {row['status']}: {row['name']}: {row['reason'][:200]}", file=sys.stderr)
        bar.update(len(results))
        best = [r["best_accuracy"] for r in results if np.isfinite(r["best_accuracy"])]
        bar.set_postfix(program=batch.program.label[:40], acc=f"{max(best, default=0):.3f}")


def outputs(fetched: dict[str, Any]) -> dict[str, np.ndarray]:
    """A batch's fetched outputs as ``[B, ...]`` arrays: accuracies at the evaluation steps,
    per-step loss and variance-norm ratios (honest submissions, sampled gradients)."""
    study = concatenate_studies(fetched["studies"])
    return {
        "accuracy": np.concatenate(fetched["accuracy"], axis=1),
        "loss": study["loss"],
        "ratio": study["variance_norm_ratio"],
        "sampled_ratio": study["sampled_deviation"] / study["sampled_norm"],
        "theta_finite": fetched["theta_finite"],
        "extras": run_extras(study, fetched.get("node_accuracy", [])),
    }


def run_extras(study: dict[str, np.ndarray], nodes: list[np.ndarray]) -> list[dict[str, float]]:
    """Per run, the figures of federated and graph runs for the run table: the mean number of
    Byzantine participants per round, the final and largest consensus distance, and the final
    min/mean/max accuracy over a graph's honest nodes (empty for a synchronous run)."""
    participants, consensus = study["byzantine_participants"], study["consensus_distance"]
    rows = []
    for i in range(participants.shape[0]):
        row: dict[str, float] = {}
        if np.any(consensus[i] != 0):
            row["consensus_final"] = float(consensus[i, -1])
            row["consensus_max"] = float(np.max(consensus[i]))
        if np.ptp(participants[i]) > 0:  # partial participation
            row["byzantine_participants_mean"] = float(np.mean(participants[i]))
        if nodes:
            low, mean, high = (float(v) for v in np.asarray(nodes[-1])[i])
            row.update(node_accuracy_min=low, node_accuracy_mean=mean, node_accuracy_max=high)
        rows.append(row)
    return rows
