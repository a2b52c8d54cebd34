"""The three momentum placements of El-Mhamdi, Guerraoui & Rouault (ICLR 2021, Section 3), as
compositions of optax transformations (:mod:`jaxbyz.transforms`).

With momentum ``β``, dampening ``δ`` and learning rate ``γ_t``, the submissions ``s_i`` the rule
receives and the parameter update are:

- ``update`` (classic; "at the server" in the paper's text): ``s_i = g_i``;
  ``a_t = F(s_1..s_n)``, ``m_t = β m_{t-1} + (1 - δ) a_t``, ``θ_{t+1} = θ_t - γ_t m_t``;
- ``worker`` (the paper's proposal): ``s_i = m_i,t = β m_i,t-1 + (1 - δ) g_i,t``;
  ``θ_{t+1} = θ_t - γ_t a_t``;
- ``server``: ``s_i = (1 - δ) g_i,t + β a_{t-1}``; ``θ_{t+1} = θ_t - γ_t a_t``.

With a linear rule (the average) the three are the same algorithm; with a robust rule they are
not: worker momentum averages the noise of ``~1/(1-β)`` steps before the rule sees it, which
lowers the variance-norm ratio of the submissions (the paper's thesis).

Nesterov (the paper's look-ahead variant): the gradients are taken at ``θ_t - γ_t β m``, where
``m`` is the momentum the composition keeps: each worker's own for ``worker``, the server's for
``update``, the previous aggregate for ``server`` (``Composition.velocity``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxbyz import transforms

Array = jax.Array

PLACEMENTS = ("update", "worker", "server")


@dataclasses.dataclass(frozen=True)
class Composition:
    """The two optax stages a placement is made of, around the rule.

    Attributes:
      worker: applied to the ``[w, ...]`` rows of gradient estimates (clipped gradients), one
        row per worker (:func:`jaxbyz.transforms.per_worker`); reads the extra argument
        ``previous_aggregate`` where it needs it.
      server: applied to the aggregate: the server-side momentum if any, weight decay, and the
        optimiser that returns the parameter update.

      velocity: ``(worker_state, aggregator_state, server_state) -> m``, the momentum the
        Nesterov look-ahead follows: each worker's own (``[w, ...]``) for ``worker``, the
        server's momentum for ``update``, the previous aggregate for ``server``.
    """

    worker: optax.GradientTransformationExtraArgs
    server: optax.GradientTransformationExtraArgs
    velocity: Callable[[Any, Any, Any], Any]


def compose(
    placement: str,
    *,
    beta: float | Array,
    dampening: float | Array,
    optimizer: optax.GradientTransformation,
    num_workers: int,
    weight_decay: float | Array | None = None,
) -> Composition:
    """The composition of ``placement`` for ``num_workers`` rows, ending with ``optimizer``
    (``optax.sgd(schedule)`` is the paper's) after ``optax.add_decayed_weights(weight_decay)``
    when given (the paper's ``--weight-decay``: PyTorch SGD adds ``λ θ`` to the update)."""
    check_placement(placement)
    decay = [] if weight_decay is None else [optax.add_decayed_weights(weight_decay)]
    if placement == "update":
        worker = optax.identity()
        server = optax.chain(transforms.momentum(beta, dampening), *decay, optimizer)

        def velocity(worker_state, aggregator_state, server_state):
            return transforms.velocity(server_state[0])

    elif placement == "worker":
        worker = transforms.momentum(beta, dampening)
        server = optax.chain(*decay, optimizer)

        def velocity(worker_state, aggregator_state, server_state):
            return transforms.velocity(worker_state)

    else:
        worker = transforms.server_momentum(beta, dampening)
        server = optax.chain(*decay, optimizer)

        def velocity(worker_state, aggregator_state, server_state):
            return aggregator_state.previous

    return Composition(transforms.per_worker(worker, num_workers), server, velocity)


def compose_traced(
    placement: int | Array,
    *,
    beta: float | Array,
    dampening: float | Array,
    optimizer: optax.GradientTransformation,
    num_workers: int,
    weight_decay: float | Array | None = None,
) -> Composition:
    """The three placements as one composition, ``placement`` a traced index into
    :data:`PLACEMENTS` (0 update, 1 worker, 2 server), so that runs differing only in their
    placement run as one program (:mod:`jaxbyz.structure`).

    The worker stage is :func:`jaxbyz.transforms.switch` over the three worker stages of
    :func:`compose` (identity, worker momentum, server mix), the server stage switches the
    server's momentum on for ``update`` only; every branch is computed (elementwise, cheap next
    to the gradients) and the chosen one's result kept, so the run equals :func:`compose`'s for
    that placement up to the rounding of fused arithmetic. The state holds every branch's
    buffers (worker momenta ``[w, ...]`` even for ``update``). ``velocity`` returns one point per
    worker ``[w, ...]``: the workers' momenta, or the shared buffer broadcast.
    """
    decay = [] if weight_decay is None else [optax.add_decayed_weights(weight_decay)]
    worker = transforms.switch(
        placement,
        optax.identity(),
        transforms.momentum(beta, dampening),
        transforms.server_momentum(beta, dampening),
    )
    server_momentum = transforms.switch(
        jnp.minimum(placement, 1), transforms.momentum(beta, dampening), optax.identity()
    )
    server = optax.chain(server_momentum, *decay, optimizer)

    def velocity(worker_state, aggregator_state, server_state):
        own = transforms.velocity(worker_state.states[1])  # [w, ...]
        shared = jax.tree.map(
            lambda m, a: jnp.where(placement == 0, m, a),
            transforms.velocity(server_state[0].states[0]),
            aggregator_state.previous,
        )
        return jax.tree.map(
            lambda o, s: jnp.where(placement == 1, o, jnp.broadcast_to(s, o.shape)), own, shared
        )

    return Composition(transforms.per_worker(worker, num_workers), server, velocity)


def check_placement(placement: str) -> None:
    """Raise a ValueError naming the flag when ``placement`` is unknown."""
    if placement not in PLACEMENTS:
        raise ValueError(
            f"--momentum-at {placement!r} is unknown; choose one of {', '.join(PLACEMENTS)}"
        )
