"""Learning-rate schedules of the paper's code, as pure functions of the step (optax style).

- hyperbolic: ``gamma_t = gamma_0 / (1 + s / decay)`` where ``s = t - t mod decay_delta``, that is
  the rate is recomputed only when ``t % decay_delta == 0`` (``decay <= 0``: constant);
- piecewise constant: ``"lr0,step1,lr1,step2,lr2,..."`` as the paper's ``--learning-rate-schedule``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
Schedule = Callable[[Array, Array], Array]  # (step, lr0) -> lr


def hyperbolic(decay: int, decay_delta: int) -> Schedule:
    """``gamma_0 / (1 + (t - t mod delta) / decay)``; constant when ``decay <= 0``."""
    if decay_delta <= 0:
        raise ValueError(
            f"--learning-rate-decay-delta must be a positive integer, got {decay_delta}"
        )

    def schedule(step: Array, lr0: Array) -> Array:
        if decay <= 0:
            return jnp.asarray(lr0, jnp.float32)
        last_update = (step // decay_delta) * decay_delta
        return lr0 / (1.0 + last_update.astype(jnp.float32) / decay)

    return schedule


def parse_piecewise(text: str) -> tuple[tuple[int, float], ...]:
    """Parse ``"lr0,step1,lr1,..."`` into ``((0, lr0), (step1, lr1), ...)``, validating it."""
    try:
        parts = [p.strip() for p in text.split(",")]
        values = [float(p) if i % 2 == 0 else int(p) for i, p in enumerate(parts)]
    except ValueError as err:
        raise ValueError(
            f"--learning-rate-schedule {text!r} is malformed ({err}); "
            "expected '<lr0>[,<from step>,<lr>]*', e.g. '0.1,1000,0.01'"
        ) from None
    if len(values) % 2 == 0:
        raise ValueError(f"--learning-rate-schedule {text!r}: a step is missing its learning rate")
    points = [(0, values[0])] + [(values[i], values[i + 1]) for i in range(1, len(values), 2)]
    steps = [s for s, _ in points]
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise ValueError(f"--learning-rate-schedule {text!r}: steps must be strictly increasing")
    if any(lr <= 0 for _, lr in points):
        raise ValueError(f"--learning-rate-schedule {text!r}: learning rates must be positive")
    return tuple(points)


def piecewise(points: tuple[tuple[int, float], ...]) -> Schedule:
    """Piecewise-constant rate; ``lr0`` scales the whole schedule relative to its first value."""
    boundaries = jnp.asarray([s for s, _ in points[1:]], jnp.int32)
    rates = jnp.asarray([lr for _, lr in points], jnp.float32)

    def schedule(step: Array, lr0: Array) -> Array:
        index = jnp.sum(step >= boundaries)
        return rates[index] * (lr0 / rates[0])

    return schedule
