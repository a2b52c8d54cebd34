"""Batched, resumable execution of a sweep.

Runs that share every static field run as one compiled program, ``jit(vmap(Simulation.run))`` over
their seeds and traced hyper-parameters (learning rate, momentum, dampening, l2 factor, attack
factor), in batches of at most ``max_batch``. Programs are built (traced, lowered and compiled)
ahead of time by a pool of ``compile_workers`` threads, a few programs ahead of the one running,
so compilation overlaps execution and uses several cores (XLA compiles outside the GIL; on an
accelerator compiling is most of a small grid's time). Batches are placed with ``jax.device_put``
and dispatched asynchronously: each program goes to the next device in turn (so it compiles once),
and at most one batch per device is in flight.

Storage (``Store``): each finished batch is one file ``parts/<id>.npz`` written to a temporary name
then renamed (``os.replace``), so a sweep killed at any moment (SIGKILL included) loses at most
the batches in flight, and a rerun skips every run found in ``parts/``. The run table
``runs.csv`` (one row per run) and the curves ``curves.csv.gz`` (per run and evaluation step: top-1
accuracy, and the mean loss, variance-norm ratio of the honest submissions and of the sampled
gradients over the steps since the previous evaluation)
are rebuilt from the parts. A run that raises, or whose loss becomes non-finite, is recorded with
its status ("error" or "diverged") and the reason, and the sweep goes on.

The statistics per run follow the paper's code (El-Mhamdi et al., ICLR 2021; its ``study.py``):
the best top-1 cross-accuracy, and the share of steps whose honest variance-norm ratio is under
the rule's bound (``paper_share_under_bound`` also requires the loss not to exceed its initial
value, as ``reproduce.py`` counts "ratio validated" steps).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from jaxbyz import data as data_lib
from jaxbyz.config import Config, validate
from jaxbyz.experiments.grid import (
    TRACED_ATTACK_ARGS,
    Grid,
    Program,
    Run,
    chunks,
    group_programs,
    program_id,
)

Log = Callable[[str], None]
DATA_KEYS = ("train_x", "train_y", "test_inputs", "test_y")
RESULT_COLUMNS = (
    "status",
    "reason",
    "best_accuracy",
    "best_step",
    "final_accuracy",
    "final_loss",
    "diverged_step",
    "mean_ratio",
    "mean_sampled_ratio",
    "bound",
    "share_under_bound",
    "paper_share_under_bound",
    "wall_s",
    "batch_size",
    "device",
)


# ---------------------------------------------------------------------------------------------- #
# Rows and curves


def config_row(run: Run) -> dict[str, Any]:
    """The identifying columns of a run: ids, role and every configuration field."""
    row: dict[str, Any] = {
        "run_id": run.id,
        "name": run.name,
        "role": run.role,
        "pair_id": run.pair_id if run.role == "attacked" else "",
        "baseline_id": run.baseline_id if run.role == "attacked" else "",
        "program_id": program_id(run.config),
    }
    for key, value in run.config.to_dict().items():
        row[key] = json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
    return row


def segment_means(values: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Per evaluation step, the mean of the per-step ``values`` since the previous evaluation
    (NaN at step 0); non-finite values are ignored."""
    out = np.full(len(steps), np.nan, np.float32)
    for j in range(1, len(steps)):
        part = values[steps[j - 1] : steps[j]]
        part = part[np.isfinite(part)]
        if part.size:
            out[j] = part.mean()
    return out


def summarize(
    accuracy: np.ndarray,
    loss: np.ndarray,
    ratio: np.ndarray,
    sampled_ratio: np.ndarray,
    theta_finite: bool,
    steps: np.ndarray,
    bound: float | None,
) -> dict[str, Any]:
    """The result columns of one run from its accuracy curve and per-step loss and ratio."""
    bad = np.flatnonzero(~np.isfinite(loss))
    diverged = bad.size > 0 or not theta_finite
    first_bad = int(bad[0]) if bad.size else len(loss)
    valid = (steps <= first_bad) & np.isfinite(accuracy)
    if valid.any():
        best = int(np.argmax(np.where(valid, accuracy, -np.inf)))  # first maximum: earliest step
        best_accuracy, best_step = float(accuracy[best]), int(steps[best])
    else:
        best_accuracy, best_step = float("nan"), -1
    if bound is None:
        share = paper_share = float("nan")
    else:
        share = float(np.mean(ratio < bound))
        paper_share = float(np.mean((ratio < bound) & (loss <= loss[0])))
    return {
        "status": "diverged" if diverged else "completed",
        "reason": f"non-finite loss from step {first_bad}" if diverged else "",
        "best_accuracy": best_accuracy,
        "best_step": best_step,
        "final_accuracy": float(accuracy[-1]),
        "final_loss": float(loss[-1]),
        "diverged_step": first_bad if diverged else -1,
        "mean_ratio": _finite_mean(ratio),
        "mean_sampled_ratio": _finite_mean(sampled_ratio),
        "bound": float("nan") if bound is None else float(bound),
        "share_under_bound": share,
        "paper_share_under_bound": paper_share,
    }


def _finite_mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def error_result(reason: str) -> dict[str, Any]:
    """The result columns of a run that raised."""
    nan = float("nan")
    return {
        "status": "error",
        "reason": reason,
        "best_accuracy": nan,
        "best_step": -1,
        "final_accuracy": nan,
        "final_loss": nan,
        "diverged_step": -1,
        "mean_ratio": nan,
        "mean_sampled_ratio": nan,
        "bound": nan,
        "share_under_bound": nan,
        "paper_share_under_bound": nan,
    }


# ---------------------------------------------------------------------------------------------- #
# Storage


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` through a temporary file and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fd:
        fd.write(payload)
        fd.flush()
        os.fsync(fd.fileno())
    os.replace(tmp, path)


@dataclasses.dataclass
class Curves:
    """The curves of one run, one value per evaluation step."""

    steps: np.ndarray
    accuracy: np.ndarray
    loss: np.ndarray
    ratio: np.ndarray
    sampled_ratio: np.ndarray


class Store:
    """A sweep's output folder: ``parts/`` (one file per finished batch), the rebuilt tables."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.parts = self.root / "parts"

    def write_part(self, rows: list[dict[str, Any]], curves: dict[str, Curves]) -> Path:
        """One finished batch, atomically: its rows and the curves of its runs."""
        self.parts.mkdir(parents=True, exist_ok=True)
        ids = sorted(r["run_id"] for r in rows)
        stamp = f"{time.time_ns()}-{hashlib.sha1(''.join(ids).encode()).hexdigest()[:12]}"
        ordered = [c for c in (curves.get(r["run_id"]) for r in rows) if c is not None]
        buffer = io.BytesIO()
        np.savez(
            buffer,
            rows=np.array(json.dumps(rows, default=_json_default)),
            run_ids=np.array([r["run_id"] for r in rows if r["run_id"] in curves], dtype=str),
            steps=ordered[0].steps if ordered else np.zeros(0, np.int64),
            accuracy=np.stack([c.accuracy for c in ordered]) if ordered else np.zeros((0, 0)),
            loss=np.stack([c.loss for c in ordered]) if ordered else np.zeros((0, 0)),
            ratio=np.stack([c.ratio for c in ordered]) if ordered else np.zeros((0, 0)),
            sampled_ratio=np.stack([c.sampled_ratio for c in ordered])
            if ordered
            else np.zeros((0, 0)),
        )
        path = self.parts / f"{stamp}.npz"
        atomic_write_bytes(path, buffer.getvalue())
        return path

    def load(self) -> tuple[dict[str, dict[str, Any]], dict[str, Curves]]:
        """Every recorded run (a later part supersedes an earlier one for the same run)."""
        rows: dict[str, dict[str, Any]] = {}
        curves: dict[str, Curves] = {}
        for stale in self.parts.glob(".*.tmp"):  # writes cut short by a kill
            if not _alive(stale.suffixes[-2].lstrip(".")):
                stale.unlink(missing_ok=True)
        for path in sorted(self.parts.glob("*.npz")):
            with np.load(path, allow_pickle=False) as part:
                for row in json.loads(str(part["rows"])):
                    rows[row["run_id"]] = row
                    curves.pop(row["run_id"], None)
                # parts written before the sampled ratio was recorded have none
                sampled = part["sampled_ratio"] if "sampled_ratio" in part.files else None
                for i, run_id in enumerate(part["run_ids"]):
                    curves[str(run_id)] = Curves(
                        part["steps"],
                        part["accuracy"][i],
                        part["loss"][i],
                        part["ratio"][i],
                        np.full_like(part["ratio"][i], np.nan) if sampled is None else sampled[i],
                    )
        return rows, curves

    def write_tables(
        self, rows: dict[str, dict[str, Any]], curves: dict[str, Curves] | None = None
    ) -> None:
        """Rebuild ``runs.csv`` and (given ``curves``) ``curves.csv.gz``, atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        table = pd.DataFrame(list(rows.values()))
        atomic_write_bytes(self.root / "runs.csv", table.to_csv(index=False).encode())
        if curves is None:
            return
        frames = [
            pd.DataFrame(
                {
                    "run_id": run_id,
                    "step": c.steps,
                    "accuracy": c.accuracy,
                    "loss": c.loss,
                    "ratio": c.ratio,
                    "sampled_ratio": c.sampled_ratio,
                }
            )
            for run_id, c in curves.items()
        ]
        long = (
            pd.concat(frames, ignore_index=True)
            if frames
            else pd.DataFrame(
                columns=["run_id", "step", "accuracy", "loss", "ratio", "sampled_ratio"]
            )
        )
        buffer = io.BytesIO()
        long.to_csv(buffer, index=False, compression={"method": "gzip", "mtime": 0})
        atomic_write_bytes(self.root / "curves.csv.gz", buffer.getvalue())

    def read_meta(self) -> dict[str, Any]:
        path = self.root / "sweep.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        payload = json.dumps(meta, indent=2, default=_json_default) + "\n"
        atomic_write_bytes(self.root / "sweep.json", payload.encode())


def _alive(pid: str) -> bool:
    """Whether process ``pid`` (from a temporary file's name) still runs."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


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


def enable_compilation_cache(folder: str | Path | None) -> None:
    """Keep compiled programs on disk (JAX's persistent cache) so that a resumed sweep does not
    compile again what it compiled before it was killed; ``None`` leaves the cache off."""
    if folder is None:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def program_function(sim: Any) -> Callable[..., dict[str, jax.Array]]:
    """``(arrays, keys [B], hparams [B]) -> outputs [B, ...]``: the vmapped run of ``sim``.

    The data arrays are an argument, not closed-over constants, so that one program serves any
    device and the data is not embedded in the compiled code.
    """

    def program(arrays, keys, hparams):
        bound = dataclasses.replace(sim, arrays=arrays)
        out = jax.vmap(bound.run)(keys, hparams)
        return {
            "accuracy": out["accuracy"],
            "loss": out["study"]["loss"],
            "ratio": out["study"]["variance_norm_ratio"],
            "sampled_ratio": out["study"]["sampled_deviation"] / out["study"]["sampled_norm"],
            "theta_finite": jnp.all(jnp.isfinite(out["theta"]), axis=1),
        }

    return program


def run_hparams(config: Config, attack: Any, sim: Any) -> dict[str, Any]:
    """The traced hyper-parameters of one run (``Simulation.run``'s ``hparams``)."""
    lr = config.learning_rate
    if config.learning_rate_schedule is not None:
        lr = float(sim.default_hparams()["learning_rate"])
    traced = {k: attack.params[k] for k in TRACED_ATTACK_ARGS if k in config.attack_args}
    return {
        "learning_rate": lr,
        "momentum": config.momentum,
        "dampening": config.dampening,
        "l2_regularize": config.l2_regularize,
        "attack": traced,
    }


def stack_inputs(runs: Sequence[Run], hparams: Sequence[dict[str, Any]], device: jax.Device):
    """Batched keys and hyper-parameters of ``runs``, placed on ``device``."""
    seeds = np.array([r.config.seed for r in runs], np.uint32)
    keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
    stacked = jax.tree.map(lambda *v: np.asarray(v, np.float32), *hparams)
    return jax.device_put((keys, stacked), device)


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
    ) -> None:
        self.grid, self.store, self.max_batch = grid, store, max_batch
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
        self.rows, self.curves = store.load()
        self.stats = SweepStats(
            runs_total=len(grid.runs),
            devices=[str(d) for d in self.devices],
            compile_workers=self.compile_workers,
        )
        self.after_batch: Callable[[SweepStats], None] | None = None
        self._datasets: dict[tuple, data_lib.Dataset] = {}
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
        return [(p, chunks(p.runs, self.max_batch)) for p in group_programs(self.pending())]

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
        try:
            attacks = {r.id: validate(r.config)[1] for r in program.runs}
            sim = make_simulation(first, self.dataset(first))
        except Exception as err:  # invalid configuration or missing data: every run fails
            return {"error": f"{type(err).__name__}: {err}", "label": program.label}
        # the dataset's arrays are passed per device (_device_arrays); drop this copy
        sim = dataclasses.replace(
            sim, arrays={k: v for k, v in sim.arrays.items() if k not in DATA_KEYS}
        )
        hparams = {r.id: run_hparams(r.config, attacks[r.id], sim) for r in program.runs}
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
        """The program's executable for this batch size and device (lowered and compiled once;
        a hit in the persistent cache counts as a compilation, a short one)."""
        cache = prepared["compiled"]
        if (size, device.id) not in cache:
            begun = time.perf_counter()
            fn = jax.jit(program_function(prepared["sim"]))
            cache[size, device.id] = fn.lower(*args).compile()
            prepared.setdefault("compile_log", []).append(
                (size, device, time.perf_counter() - begun)
            )
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
            compiled = self._compiled(prepared, args, device, len(runs))
            self._record_compiles(prepared)
            batch.started = time.perf_counter()
            batch.outputs = compiled(*args)  # asynchronous dispatch
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
                out = jax.device_get(batch.outputs)
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
            result.update(wall_s=wall / len(batch.runs), batch_size=len(batch.runs))
            result["device"] = str(batch.device)
            results.append({**config_row(run), **result})
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
