"""Reductions over the worker axis (axis 0) of an ``[n, d]`` matrix.

On CPU, XLA's reductions over a non-minor axis are slow (``x.mean(0)`` is 40x slower than
``jnp.dot(w, x)``, see DESIGN.md §4), so sums over workers are matrix-vector products. Order
statistics live in ``order.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
HIGHEST = jax.lax.Precision.HIGHEST


def row_weighted_sum(w: Array, X: Array) -> Array:
    """``Σ_i w_i X_i`` over the rows of ``X`` ``[k, d]`` as one matrix-vector product."""
    return jnp.dot(w.astype(X.dtype), X, precision=HIGHEST)


def row_mean(X: Array) -> Array:
    """``(1/k) Σ_i X_i``: the mean of the rows of ``X`` ``[k, d]`` (propagates NaN and ±Inf)."""
    k = X.shape[0]
    return row_weighted_sum(jnp.full((k,), 1.0 / k, X.dtype), X)


def nan_to_inf(X: Array) -> Array:
    """Replace NaN by +Inf, so that a NaN coordinate sorts as the largest value."""
    return jnp.where(jnp.isnan(X), jnp.inf, X)


def mask_of(indices: Array, n: int) -> Array:
    """``[n]`` float mask, 1 on ``indices``."""
    return jnp.zeros((n,), jnp.float32).at[indices].set(1.0)


def weighted_rows(W: Array, G: Array, indices: Array, finite: Array) -> Array:
    """``W @ G`` for ``W`` ``[k, n]`` non-zero only on the rows ``indices`` (all finite).

    When every row of ``G`` is finite this is one product with ``G``; otherwise the rows are
    gathered first, so that ``0 · NaN`` from a rejected row cannot leak in. (Under ``vmap`` the
    ``cond`` becomes a ``select`` and both branches run.)
    """

    def dense() -> Array:
        return jnp.dot(W.astype(G.dtype), G, precision=HIGHEST)

    def gathered() -> Array:
        return jnp.dot(
            jnp.take(W, indices, axis=1).astype(G.dtype),
            jnp.take(G, indices, axis=0),
            precision=HIGHEST,
        )

    return lax.cond(jnp.all(finite), dense, gathered)
