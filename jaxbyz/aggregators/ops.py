"""Row helpers specific to the rules: selection masks, NaN ordering, products with selected rows.

The row operations every part of a step shares (``row_mean``, ``row_weighted_sum``,
``row_finite``, ``row_norms``, ...) live in :mod:`jaxbyz.rows`; order statistics in ``order.py``.
Products over the worker axis are matrix products at ``precision=HIGHEST``: on the CPU backend XLA
reduces a non-minor axis slowly (``x.mean(0)`` is about 40 times slower than ``jnp.dot(w, x)``),
and GPUs would otherwise round the operands to TF32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxbyz.rows import HIGHEST

Array = jax.Array


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
