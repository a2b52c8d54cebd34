"""The three momentum placements of El-Mhamdi, Guerraoui & Rouault (ICLR 2021), Section 3.

With momentum ``beta``, dampening ``delta`` and learning rate ``gamma_t``:

- ``update`` (classic; "at the server" in the paper): ``a_t = GAR(g_1..g_h, byz)``,
  ``m_t = beta m_{t-1} + (1 - delta) a_t``, ``theta_{t+1} = theta_t - gamma_t m_t``;
- ``worker`` (the paper's proposal): each honest worker keeps
  ``m_i,t = beta m_i,t-1 + (1 - delta) g_i,t`` and submits it;
  ``theta_{t+1} = theta_t - gamma_t a_t``;
- ``server``: each honest submission is ``(1 - delta) g_i,t + beta a_{t-1}``;
  ``theta_{t+1} = theta_t - gamma_t a_t``.

Nesterov: gradients are taken at ``theta_t - gamma_t beta m`` where ``m`` is the server buffer
(the momentum for ``update``, the previous aggregate for ``server``) or each worker's own momentum
(``worker``). Every function here is pure and works on flat ``[d]`` or ``[w, d]`` arrays.
"""

from __future__ import annotations

import jax

Array = jax.Array

PLACEMENTS = ("update", "worker", "server")


def check_placement(placement: str) -> None:
    """Raise a ValueError naming the flag when ``placement`` is unknown."""
    if placement not in PLACEMENTS:
        raise ValueError(
            f"--momentum-at {placement!r} is unknown; choose one of {', '.join(PLACEMENTS)}"
        )


def accumulate(buffer: Array, value: Array, beta: Array, dampening: Array) -> Array:
    """Heavy-ball accumulation ``beta * buffer + (1 - dampening) * value`` (any shape)."""
    return beta * buffer + (1.0 - dampening) * value


def gradient_points(
    placement: str,
    theta: Array,
    server_buffer: Array,
    worker_buffers: Array,
    lr: Array,
    beta: Array,
    nesterov: bool,
) -> Array:
    """Where the gradients are taken: ``[d]`` (shared) or ``[w, d]`` (one point per worker)."""
    if not nesterov:
        return theta
    if placement == "worker":
        return theta[None, :] - (lr * beta) * worker_buffers
    return theta - (lr * beta) * server_buffer


def submissions(
    placement: str,
    grads: Array,
    worker_buffers: Array,
    server_buffer: Array,
    beta: Array,
    dampening: Array,
) -> tuple[Array, Array]:
    """The honest workers' submissions ``[w, d]`` and their updated momentum buffers."""
    if placement == "worker":
        buffers = accumulate(worker_buffers, grads, beta, dampening)
        return buffers, buffers
    if placement == "server":
        return (1.0 - dampening) * grads + beta * server_buffer[None, :], worker_buffers
    return grads, worker_buffers


def server_step(
    placement: str, aggregate: Array, server_buffer: Array, beta: Array, dampening: Array
) -> tuple[Array, Array]:
    """The update direction (``theta -= lr * direction``) and the new server buffer."""
    if placement == "update":
        buffer = accumulate(server_buffer, aggregate, beta, dampening)
        return buffer, buffer
    if placement == "server":
        return aggregate, aggregate
    return aggregate, server_buffer
