"""The worker axis over several devices (and hosts), with JAX's own distribution.

A :class:`Layout` holds a one-dimensional :class:`jax.sharding.Mesh` whose axis is named
``"workers"``; the simulator asks it for two placements of its ``[w, d]`` matrices and XLA's
partitioner (GSPMD) inserts the collectives:

- ``rows``: the worker axis split over the devices. Each device samples the batches of its
  workers, runs their forward and backward passes, clips and applies their momentum: no
  communication at all.
- ``columns``: the coordinate axis split over the devices, every worker on every device. This is
  how the attacks, the rules and the study metrics read the submissions: a coordinate-wise rule
  (median, trmean, phocas, meamed, Bulyan's last step) is then independent per coordinate
  block, and a distance rule's Gram matrix ``G Gᵀ`` is the sum of the devices' partial Gram
  matrices (an all-reduce of ``n x n`` floats). Going from rows to columns is one all-to-all of
  the submissions; the aggregate ``[d]`` is then gathered back to every device.

The model parameters, the test set and the training set are replicated. Results agree with one
device up to floating-point reassociation (partial sums in another order), see
``tests/test_sharding.py``.

Several hosts: call :func:`initialize_distributed` (``jax.distributed.initialize``) in every
process before anything else touches JAX; ``jax.devices()`` is then every device of every host
and the same :func:`worker_mesh` spans them. Every process runs the same program on the same
inputs (same configuration, same seed, same data files) and process 0 writes the results.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

WORKERS = "workers"


def worker_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh named ``"workers"`` over ``devices`` (default: all, of every host)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("worker_mesh needs at least one device, got none")
    return Mesh(np.asarray(devices), (WORKERS,))


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the simulator's arrays live: nothing is constrained when ``mesh`` is None."""

    mesh: Mesh | None = None

    @property
    def devices(self) -> int:
        return 1 if self.mesh is None else self.mesh.devices.size

    def _constrain(self, x: jax.Array, spec: P) -> jax.Array:
        if self.mesh is None:
            return x
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

    def rows(self, x: jax.Array) -> jax.Array:
        """``x`` with its leading (worker) axis split over the devices."""
        return self._constrain(x, P(WORKERS))

    def columns(self, x: jax.Array) -> jax.Array:
        """``x`` ``[w, d]`` with its coordinate axis split over the devices."""
        return self._constrain(x, P(None, WORKERS))

    def replicated(self, x: jax.Array) -> jax.Array:
        """``x`` whole on every device."""
        return self._constrain(x, P())

    def state_shardings(self, state: Any) -> Any:
        """Shardings for the simulator's ``State`` (or its shapes) *between* programs, to pass
        as a jitted program's ``out_shardings``: the per-worker states (``worker_state``,
        ``poisoner_state``: momenta ``[w, d]``) split by rows, everything else replicated. The
        partitioner infers the same today from the constraints inside the step; stating it
        makes the layout between programs a guarantee (whole momenta on every device would cost
        an all-gather of ``w d`` floats per segment).

        A ``jax.Array`` must split evenly, so when ``w`` is not a multiple of the device count
        the momenta stay replicated between programs (inside a program they are split anyway).
        None without a mesh (JAX chooses).
        """
        if self.mesh is None:
            return None
        replicated = NamedSharding(self.mesh, P())
        split = NamedSharding(self.mesh, P(WORKERS))

        def per_worker(leaf: Any) -> NamedSharding:
            rows = leaf.shape[0] if leaf.ndim else 0
            return split if rows and rows % self.devices == 0 else replicated

        shardings = jax.tree.map(lambda _: replicated, state)
        return shardings.replace(
            worker_state=jax.tree.map(per_worker, state.worker_state),
            poisoner_state=jax.tree.map(per_worker, state.poisoner_state),
        )

    def program_shardings(self, state: Any, outputs: int | None) -> dict[str, Any]:
        """``jax.jit`` keywords for a program returning ``(state, *outputs)`` (``outputs``
        replicated values; ``None``: the state alone) whose state keeps the layout of
        :meth:`state_shardings`. Empty without a mesh (JAX chooses)."""
        shardings = self.state_shardings(state)
        if shardings is None:
            return {}
        if outputs is None:
            return {"out_shardings": shardings}
        return {"out_shardings": (shardings, *[NamedSharding(self.mesh, P())] * outputs)}

    def place(self, tree: Any) -> Any:
        """Host values (NumPy arrays, scalars, PRNG keys) as arrays replicated on the mesh.

        Works across hosts: every process must pass the same values.
        """
        if self.mesh is None:
            return tree
        sharding = NamedSharding(self.mesh, P())

        def put(x: Any) -> jax.Array:
            if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                data = np.asarray(jax.random.key_data(x))
                impl = jax.random.key_impl(x)
                return jax.random.wrap_key_data(_replicate(data, sharding), impl=impl)
            return _replicate(np.asarray(x), sharding)

        return jax.tree.map(put, tree)


def _replicate(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def to_host(x: jax.Array) -> np.ndarray:
    """A replicated (or single-device) array as NumPy, on any host."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """``jax.distributed.initialize`` for several hosts (arguments auto-detected on Slurm,
    Open MPI and Cloud TPU; otherwise give all three). Must run before any other JAX call."""
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
