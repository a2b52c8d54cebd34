"""Row operations over the worker axis: the bottom layer of jaxbyz.

Every part of a step reads the submissions as a matrix ``X`` of shape ``[k, d]``, one row per
worker: the rules (``jaxbyz.aggregators``), the attacks (``jaxbyz.attacks``), the study metrics
(``jaxbyz.metrics``) and the worker-side transforms (``jaxbyz.transforms``). The operations they
share live here, and nothing here imports another jaxbyz module.

Sums over the (short) worker axis are matrix-vector products: on the CPU backend XLA reduces a
non-minor axis slowly (``x.mean(0)`` on a 51 x 79,510 matrix is about 40 times slower than
``jnp.dot(w, x)``). ``precision=HIGHEST`` keeps GPUs from rounding the operands to TF32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
HIGHEST = jax.lax.Precision.HIGHEST


def row_weighted_sum(w: Array, X: Array) -> Array:
    """``Σ_i w_i X_i`` over the rows of ``X`` ``[k, d]``, as one matrix-vector product."""
    return jnp.dot(w.astype(X.dtype), X, precision=HIGHEST)


def row_mean(X: Array) -> Array:
    """``(1/k) Σ_i X_i``, the mean of the rows of ``X`` ``[k, d]`` (propagates NaN and ±Inf)."""
    k = X.shape[0]
    return row_weighted_sum(jnp.full((k,), 1.0 / k, X.dtype), X)


def row_finite(X: Array) -> Array:
    """``[k]`` bool: whether every coordinate of each row of ``X`` is finite."""
    return jnp.all(jnp.isfinite(X), axis=1)


def row_norms(X: Array) -> Array:
    """Euclidean norms ``‖X_i‖`` of the rows, without overflow: a finite row of huge values
    (1e30) has its norm, not +Inf (each row is divided by its largest magnitude first)."""
    scale = jnp.max(jnp.abs(X), axis=1)
    safe = jnp.where((scale > 0) & jnp.isfinite(scale), scale, 1.0)
    return safe * jnp.sqrt(jnp.sum(jnp.square(X / safe[:, None]), axis=1))


def scale_rows_to_norm(X: Array, norms: Array, max_norm: Array, target: Array | None = None):
    """Rows whose norm exceeds ``max_norm`` rescaled to norm ``target`` (default ``max_norm``):
    ``X_i · (target / ‖X_i‖)``; the others unchanged. ``norms`` are the rows' norms."""
    target = max_norm if target is None else target
    factor = jnp.where(norms > max_norm, target / norms, 1.0)
    return X * factor[:, None]


def clip_factors(norms: Array, tau: Array) -> Array:
    """``min(1, τ / ‖x_i‖)`` per row: the factor that brings a row of norm above ``τ`` to norm
    ``τ`` (0 for an infinite norm), 1 for the others (a NaN norm included); never divides by 0."""
    over = norms > tau
    return jnp.where(over, tau / jnp.where(over, norms, 1.0), 1.0)


def broadcast_row(v: Array, k: int) -> Array:
    """The ``[k, d]`` matrix whose rows all equal ``v`` ``[d]``."""
    return jnp.broadcast_to(v, (k, v.shape[-1]))
