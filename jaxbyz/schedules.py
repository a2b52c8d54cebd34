"""Learning-rate schedules of the paper's code, as optax schedules (``step -> learning rate``).

- hyperbolic decay (``--learning-rate-decay``, ``--learning-rate-decay-delta``):
  ``γ_t = γ_0 / (1 + s / decay)`` with ``s = t - t mod Δ``: the rate is recomputed only when
  ``t`` is a multiple of ``Δ``; ``decay <= 0`` keeps it constant;
- piecewise constant (``--learning-rate-schedule "γ_0,t_1,γ_1,t_2,γ_2,..."``): ``γ_k`` from step
  ``t_k`` on (``optax.join_schedules`` of constant schedules).

Either is what ``optax.sgd(learning_rate=schedule)`` (or any optax optimiser) reads at every
update from its own step count. ``γ_0`` may be a traced value, so that runs differing only in
their learning rate share one compiled program; the piecewise rates are then scaled by
``γ_0 / γ_0'`` where ``γ_0'`` is the schedule's first rate.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def hyperbolic_decay(init_value: float | Array, decay: int, decay_delta: int) -> optax.Schedule:
    """``γ_0 / (1 + (t - t mod Δ) / decay)``; constant when ``decay <= 0``."""
    if decay_delta <= 0:
        raise ValueError(
            f"--learning-rate-decay-delta must be a positive integer, got {decay_delta}"
        )

    def schedule(count: Array) -> Array:
        if decay <= 0:
            return jnp.asarray(init_value, jnp.float32)
        last_update = (count // decay_delta) * decay_delta
        return init_value / (1.0 + last_update.astype(jnp.float32) / decay)

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


def piecewise_constant(
    points: tuple[tuple[int, float], ...], init_value: float | Array | None = None
) -> optax.Schedule:
    """``γ_k`` from step ``t_k`` on; ``init_value`` rescales the whole schedule so that it
    starts at ``init_value`` (default: the first rate, unchanged)."""
    first = jnp.float32(points[0][1])
    ratio = 1.0 if init_value is None else init_value / first
    constants = [optax.constant_schedule(jnp.float32(lr) * ratio) for _, lr in points]
    return optax.join_schedules(constants, [step for step, _ in points[1:]])


def from_config(config, init_value: float | Array) -> optax.Schedule:
    """The schedule a :class:`jaxbyz.config.Config` describes, starting at ``init_value``."""
    if config.learning_rate_schedule is not None:
        return piecewise_constant(parse_piecewise(config.learning_rate_schedule), init_value)
    return hyperbolic_decay(
        init_value, config.learning_rate_decay, config.learning_rate_decay_delta
    )


def first_rate(config) -> float:
    """The learning rate at step 0 (``--learning-rate``, or the schedule's first rate)."""
    if config.learning_rate_schedule is not None:
        return parse_piecewise(config.learning_rate_schedule)[0][1]
    return config.learning_rate
