"""One driver for every way jaxbyz runs a simulation: compile its programs once, run them
segment by segment.

A run is cut into segments at its evaluation steps (and, for the train CLI, its checkpoint
steps). Three programs serve any run, each compiled ahead of time (``jit(...).lower().compile()``,
so compilation is measured apart from running):

- ``start(keys, data) -> (state, accuracy)``: the initial state and its evaluation (NaN when
  step 0 is not evaluated: ``--evaluation-delta 0``);
- ``steps[length](state, hp, data) -> (state, study)``: ``length`` steps as one ``lax.scan``, with
  the per-step study metrics; the state is donated (updated in place); one program per distinct
  segment length (usually one);
- ``evaluate(state, data) -> accuracy``.

``batch=None`` runs one run (``python -m jaxbyz.train``, the benchmarks); ``batch=B`` vmaps the
three programs over ``B`` runs that share every static field (the sweep): their keys and their
traced hyper-parameters (:class:`jaxbyz.config.HyperParams`) carry a leading axis ``B``. With a
device mesh (``--shard-workers``), the state keeps its layout between programs
(:meth:`jaxbyz.sharding.Layout.state_shardings`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import numpy as np

from jaxbyz.simulator import Simulation

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Segment:
    """Steps ``[start, stop)``, then an evaluation and/or a checkpoint at ``stop``."""

    start: int
    stop: int
    evaluate: bool
    checkpoint: bool

    @property
    def length(self) -> int:
        return self.stop - self.start


def segments(sim: Simulation, checkpoint_delta: int = 0, start: int = 0) -> list[Segment]:
    """The segments of ``sim``'s run from step ``start``: cut at every evaluation step and
    every multiple of ``checkpoint_delta`` (0: none)."""
    total = sim.config.nb_steps
    evaluations = {int(s) for s in sim.evaluation_steps()}
    checkpoints = (
        set(range(checkpoint_delta, total, checkpoint_delta)) if checkpoint_delta else set()
    )
    cuts = sorted(s for s in evaluations | checkpoints | {total} if start < s <= total)
    bounds = [start, *cuts]
    return [
        Segment(a, b, evaluate=b in evaluations, checkpoint=b in checkpoints)
        for a, b in itertools.pairwise(bounds)
    ]


@dataclasses.dataclass
class Programs:
    """The compiled programs of one simulation (and batch size), with their compile time."""

    start: Any
    steps: dict[int, Any]
    evaluate: Any
    compile_times: dict[str, float]  # XLA seconds per program: start, steps[length], evaluate
    compile_wall: float = 0.0  # seconds from tracing to the last executable (they overlap)

    @property
    def compile_seconds(self) -> float:
        """Wall seconds spent tracing, lowering and compiling the programs."""
        return self.compile_wall


@dataclasses.dataclass
class Result:
    """What one segment returns: the step reached, its study metrics (``[length]`` per name,
    ``[B, length]`` in a batch), the accuracy when evaluated, and the state."""

    segment: Segment
    study: dict[str, Array]
    accuracy: Array | None
    state: Any
    node_accuracy: Array | None = None  # [3] min, mean, max over a graph's nodes, when evaluated


class Driver:
    """Compiles and runs the programs of ``sim`` (one run, or ``batch`` runs vmapped)."""

    def __init__(self, sim: Simulation, batch: int | None = None, checkpoint_delta: int = 0):
        self.sim, self.batch, self.checkpoint_delta = sim, batch, checkpoint_delta

    def segments(self, start: int = 0) -> list[Segment]:
        return segments(self.sim, self.checkpoint_delta, start)

    # -- the traced functions ------------------------------------------------------------------ #

    def _vmapped(self, fn: Any, in_axes: tuple) -> Any:
        return fn if self.batch is None else jax.vmap(fn, in_axes=in_axes)

    def _start(self, key: Array, data: dict) -> tuple[Any, Array]:
        """The initial state, and its accuracy when step 0 is evaluated (else NaN)."""
        state = self.sim.init(key)
        if self.sim.evaluation_steps()[0] > 0:
            return state, jax.numpy.full((), jax.numpy.nan, jax.numpy.float32)
        return state, self.sim.evaluate(state, data)

    def _evaluate(self, state: Any, data: dict) -> Any:
        """The accuracy; with several models (a graph's nodes), also their min, mean, max."""
        if not self.sim.several_models:
            return self.sim.evaluate(state, data)
        return self.sim.evaluate(state, data), self.sim.evaluate_nodes(state, data)

    def _steps(self, state: Any, hp: Any, data: dict, length: int) -> tuple[Any, dict]:
        return self.sim.steps(state, hp, data, length)

    def _batched_steps(self, length: int) -> Any:
        """The steps program over the batch. With an attack switch (:mod:`jaxbyz.structure`),
        the branch index is taken from the first run, outside ``vmap``, so that only the chosen
        branch runs (a batched index would compute every branch): the runs of one batch must
        share their attack (the sweep batches each attack apart)."""
        steps = self._vmapped(functools.partial(self._steps, length=length), (0, 0, None))
        if self.batch is None or not self.sim.traced.switch:
            return steps

        def one(state: Any, hp: Any, data: dict, branch: Array) -> tuple[Any, dict]:
            return self._steps(state, _with_branch(hp, branch), data, length)

        def shared(state: Any, hp: Any, data: dict) -> tuple[Any, dict]:
            branch = hp.structure["attack_branch"][0]
            return jax.vmap(one, in_axes=(0, 0, None, None))(state, hp, data, branch)

        return shared

    # -- compilation ----------------------------------------------------------------------------- #

    def abstract_state(self, key: Array) -> Any:
        """The shapes, dtypes and (with a mesh) shardings of the state between programs."""
        state = jax.eval_shape(self._vmapped(self.sim.init, (0,)), key)
        shardings = self.sim.layout.state_shardings(state) if self.batch is None else None
        if shardings is None:
            return state
        return jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
        )

    def compile(self, key: Array, hp: Any, data: dict, lengths: set[int] | None = None) -> Programs:
        """Lower and compile the three programs for arguments like ``key``, ``hp`` and
        ``data`` (``lengths``: the segment lengths to compile; default: the whole run's).

        Each program is lowered, then the XLA compilations run side by side in threads (XLA
        compiles without holding the GIL). On CPU the programs run once per segment or once
        per run (``start``, ``evaluate``) are compiled at LLVM optimisation level 1
        (:data:`ONCE_OPTIONS`): a third of the time of the default level, identical results
        (their arithmetic is integer PRNG, conversions and library matmuls); the step program
        keeps the default level, whose fused arithmetic it runs hundreds of times.
        """
        clock = _Clock()
        layout = self.sim.layout
        if lengths is None:
            lengths = {s.length for s in self.segments()}
        state = self.abstract_state(key)  # the later programs receive it laid out like this
        # the state and one replicated output (accuracy, study metrics)
        kw = layout.program_shardings(state, outputs=1) if self.batch is None else {}
        once = ONCE_OPTIONS if jax.default_backend() == "cpu" else None
        lowered = {"start": jax.jit(self._vmapped(self._start, (0, None)), **kw).lower(key, data)}
        for length in sorted(lengths):
            fn = self._batched_steps(length)
            step = jax.jit(fn, donate_argnums=0, **kw).lower(state, hp, data)
            lowered[f"steps[{length}]"] = step
        evaluate = jax.jit(self._vmapped(self._evaluate, (0, None))).lower(state, data)
        lowered["evaluate"] = evaluate
        options = {name: None if name.startswith("steps") else once for name in lowered}
        compiled, times = _compile_all(lowered, options)
        steps = {length: compiled[f"steps[{length}]"] for length in sorted(lengths)}
        return Programs(compiled["start"], steps, compiled["evaluate"], times, clock.lap())

    # -- running --------------------------------------------------------------------------------- #

    def run(
        self,
        programs: Programs,
        state: Any,
        hp: Any,
        data: dict,
        start: int = 0,
    ) -> Iterator[Result]:
        """Run the segments from step ``start`` (``state`` is the state at that step), yielding
        each segment's result as soon as it is dispatched (JAX runs asynchronously: reading a
        result waits for it)."""
        for segment in self.segments(start):
            state, study = programs.steps[segment.length](state, hp, data)
            accuracy, nodes = None, None
            if segment.evaluate:
                accuracy, nodes = self.evaluation(programs, state, data)
            yield Result(segment, study, accuracy, state, nodes)

    def evaluation(self, programs: Programs, state: Any, data: dict) -> tuple[Array, Any]:
        """The accuracy of ``state``, and the min, mean, max over a graph's nodes (else None)."""
        out = programs.evaluate(state, data)
        return out if self.sim.several_models else (out, None)


def _with_branch(hp: Any, branch: Array) -> Any:
    """``hp`` with the attack switch's branch index replaced by ``branch``."""
    return hp._replace(structure={**hp.structure, "attack_branch": branch})


# XLA CPU options of the programs run once per run or per segment (see Driver.compile)
ONCE_OPTIONS = {"xla_backend_optimization_level": 1}


def _compile_all(
    lowered: dict[str, Any], options: dict[str, dict | None]
) -> tuple[dict[str, Any], dict[str, float]]:
    """Compile every lowered program, side by side in threads; the executables and each one's
    compile seconds (overlapping: their sum exceeds the wall time)."""

    def one(name: str) -> tuple[Any, float]:
        clock = _Clock()
        return lowered[name].compile(options[name]), clock.lap()

    with ThreadPoolExecutor(max_workers=len(lowered)) as pool:
        done = dict(zip(lowered, pool.map(one, lowered), strict=True))
    return {k: v[0] for k, v in done.items()}, {k: v[1] for k, v in done.items()}


def concatenate_studies(studies: list[dict[str, Any]], axis: int = -1) -> dict[str, np.ndarray]:
    """Per-segment study metrics joined along the step axis, as NumPy arrays."""
    names = studies[0].keys() if studies else ()
    return {n: np.concatenate([np.asarray(s[n]) for s in studies], axis=axis) for n in names}


class _Clock:
    """Seconds since the previous lap (or since it was made)."""

    def __init__(self) -> None:
        self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed
