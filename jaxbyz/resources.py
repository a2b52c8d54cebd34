"""What a run needs of the device, checked before anything compiles.

A lower bound of the memory one run's step program holds (float32 everywhere), from the shapes
the configuration fixes:

- parameter-sized arrays ``[k, d]``: the ``w`` gradient rows, the ``h`` honest submissions, the
  ``n`` rows the rule receives and about two more ``n x d`` matrices of the rule's temporaries
  (measured: 1.6 to 2.1 for the paper's rules, ``tests/test_step_memory.py``), the per-worker
  state (momenta), the study's past means, and a few ``[d]`` vectors;
- the gathered batches ``[w, b, *input]`` (the inputs and their preprocessed copy);
- the data sets, held whole on the device.

The model's activations are not counted (they depend on the architecture), so the estimate never
exceeds what the run really takes: a run refused by it could not have run. ``runs`` multiplies
the per-run part (a sweep vmaps several runs in one program). The memory available is the
device's limit on accelerators and the host's available memory on the CPU.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax

FLOAT = 4  # bytes
GIB = 2**30


def run_bytes(sim: Any) -> int:
    """A lower bound of the bytes one run of ``sim`` holds (its data sets excluded)."""
    c, d = sim.config, sim.dim
    rows = sim.grad_workers + sim.honest + c.nb_workers * 3
    worker_momenta = c.momentum_at == "worker" or sim.traced.placement
    rows += sim.honest if worker_momenta else 0
    rows += sim.past_window + 6
    inputs = sim.grad_workers * c.batch_size * math.prod(sim.dataset.input_shape) * 2
    return FLOAT * (rows * d + inputs)


def data_bytes(dataset: Any) -> int:
    """The data sets on the device: the raw training set, the preprocessed test set."""
    test = math.prod(dataset.test_x.shape) * FLOAT
    return dataset.train_x.nbytes + dataset.train_y.nbytes + test + dataset.test_y.nbytes


def available_bytes(device: jax.Device | None = None) -> int | None:
    """The memory a program may use on ``device`` (default: JAX's first): the device's limit
    (accelerators), the host's available memory (CPU); None when unknown."""
    device = device or jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    try:
        with open("/proc/meminfo") as fd:
            for line in fd:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(sim: Any, runs: int = 1, device: jax.Device | None = None) -> None:
    """Refuse, in one line, a run (or ``runs`` vmapped runs) that cannot fit in memory."""
    available = available_bytes(device)
    if available is None:
        return
    per_run = run_bytes(sim)
    needed = per_run * runs + data_bytes(sim.dataset)
    if needed <= available:
        return
    c = sim.config
    what = f"{runs} runs vmapped together, each" if runs > 1 else "one run"
    fix = "--max-batch (runs vmapped together), " if runs > 1 else ""
    raise ValueError(
        f"not enough memory: {what} needs at least {per_run / GIB:.1f} GB "
        f"({c.nb_workers} workers x {sim.dim:,} parameters, batches of {c.batch_size}), "
        f"{needed / GIB:.1f} GB in all with the data, and "
        f"{(device or jax.devices()[0]).platform} has {available / GIB:.1f} GB available; fix: "
        f"lower {fix}--nb-workers or --batch-size"
    )
